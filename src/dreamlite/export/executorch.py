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
    unet.int8/b{1,2,3}.pte   with --int8: the U-Net and MiniLM with dynamic int8 Linear layers, one program per
    text_encoder.int8/...    batch size in INT8_BATCHES (see "int8" below)

The U-Net is the ``export_friendly`` rewrite (``dreamlite.export.graph``): the plain network lowers into
hundreds of XNNPACK partitions, the rewrite into few. Batches above MAX_BATCH (several prompts with CFG) are
run in chunks by the runtime adapter, so the pipeline never sees the bound.

Why the text length is fixed: with batch *and* text length dynamic, lowering fails with "XNNPACK reshape only
supports 1 dynamic dimension" (ExecuTorch 1.5.1; attention reshapes [B, L, ...]). Batch stays dynamic (1, 2 or
3 CFG rows without re-exporting); the text is padded to TEXT_LEN with mask 0, which changes nothing: padded keys
get an additive -1e4 (U-Net) or the dtype's minimum (MiniLM) before softmax, i.e. weight exactly 0, and the
pooled text embedding averages over the mask. Prompts longer than TEXT_LEN tokens are truncated (with
MiniLMTextEncoder's warning), as torch MiniLM truncates at its 256-token window.

int8 (``--int8``): XNNPACK's PT2E dynamic quantization (int8 per-channel weights, activations quantized per call)
of the ``nn.Linear`` layers only; convolutions stay fp32, as in the ONNX int8 export. Two limits of ExecuTorch
1.5.1 decide the layout (probes in BENCHMARKS.md, "ExecuTorch int8"): quantizing every op makes the partitioner
fail ("Invalid partition, found dependency cycles"), and so does a dynamic batch axis even with Linear only. With
static shapes the Linear-only program lowers and runs, so int8 is written as one program per batch size: 1, 2 and
3 are the CFG rows of one image (guidance-free, text CFG, edit CFG), and any batch is run as chunks of those.

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
from typing import Any, Callable, Iterator, Mapping, Sequence

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
# int8 programs: one folder per network, one fixed-batch program per size (module docstring, "int8")
INT8_FILES: Mapping[str, str] = {"unet": "unet.int8", "text_encoder": "text_encoder.int8"}
INT8_BATCHES = (1, 2, 3)  # must hold 1, so that any batch splits into exported sizes
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

    if not isinstance(module, torch.fx.GraphModule):  # a quantized graph has no train/eval switch
        module.eval()
    shapes = tuple(dict(dynamic.get(name, {})) or None for name in names)  # positional: also fits a GraphModule
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # export and lowering notices; the tests compare the numbers
        ep = torch.export.export(module, args, dynamic_shapes=shapes, strict=False)
        lowered = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
        path.write_bytes(lowered.buffer)
    return _io_spec(names, args, dynamic, padded)


def _int8_linear(module: nn.Module, args: tuple[Tensor, ...]) -> nn.Module:
    """``module`` with its ``nn.Linear`` layers dynamically quantized (PT2E, XNNPACK's symmetric per-channel
    int8 weights; activations are quantized at each call, so no calibration data is needed)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    quantizer = XNNPACKQuantizer().set_module_type(nn.Linear, config)  # all ops: "dependency cycles"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_pt2e(torch.export.export(module.eval(), args, strict=False).module(), quantizer)
        prepared(*args)  # the weight observers see the weights once
        return move_exported_model_to_eval(convert_pt2e(prepared))


def int8_batch_sizes(batches: Sequence[int]) -> list[int]:
    """The sorted, distinct fixed batch sizes of int8 programs; they must include 1 (any batch runs as chunks)."""
    sizes = sorted({int(n) for n in batches})
    if not sizes or sizes[0] != 1:  # sorted: the smallest must be 1
        raise ExportError(f"int8 batch sizes must be positive and include 1 (any batch is run as chunks of them), "
                          f"got {list(batches)}")
    return sizes


def export_int8_programs(module: nn.Module, make_args: Callable[[int], tuple[Tensor, ...]], names: Sequence[str],
                         folder: Path, padded: Sequence[str] = (), batches: Sequence[int] = INT8_BATCHES) -> dict:
    """``folder/b{n}.pte`` for n in ``batches``: ``module`` with int8 Linear layers at a fixed batch of n (a
    dynamic batch does not lower, see the module docstring). The spec's batch axis lists the sizes."""
    batches = int8_batch_sizes(batches)
    folder.mkdir()
    for n in batches:
        args = make_args(n)
        spec = export_program(_int8_linear(module, args), args, names, {}, folder / f"b{n}.pte", padded)
    for entry in spec.values():
        entry["shape"][0] = {"name": "batch", "sizes": batches}
    return spec


def _batch() -> Any:
    from torch.export import Dim

    return Dim("batch", min=1, max=MAX_BATCH)


def _unet_args(cfg: Any, latent_hw: tuple[int, int], image_wh: tuple[int, int], text_len: int,
               B: int) -> tuple[Tensor, ...]:
    """Example U-Net inputs at batch ``B``: a packed canvas, ``text_len`` tokens of which the later ones are
    padding (more of them in row 1), so nothing about padding becomes a constant."""
    h, w = latent_hw
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(B, text_len, dtype=torch.long)
    mask[:, _EXAMPLE_TEXT_LEN:] = 0
    mask[1:, 3:] = 0
    return (torch.randn(B, cfg.in_channels, h, 2 * w, generator=g), torch.linspace(900.0, 100.0, B),
            torch.randn(B, text_len, cfg.text_embed_dim, generator=g) * mask[..., None], mask,
            torch.tensor([list(map(float, image_wh))] * B))


def export_unet(unet: nn.Module, folder: Path, latent_hw: tuple[int, int], image_wh: tuple[int, int],
                text_len: int, *, int8: bool = False, batches: Sequence[int] = INT8_BATCHES) -> dict:
    """``export_friendly(unet)`` for one packed canvas [B, C, h, 2w] and ``text_len`` tokens: one program with
    the batch dynamic, or with ``int8`` the int8 programs at the fixed ``batches``."""
    make_args = lambda B: _unet_args(unet.config, latent_hw, image_wh, text_len, B)  # noqa: E731
    padded = ("encoder_hidden_states", "encoder_attention_mask")
    if int8:
        return export_int8_programs(export_friendly(unet), make_args, UNET_INPUTS, folder / INT8_FILES["unet"],
                                    padded, batches)
    batch = _batch()
    dynamic = {name: {0: batch} for name in UNET_INPUTS}
    return export_program(export_friendly(unet), make_args(2), UNET_INPUTS, dynamic, folder / FILES["unet"],
                          padded=padded)


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


def export_text_encoder(encoder: MiniLMTextEncoder, folder: Path, text_len: int, *, int8: bool = False,
                        batches: Sequence[int] = INT8_BATCHES) -> dict:
    """The MiniLM network at ``text_len`` tokens (batch dynamic) plus its tokenizer files, or with ``int8`` its
    int8 programs at the fixed ``batches``."""
    def make_args(B: int) -> tuple[Tensor, ...]:
        texts = (["[Generate]: a red circle", "x", "[Edit]: make it blue"] * B)[:B]
        batch = encoder.tokenizer(texts, padding="max_length", max_length=text_len, return_tensors="pt")
        return batch["input_ids"].long(), batch["attention_mask"].long()

    names = ["input_ids", "attention_mask"]
    if int8:
        spec = export_int8_programs(_MiniLMGraph(encoder.model), make_args, names,
                                    folder / INT8_FILES["text_encoder"], padded=names, batches=batches)
    else:
        b = _batch()
        spec = export_program(_MiniLMGraph(encoder.model), make_args(2), names,
                              {"input_ids": {0: b}, "attention_mask": {0: b}}, folder / FILES["text_encoder"],
                              padded=names)
        encoder.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
    return {**spec, "_trim_output": True}  # hidden states come back at the fed length


def export_executorch(model: str | Path, out: str | Path, *, resolution: str | int | Sequence[int] | None = None,
                      int8: bool = False, int8_batches: Sequence[int] = INT8_BATCHES,
                      variant: str | None = None) -> ExportResult:
    """Export the pipeline folder ``model`` (one U-Net variant) to the folder ``out`` as ExecuTorch programs.

    ``resolution`` (default: the model's) fixes the U-Net's canvas and the VAE's image size. ``int8=True`` also
    writes the int8 U-Net and text encoder programs (``INT8_FILES``), one per batch size in ``int8_batches`` (must
    hold 1; e.g. ``(1,)`` for a guidance-free mobile model, which never runs more rows per image). ``out``
    appears complete or not at all.
    """
    batches = int8_batch_sizes(int8_batches)  # before any work: a bad list fails in a second, not after minutes
    _executorch_available()
    start = time.perf_counter()
    out, model = Path(out), Path(model)
    pipe, wh, latent_hw, f = load_for_export(model, out, resolution, variant, "ExecuTorch")
    text_len = min(TEXT_LEN, pipe.text_encoder.max_length)
    with staging_folder(out) as tmp:
        io = {"unet": export_unet(pipe.unet, tmp, latent_hw, wh, text_len)}
        io.update(export_vae(pipe.vae, tmp, wh, f))
        io["text_encoder"] = export_text_encoder(pipe.text_encoder, tmp, text_len)
        if int8:
            io["unet_int8"] = export_unet(pipe.unet, tmp, latent_hw, wh, text_len, int8=True, batches=batches)
            io["text_encoder_int8"] = export_text_encoder(pipe.text_encoder, tmp, text_len, int8=True,
                                                          batches=batches)
        files = {name: {"path": file, "bytes": (tmp / file).stat().st_size} for name, file in FILES.items()}
        if int8:  # folders of programs: the bytes of all of them
            files.update({f"{name}_int8": {"path": file, "batches": batches,
                                           "bytes": sum(p.stat().st_size for p in (tmp / file).iterdir())}
                          for name, file in INT8_FILES.items()})
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "delegate": "xnnpack",
                    **manifest_body(pipe, model, wh, latent_hw), "files": files, "io": io}
        manifest["text_encoder"]["max_length"] = text_len  # the programs' window: the tokenizer truncates here
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*.pte")) if p.is_file()}
    sizes[MANIFEST_NAME] = (out / MANIFEST_NAME).stat().st_size
    return ExportResult(out, sizes, time.perf_counter() - start)


