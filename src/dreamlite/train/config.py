"""Typed, frozen training configuration: one dataclass per concern, serialised into every checkpoint.

A *recipe* is the paper's task-progressive schedule as data (Sec. 3.3): a list of stages, each naming its data
mix, steps, learning rate and batch size; the training loop is shared by all stages.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, get_type_hints

from dreamlite.models.vae import VAEConfig


@dataclass(frozen=True)
class DataMix:
    """What a stage trains on: task weights, and per-tag / per-edit-type weights (empty = uniform)."""

    t2i: float = 1.0
    edit: float = 0.0
    tag_weights: dict[str, float] = field(default_factory=dict)
    edit_weights: dict[str, float] = field(default_factory=dict)
    pool: str = "main"  # which cached corpus to draw from ("main" or "sft": curated, clean compositions)


@dataclass(frozen=True)
class StageConfig:
    name: str
    mix: DataMix
    steps: int
    lr: float
    batch_size: int
    warmup_steps: int = 50
    min_lr_ratio: float = 1.0  # after warm-up, cosine decay to lr * min_lr_ratio at the stage's end; 1 = constant
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    p_drop_text: float = 0.1  # condition dropout so that text guidance works (CFG, Ho & Salimans)
    p_drop_image: float = 0.05  # edits: also drop the source so 3-way guidance has (uncond, blank)
    t_mean: float = 0.0  # logit-normal timestep sampling (SD3 family): t = sigmoid(N(mean, std))
    t_std: float = 1.0
    eval_every: int = 0  # 0 = evaluate only at the end of the stage


@dataclass(frozen=True)
class CorpusConfig:
    """The rendered, encoded training pool (latents + cached text states) built once per run."""

    n_t2i: int = 60_000
    n_edit: int = 60_000
    n_sft: int = 20_000
    image_size: int = 64
    seed: int = 1_000  # training seeds live in [1_000, 1_000_000); benchmarks use their own disjoint seeds


@dataclass(frozen=True)
class EvalConfig:
    geneval_limit: int = 120  # prompts per stage evaluation (the full benchmark runs at the end)
    imgedit_limit: int = 80
    steps: int = 20
    guidance_scale: float = 3.0
    image_guidance_scale: float = 1.5


@dataclass(frozen=True)
class Recipe:
    name: str
    preset: str
    stages: tuple[StageConfig, ...]
    unet_overrides: dict[str, Any] = field(default_factory=dict)
    text_encoder: str = "minilm"
    vae: VAEConfig = field(default_factory=VAEConfig)
    vae_steps: int = 3000
    vae_path: str | None = None  # reuse a trained VAE instead of training one
    # fine-tune: start the U-Net from this pipeline folder's weights (its config must equal the recipe's network)
    init_from: str | None = None
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    checkpoint_every: int = 500
    model_dtype: str = "float32"  # storage dtype of the final model's U-Net weights (loaded back as float32)

    def __post_init__(self) -> None:
        if self.model_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"model_dtype must be float32, float16 or bfloat16, got {self.model_dtype!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        return _build(cls, d)


def _build(tp: Any, value: Any) -> Any:
    """Rebuild nested frozen dataclasses from plain JSON data; unknown keys are an error naming them."""
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{tp.__name__}: expected an object, got {value!r}")
        hints = get_type_hints(tp)
        names = {f.name for f in fields(tp)}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"{tp.__name__}: unknown field(s) {sorted(unknown)}")
        return tp(**{k: _build(hints[k], v) for k, v in value.items()})
    origin = getattr(tp, "__origin__", None)
    if origin is tuple and isinstance(value, list):
        return tuple(_build(tp.__args__[0], v) for v in value)
    return value
