"""ExecuTorch export of a DreamLite pipeline folder (XNNPACK delegate), and a backend that runs the export.

Export (``export_executorch``, ``dreamlite export executorch``) writes one folder, laid out like the ONNX one::

    manifest.json            as the ONNX manifest (resolution, latent and canvas shapes, VAE scaling, prompt
                             templates, scheduler, defaults) plus each program's inputs with their shape bounds
    unet.pte                 ``export_friendly(MobileUNet)`` at one packed canvas; batch 1..MAX_BATCH dynamic,
                             text length fixed at TEXT_LEN (shorter prompts are zero-padded with mask 0)
    vae_encoder.pte          pixels in [-1, 1] -> *raw* latents, at the exported resolution, batch dynamic
    vae_decoder.pte          raw latents -> pixels in [-1, 1] (not clamped), same shapes
    text_encoder.pte         MiniLM token states (input_ids, attention_mask) -> last_hidden_state, TEXT_LEN
                             tokens (padded, output trimmed back), so MiniLM's window here is TEXT_LEN
    tokenizer/               the MiniLM tokenizer files

The U-Net is the ``export_friendly`` rewrite (``dreamlite.export.graph``): the plain network lowers into
hundreds of XNNPACK partitions, the rewrite into few. Batches above MAX_BATCH (several prompts with CFG) are
run in chunks by the runtime adapter, so the pipeline never sees the bound.

Why the text length is fixed: with batch *and* text length dynamic, lowering fails with "XNNPACK reshape only
supports 1 dynamic dimension" (ExecuTorch 1.5.1; attention reshapes [B, L, ...]). Batch stays dynamic (1, 2 or
3 CFG rows without re-exporting); the text is padded to TEXT_LEN with mask 0, which changes nothing: padded keys
get an additive -1e4 (U-Net) or the dtype's minimum (MiniLM) before softmax, i.e. weight exactly 0, and the
pooled text embedding averages over the mask. Prompts longer than TEXT_LEN tokens are truncated (with
MiniLMTextEncoder's warning), as torch MiniLM truncates at its 256-token window.

Runtime (``load_executorch_pipeline``, ``--backend executorch``): each program is opened with
``executorch.runtime`` behind onnxruntime's ``run(None, feeds)`` call shape (``PteSession``), and the ONNX
backend's adapters (``OnnxUNet``, ``OnnxVAE``, ``OnnxTextEncoder``) and pipeline assembly are reused as they
are: prompt rendering, the sigma schedule, packing, CFG and the Euler sampler stay the PyTorch path's code.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from dreamlite.export.graph import export_friendly
from dreamlite.export.onnx import (
    MANIFEST_NAME, TOKENIZER_DIR, UNET_INPUTS, ExportError, ExportResult, _MiniLMGraph, _VAEDecoderGraph,
    _VAEEncoderGraph, load_for_export, manifest_body, pipeline_from_manifest, read_manifest, staging_folder,
)
from dreamlite.models.text import MiniLMTextEncoder

FORMAT = "dreamlite-executorch"
FORMAT_VERSION = 1
FILES: Mapping[str, str] = {"unet": "unet.pte", "vae_encoder": "vae_encoder.pte",
                            "vae_decoder": "vae_decoder.pte", "text_encoder": "text_encoder.pte"}
# Why there is no --int8: XNNPACK dynamic int8 (PT2E, per-channel weights) of the U-Net does not lower with
# ExecuTorch 1.5.1 - the partitioner raises "Invalid partition, found dependency cycles" on the quantized
# graph of export_friendly(unet) (BENCHMARKS.md). int8 on CPU is served by `export onnx --int8`.
INT8_UNAVAILABLE = ("--int8 is not available for ExecuTorch: XNNPACK lowering of the int8 U-Net fails in "
                    "executorch 1.5.1 (\"Invalid partition, found dependency cycles\"); use `export onnx --int8`")
MAX_BATCH = 6  # 3 CFG rows (edit) x 2 images; larger batches are chunked at run time
TEXT_LEN = 77  # tokens, fixed in the U-Net and MiniLM programs (see the module docstring)
_EXAMPLE_TEXT_LEN = 7


def _executorch_available() -> None:
    """Import the toolchain once, turning a broken install into the usual one-line error."""
    try:
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: a native library built for another torch
        raise ExportError(f"ExecuTorch is not usable here ({type(e).__name__}: {e}); "
                          "install it with `pip install -e \".[device]\"` "
                          "(executorch==1.5.1 beside torch==2.13.0)") from None


# =========================================================================================================
# Programs: torch.export -> XNNPACK -> .pte
# =========================================================================================================
def _io_spec(names: Sequence[str], args: Sequence[Tensor], dynamic: Mapping[str, Mapping[int, Any]],
             padded: Sequence[str] = ()) -> dict:
    """Per input: its dtype and shape, a dynamic axis as {"name", "min", "max"}, and for the ``padded`` inputs
    axis 1 as {"name": "text_len", "pad_to": n} (read by ``PteSession``, and by an app feeding the program)."""
    spec = {}
    for name, arg in zip(names, args):
        dims: list[Any] = list(arg.shape)
        for axis, dim in dynamic.get(name, {}).items():
            dims[axis] = {"name": dim.__name__, "min": int(dim.min), "max": int(dim.max)}
        if name in padded:
            dims[1] = {"name": "text_len", "pad_to": int(arg.shape[1])}
        spec[name] = {"dtype": str(arg.dtype).removeprefix("torch."), "shape": dims}
    return spec


def export_program(module: nn.Module, args: tuple[Tensor, ...], names: Sequence[str],
                   dynamic: Mapping[str, Mapping[int, Any]], path: Path,
                   padded: Sequence[str] = ()) -> dict:
    """One module -> ``path`` (fp32 program); returns the input spec for the manifest."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    module.eval()
    shapes = tuple(dict(dynamic.get(name, {})) or None for name in names)  # positional: also fits a GraphModule
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export and lowering notices; the tests compare the numbers
        ep = torch.export.export(module, args, dynamic_shapes=shapes, strict=False)
        lowered = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
        path.write_bytes(lowered.buffer)
    return _io_spec(names, args, dynamic, padded)