# =========================================================================================================
# Runtime: a .pte program behind onnxruntime's session interface, so onnx.py's adapters drive it.
# =========================================================================================================
_NP = {"float32": np.float32, "int64": np.int64}


class PteSession:
    """ExecuTorch program(s) with ``run(None, feeds) -> [output]``, like an onnxruntime session.

    ``path`` is one ``.pte`` with a dynamic batch axis, or a folder of fixed-batch programs ``b{n}.pte`` (the int8
    export). Feeds are checked against the manifest's input spec first: a shape outside the exported bounds would
    otherwise fail deep inside the runtime with a message naming no input. A batch is run as chunks the programs
    accept (rows are independent in every DreamLite graph): up to the dynamic bound, or the largest exported size
    that fits.
    """

    def __init__(self, path: Path, spec: Mapping[str, Mapping[str, Any]]):
        from executorch.runtime import Runtime

        spec = dict(spec)
        self.trim = bool(spec.pop("_trim_output", False))
        self.path, self.spec = Path(path), spec
        batch = next(iter(self.spec.values()))["shape"][0]
        load = lambda file: Runtime.get().load_program(str(file)).load_method("forward")  # noqa: E731
        if isinstance(batch, dict) and "sizes" in batch:
            if 1 not in batch["sizes"]:
                raise ExportError(f"{self.path.name}: fixed-batch programs must include batch 1, got {batch['sizes']}")
            missing = [n for n in batch["sizes"] if not (self.path / f"b{n}.pte").is_file()]
            if missing:
                raise ExportError(f"{self.path} lacks the programs for batch {missing}; export again")
            self.methods, self.fixed = {n: load(self.path / f"b{n}.pte") for n in batch["sizes"]}, True
        else:
            self.max_batch = batch["max"] if isinstance(batch, dict) else int(batch)
            self.methods, self.fixed = {self.max_batch: load(self.path)}, False

    def _check(self, name: str, value: np.ndarray) -> None:
        want = self.spec[name]["shape"]
        ok = value.ndim == len(want) and all(
            (n <= d["pad_to"] if "pad_to" in d else d["min"] <= n <= d["max"]) if isinstance(d, dict) else n == d
            for d, n in zip(want[1:], value.shape[1:]))  # the batch axis is chunked instead
        if not ok:
            shape = [d["name"] if isinstance(d, dict) else d for d in want]
            raise ExportError(f"{self.path.name} was exported for {name} {shape} (export again with --resolution "
                              f"for another size); got {list(value.shape)}")

    def chunks(self, n: int) -> Iterator[tuple[int, int, Any]]:
        """(first row, rows, method) covering ``n`` rows."""
        start = 0
        while start < n:
            left = n - start
            if self.fixed:
                rows = max(size for size in self.methods if size <= left)
                method = self.methods[rows]
            else:
                rows, method = min(left, self.max_batch), self.methods[self.max_batch]
            yield start, rows, method
            start += rows

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
        for start, rows, method in self.chunks(arrays[0].shape[0]):
            chunk = [torch.from_numpy(a[start:start + rows]) for a in arrays]
            outs.append(method.execute(chunk)[0].numpy().copy())  # copy: the runtime reuses its buffers
        out = np.concatenate(outs)
        return [out[:, :fed_len] if self.trim and fed_len is not None else out]


def load_executorch_pipeline(folder: str | Path, *, int8: bool | Sequence[str] = False,
                             variant: str | None = None) -> Any:
    """A ``DreamLitePipeline`` whose networks run as ExecuTorch programs (``--backend executorch``).

    ``int8``: True for the int8 U-Net and text encoder programs, or a subset of ``("unet", "text_encoder")``;
    the export must have been made with ``--int8``. ``variant``, if given, must be the exported one.
    """
    _executorch_available()
    folder = Path(folder)
    manifest = read_manifest(folder, fmt=FORMAT, version=FORMAT_VERSION, backend="executorch")
    by_path = {entry["path"]: name for name, entry in manifest["files"].items()}
    open_session = lambda path: PteSession(path, manifest["io"][by_path[Path(path).name]])  # noqa: E731
    return pipeline_from_manifest(folder, manifest, open_session, quantized={"int8": int8}, variant=variant,
                                  backend="executorch")
