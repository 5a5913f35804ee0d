"""Core ML export of a DreamLite U-Net (``dreamlite export coreml``): one ``unet.mlpackage`` plus a manifest.

Only the U-Net is exported: it is where the time goes (every sampling step, 2-3 CFG rows), while the tiny VAE
and MiniLM run once per image and have ready-made Core ML ports. The folder::

    manifest.json      as the ONNX/ExecuTorch manifests (resolution, canvas, VAE scaling, prompt templates,
                       scheduler, defaults) plus the package's inputs with their flexible ranges
    unet.mlpackage     ML program, fp16 compute; inputs sample [B, C, h, 2w], timestep [B],
                       encoder_hidden_states [B, L, D], encoder_attention_mask [B, L] (float, 1 = token),
                       time_ids [B, 2]; B in 1..MAX_BATCH and L in 1..MiniLM's window are flexible (RangeDim)

How: ``torch.export`` of ``export_friendly(unet)`` with dynamic batch and text length, ``run_decompositions({})``
to core ATen, then ``coremltools.convert``, which turns the program's range constraints into ``RangeDim``s.
Tracing (``torch.jit.trace``) is not used: coremltools 9.0 fails on the ``int`` op a shape-dependent reshape
leaves in a traced graph (shared/README.md). Conversion runs on Linux; prediction needs macOS, so this repo
checks the package's structure and I/O spec only. The attention mask is a float input because Core ML has no
int64 tensors (it would be narrowed to int32 anyway, and the network casts it to float first).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dreamlite.export.graph import export_friendly
from dreamlite.export.onnx import (
    MANIFEST_NAME, UNET_INPUTS, ExportError, ExportResult, load_for_export, manifest_body, staging_folder,
)

FORMAT = "dreamlite-coreml"
FORMAT_VERSION = 1
PACKAGE = "unet.mlpackage"
MAX_BATCH = 3  # the 3-row CFG of an edit; one image at a time, as on a phone
MIN_DEPLOYMENT = "iOS17"


def _coremltools() -> Any:
    """coremltools, or the one-line reason it cannot run here (quoted from the import error)."""
    try:
        import coremltools as ct
        from coremltools.converters.mil.frontend.torch import exir_utils  # noqa: F401  the torch.export path
    except Exception as e:  # noqa: BLE001  any failure to load the converter ends the export the same way
        raise ExportError(f"the Core ML converter cannot run here: {type(e).__name__}: {e} "
                          "(install it with `pip install -e \".[device]\"`)") from None
    return ct


def _unet_program(unet: torch.nn.Module, latent_hw: tuple[int, int], image_wh: tuple[int, int],
                  max_text: int) -> Any:
    """``export_friendly(unet)`` exported with batch 1..MAX_BATCH and text length 1..``max_text`` flexible."""
    from torch.export import Dim

    cfg = unet.config
    h, w = latent_hw
    g = torch.Generator().manual_seed(0)
    B, L = 2, 7
    mask = torch.ones(B, L)
    mask[1, L // 2:] = 0
    args = (torch.randn(B, cfg.in_channels, h, 2 * w, generator=g), torch.tensor([900.0, 100.0]),
            torch.randn(B, L, cfg.text_embed_dim, generator=g) * mask[..., None], mask,
            torch.tensor([list(map(float, image_wh))] * B))
    batch, text = Dim("batch", min=1, max=MAX_BATCH), Dim("text_len", min=1, max=max_text)
    dynamic = {"sample": {0: batch}, "timestep": {0: batch}, "encoder_hidden_states": {0: batch, 1: text},
               "encoder_attention_mask": {0: batch, 1: text}, "time_ids": {0: batch}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(export_friendly(unet).eval(), args, dynamic_shapes=dynamic, strict=False)
        return ep.run_decompositions({})


def convert_unet(unet: torch.nn.Module, path: Path, latent_hw: tuple[int, int], image_wh: tuple[int, int],
                 max_text: int) -> dict[str, Any]:
    """The U-Net as an fp16 ML program at ``path``; returns its input spec as read back from the package."""
    ct = _coremltools()
    program = _unet_program(unet, latent_hw, image_wh, max_text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # fp16 inside the program, fp32 at its edges (as the inputs): without the explicit output type
            # the velocity would come out in float16, which the sampler's float32 Euler update does not want
            mlmodel = ct.convert(program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
                                 outputs=[ct.TensorType(name="velocity", dtype=np.float32)],
                                 minimum_deployment_target=getattr(ct.target, MIN_DEPLOYMENT),
                                 skip_model_load=True)  # loading compiles the model, which needs macOS
    except Exception as e:  # noqa: BLE001  the converter raises many types; the message is what matters
        raise ExportError(f"the Core ML converter failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    mlmodel.short_description = "DreamLite MobileUNet: flow-matching velocity on a packed (target | condition) canvas"
    mlmodel.save(str(path))
    return package_io(path)


def package_io(path: str | Path) -> dict[str, Any]:
    """Inputs and outputs of a saved package from its spec: name -> {dtype, shape}, a flexible axis as
    {"min", "max"} (max -1 = unbounded). Reading the spec needs no macOS."""
    ct = _coremltools()
    spec = ct.utils.load_spec(str(path))

    def describe(feature: Any) -> dict[str, Any]:
        arr = feature.type.multiArrayType
        dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType).lower()
        ranges = arr.shapeRange.sizeRanges
        shape: list[Any] = list(arr.shape)
        if ranges:
            shape = [r.lowerBound if r.lowerBound == r.upperBound else {"min": r.lowerBound, "max": r.upperBound}
                     for r in ranges]
        return {"dtype": dtype, "shape": shape}

    return {"inputs": {f.name: describe(f) for f in spec.description.input},
            "outputs": {f.name: describe(f) for f in spec.description.output},
            "spec_version": spec.specificationVersion}


def export_coreml(model: str | Path, out: str | Path, *, resolution: str | int | Sequence[int] | None = None,
                  variant: str | None = None) -> ExportResult:
    """Export the U-Net of the pipeline folder ``model`` to ``out`` (``unet.mlpackage`` + ``manifest.json``).

    ``resolution`` (default: the model's) fixes the canvas. ``out`` appears complete or not at all.
    """
    _coremltools()  # fail before loading anything if the converter is unusable
    start = time.perf_counter()
    out, model = Path(out), Path(model)
    pipe, wh, latent_hw, _ = load_for_export(model, out, resolution, variant, "Core ML")
    with staging_folder(out) as tmp:
        io = convert_unet(pipe.unet, tmp / PACKAGE, latent_hw, wh, pipe.text_encoder.max_length)
        size = sum(p.stat().st_size for p in (tmp / PACKAGE).rglob("*") if p.is_file())
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "inputs_order": list(UNET_INPUTS),
                    **manifest_body(pipe, model, wh, latent_hw),
                    "files": {"unet": {"path": PACKAGE, "bytes": size}}, "io": {"unet": io},
                    "note": "U-Net only; encoder_attention_mask is float (1 = token, 0 = padding)"}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return ExportResult(out, {PACKAGE: size, MANIFEST_NAME: (out / MANIFEST_NAME).stat().st_size},
                        time.perf_counter() - start)