def _batch() -> Any:
    from torch.export import Dim

    return Dim("batch", min=1, max=MAX_BATCH)


def export_unet(unet: nn.Module, folder: Path, latent_hw: tuple[int, int], image_wh: tuple[int, int],
                text_len: int) -> dict:
    """``export_friendly(unet)`` for one packed canvas [B, C, h, 2w] and ``text_len`` tokens; batch dynamic."""
    cfg = unet.config
    h, w = latent_hw
    g = torch.Generator().manual_seed(0)
    B, L = 2, text_len
    mask = torch.ones(B, L, dtype=torch.long)
    mask[:, _EXAMPLE_TEXT_LEN:] = 0
    mask[1, 3:] = 0  # padded rows, so nothing about padding becomes a constant
    args = (torch.randn(B, cfg.in_channels, h, 2 * w, generator=g), torch.tensor([900.0, 100.0]),
            torch.randn(B, L, cfg.text_embed_dim, generator=g) * mask[..., None], mask,
            torch.tensor([list(map(float, image_wh))] * B))
    batch = _batch()
    dynamic = {name: {0: batch} for name in UNET_INPUTS}
    return export_program(export_friendly(unet), args, UNET_INPUTS, dynamic, folder / FILES["unet"],
                          padded=("encoder_hidden_states", "encoder_attention_mask"))


def export_vae(vae: nn.Module, folder: Path, image_wh: tuple[int, int], factor: int) -> dict:
    """Encoder and decoder at the exported resolution (the pipeline's square bucket), batch dynamic."""
    w, h = image_wh
    g = torch.Generator().manual_seed(0)
    batch = _batch()
    pixels = torch.rand(2, 3, h, w, generator=g) * 2 - 1
    latents = torch.randn(2, int(vae.config.latent_channels), h // factor, w // factor, generator=g)
    return {"vae_encoder": export_program(_VAEEncoderGraph(vae), (pixels,), ["image"], {"image": {0: batch}},
                                          folder / FILES["vae_encoder"]),
            "vae_decoder": export_program(_VAEDecoderGraph(vae), (latents,), ["latents"], {"latents": {0: batch}},
                                          folder / FILES["vae_decoder"])}


def export_text_encoder(encoder: MiniLMTextEncoder, folder: Path, text_len: int) -> dict:
    """The MiniLM network at ``text_len`` tokens (batch dynamic) plus its tokenizer files."""
    batch = encoder.tokenizer(["[Generate]: a red circle", "x"], padding="max_length", max_length=text_len,
                              return_tensors="pt")
    args = (batch["input_ids"].long(), batch["attention_mask"].long())
    b = _batch()
    names = ["input_ids", "attention_mask"]
    spec = export_program(_MiniLMGraph(encoder.model), args, names, {"input_ids": {0: b}, "attention_mask": {0: b}},
                          folder / FILES["text_encoder"],
                          padded=names)
    encoder.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    return {**spec, "_trim_output": True}  # hidden states come back at the fed length


def export_executorch(model: str | Path, out: str | Path, *, resolution: str | int | Sequence[int] | None = None,
                      int8: bool = False, variant: str | None = None) -> ExportResult:
    """Export the pipeline folder ``model`` (one U-Net variant) to the folder ``out`` as ExecuTorch programs.

    ``resolution`` (default: the model's) fixes the U-Net's canvas and the VAE's image size. ``int8=True`` is
    refused (``INT8_UNAVAILABLE``) before any work. ``out`` appears complete or not at all.
    """
    if int8:
        raise ExportError(INT8_UNAVAILABLE)
    _executorch_available()
    start = time.perf_counter()
    out, model = Path(out), Path(model)
    pipe, wh, latent_hw, f = load_for_export(model, out, resolution, variant, "ExecuTorch")
    text_len = min(TEXT_LEN, pipe.text_encoder.max_length)
    with staging_folder(out) as tmp:
        io = {"unet": export_unet(pipe.unet, tmp, latent_hw, wh, text_len)}
        io.update(export_vae(pipe.vae, tmp, wh, f))
        io["text_encoder"] = export_text_encoder(pipe.text_encoder, tmp, text_len)
        files = {name: {"path": file, "bytes": (tmp / file).stat().st_size} for name, file in FILES.items()}
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "delegate": "xnnpack",
                    **manifest_body(pipe, model, wh, latent_hw), "files": files, "io": io}
        manifest["text_encoder"]["max_length"] = text_len  # the programs' window: the tokenizer truncates here
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    return ExportResult(out, sizes, time.perf_counter() - start)


# =========================================================================================================
# Runtime: a .pte program behind onnxruntime's session interface, so onnx.py's adapters drive it.
# =========================================================================================================
_NP = {"float32": np.float32, "int64": np.int64}


class PteSession:
    """An ExecuTorch program with ``run(None, feeds) -> [output]``, like an onnxruntime session.

    Feeds are checked against the manifest's input spec first: a shape outside the exported bounds would
    otherwise fail deep inside the runtime with a message naming no input. Batches above the exported bound
    are run in chunks (rows are independent in every DreamLite graph).
    """

    def __init__(self, path: Path, spec: Mapping[str, Mapping[str, Any]]):
        from executorch.runtime import Runtime

        spec = dict(spec)
        self.trim = bool(spec.pop("_trim_output", False))
        self.path, self.spec = Path(path), spec
        self.method = Runtime.get().load_program(str(path)).load_method("forward")
        first = next(iter(self.spec.values()))["shape"][0]
        self.max_batch = first["max"] if isinstance(first, dict) else int(first)

    def _check(self, name: str, value: np.ndarray) -> None:
        want = self.spec[name]["shape"]
        ok = value.ndim == len(want) and all(
            (n <= d["pad_to"] if "pad_to" in d else d["min"] <= n <= d["max"]) if isinstance(d, dict) else n == d
            for d, n in zip(want[1:], value.shape[1:]))  # the batch axis is chunked instead
        if not ok:
            shape = [d["name"] if isinstance(d, dict) else d for d in want]
            raise ExportError(f"{self.path.name} was exported for {name} {shape} (export again with --resolution "
                              f"for another size); got {list(value.shape)}")

    def run(self, output_names: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        arrays, fed_len = [], None
        for name, entry in self.spec.items():
            value = np.asarray(feeds[name])
            self._check(name, value)
            axis = entry["shape"][1] if len(entry["shape"]) > 1 else None
            if isinstance(axis, dict) and "pad_to" in axis:  # zeros: padding token 0, mask 0, hidden state 0
                fed_len = value.shape[1]
                widths = [(0, 0)] * value.ndim
                widths[1] = (0, axis["pad_to"] - fed_len)
                value = np.pad(value, widths)
            arrays.append(np.ascontiguousarray(value.astype(_NP[entry["dtype"]], copy=False)))
        outs = []
        for i in range(0, arrays[0].shape[0], self.max_batch):
            chunk = [torch.from_numpy(a[i:i + self.max_batch]) for a in arrays]
            outs.append(self.method.execute(chunk)[0].numpy().copy())  # copy: the runtime reuses its buffers
        out = np.concatenate(outs)
        return [out[:, :fed_len] if self.trim and fed_len is not None else out]


def load_executorch_pipeline(folder: str | Path, *, int8: bool | Sequence[str] = False,
                             variant: str | None = None) -> Any:
    """A ``DreamLitePipeline`` whose networks run as ExecuTorch programs (``--backend executorch``).

    ``int8`` is refused (there are no int8 programs, see ``INT8_UNAVAILABLE``). ``variant``, if given, must be
    the exported one.
    """
    if int8:
        raise ExportError(INT8_UNAVAILABLE)
    _executorch_available()
    folder = Path(folder)
    manifest = read_manifest(folder, fmt=FORMAT, version=FORMAT_VERSION, backend="executorch")
    by_path = {entry["path"]: name for name, entry in manifest["files"].items()}
    open_session = lambda path: PteSession(path, manifest["io"][by_path[Path(path).name]])  # noqa: E731
    return pipeline_from_manifest(folder, manifest, open_session, quantized={}, variant=variant,
                                  backend="executorch")
