"""Typed, frozen training configuration: one dataclass per concern, serialised into every checkpoint.

A *recipe* is the paper's task-progressive schedule as data (Sec. 3.3): a list of stages, each naming its data
mix, steps, learning rate and batch size; the training loop is shared by all stages.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, get_type_hints

from dreamlite.models.vae import VAEConfig
from dreamlite.train.dmd import DMDConfig
from dreamlite.train.rewards import EditReward, GenEvalReward
from dreamlite.train.rl import NFTConfig

STAGE_KINDS = ("flow", "rl", "distill", "dmd")


@dataclass(frozen=True)
class DataMix:
    """What a stage trains on: task weights, and per-tag / per-edit-type weights. Empty = uniform; non-empty = only
    the named categories are drawn (an unnamed tag or edit type gets weight 0, so name every category to keep it)."""

    t2i: float = 1.0
    edit: float = 0.0
    tag_weights: dict[str, float] = field(default_factory=dict)
    edit_weights: dict[str, float] = field(default_factory=dict)
    pool: str = "main"  # which cached corpus to draw from ("main" or "sft": curated, clean compositions)


@dataclass(frozen=True)
class RLStageConfig:
    """A DiffusionNFT stage (``dreamlite.train.rl_stage``): the stage's ``steps`` count RL iterations, its ``lr``,
    ``warmup_steps`` and ``min_lr_ratio`` schedule the optimiser per iteration, and its ``mix`` weighs the tasks
    (t2i / edit), the tags and the edit types of the RL prompt pools. Gradient clipping is ``nft.grad_clip``."""

    nft: NFTConfig = field(default_factory=NFTConfig)  # group size, beta, old-policy decay, KL guard, rollout CFG
    prompts_per_iter: int = 4  # P prompts (or edits) per iteration, K = nft.group_size rollouts each
    reward: str = "shapes"  # a name in dreamlite.train.rl_stage.REWARDS (the Reward protocol is the plug-in point)
    partial_weight: float = 0.0  # GenEvalReward's per-clause partial credit
    edit_reward_mode: str = "product"  # EditReward: success x preservation, or the 1-5 score
    preservation_power: float = 1.0  # EditReward (product): success x preservation ** p
    sample_steps: int = 8  # Euler steps of the rollouts (and of the watch)
    rl_seed: int = 7  # prompts of iteration i come from rl.rl_rng(rl_seed, i) (a training seed)
    watch_every: int = 10  # reward-hacking watch every N iterations (0 = off): <run>/rl_watch.jsonl and .png
    watch_prompts: int = 8  # size of each fixed held-out watch set (t2i, paraphrased t2i, edits, paraphrased edits)
    # Collapse guard (0 = off): when the watch's drift ||v - v_ref||^2 exceeds this, the stage stops and keeps the
    # weights of the last watch under it (DiffusionNFT's soft-updated old policy can feed a runaway; see
    # BENCHMARKS.md, "RL on v5"). Needs the watch.
    max_drift: float = 0.0

    def __post_init__(self) -> None:
        if self.prompts_per_iter < 1 or self.sample_steps < 1 or self.watch_every < 0 or self.watch_prompts < 1:
            raise ValueError("rl: need prompts_per_iter >= 1, sample_steps >= 1, watch_every >= 0, watch_prompts >= 1")
        if self.max_drift < 0 or (self.max_drift > 0 and self.watch_every == 0):
            raise ValueError(f"rl: max_drift must be >= 0 and needs the watch (watch_every > 0); got max_drift "
                             f"{self.max_drift}, watch_every {self.watch_every}")
        # the Shapes rewards check their own settings; built here, a bad one fails when the recipe is read, not
        # hours later when its RL stage starts
        GenEvalReward(self.partial_weight)
        EditReward(self.edit_reward_mode, self.preservation_power)


@dataclass(frozen=True)
class DistillStageConfig:
    """Progressive distillation (``dreamlite.train.distill_stage``): round 0 folds (guidance_scale,
    image_guidance_scale) into a ``start_steps`` student, then each round halves the steps down to
    ``final_steps``. The stage's ``steps`` are optimiser steps *per round*; its ``mix`` draws the data latents."""

    start_steps: int = 32
    final_steps: int = 4
    guidance_scale: float = 3.0
    image_guidance_scale: float = 1.5

    def __post_init__(self) -> None:
        s, f = self.start_steps, self.final_steps
        if f < 1 or s < f or s % f or not math.log2(s // f).is_integer():
            raise ValueError(f"distill: start_steps ({s}) must be final_steps ({f}) times a power of 2")

    @property
    def rounds(self) -> int:
        """Guidance folding plus one round per halving (32 -> 4: 1 + 3)."""
        return 1 + int(math.log2(self.start_steps // self.final_steps))


@dataclass(frozen=True)
class MirrorConfig:
    """Mirror pairs drawn beside a flow stage's batches (``dreamlite.train.mirror``; ours): position prompts rolled
    out once by the stage's starting model, each kept rollout side-corrected and paired with its role-swapped twin
    from the same starting noise (reflow samples whose targets differ by a mirrored image)."""

    rollouts: int = 8000  # position prompts rolled out at the stage's start (about 60 % are kept)
    per_batch: int = 16  # rollouts per batch, 2 samples each (prompt and twin), on top of the stage's batch_size
    sample_steps: int = 20  # the rollouts' Euler steps and text guidance: the base model's shipped settings
    guidance_scale: float = 3.0
    seed: int = 31_000  # a training seed (``rl.rl_rng``): the prompts never include a benchmark text
    # logit-normal mean of the pairs' t (std: the stage's); None = the stage's own t sampling. The layout is decided
    # at high noise, so a stage may draw its pairs there (0.8: median t 0.69).
    t_mean: float | None = None

    def __post_init__(self) -> None:
        if self.rollouts < 1 or self.per_batch < 1 or self.sample_steps < 1 or self.guidance_scale < 1:
            raise ValueError(f"mirror: need rollouts, per_batch, sample_steps >= 1 and guidance_scale >= 1, got "
                             f"{self.rollouts}, {self.per_batch}, {self.sample_steps}, {self.guidance_scale}")


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
    # Twin contrast (flow stages; ours; twin_weight 0 = off): weight of ``train.flow.twin_contrast_loss`` on the
    # t2i samples whose prompt has a role-swapped twin (position, color_attr), its scale (nats per relative error
    # gap), and the lowest noise level it is applied at (below it x_t shows the layout, and the contrast can be won
    # by answering a contradicting prompt badly). Measured in BENCHMARKS.md, "Twins": every setting tried cost drawing.
    twin_weight: float = 0.0
    twin_scale: float = 20.0
    twin_min_t: float = 0.0
    twin_cap_uncond: bool = False  # cap the twin's error at the negative prompt's (``twin_contrast_loss``)
    # the pool tags whose samples are contrasted; a stage's mirror pairs are contrasted whenever twin_weight > 0
    # (each pair row also under the other row's text: same noise, same t), so () contrasts only them
    twin_tags: tuple[str, ...] = ("position", "color_attr")
    mirror: MirrorConfig | None = None  # flow stages: mirror pairs beside every batch (None = off)
    # Anchored rows (flow stages; ours; 0 = off): the rows of the stage's own batch (not its mirror pairs) regress
    # onto the velocity of the model as the stage starts (frozen; the same inputs, conditions dropped alike) instead
    # of onto the data's, at this weight. A round from an RL-tuned start then moves the network where its other
    # signals pull (mirror pairs, twin contrast) and not back towards the data, which undoes RL (every plain round
    # from the shipped base cost it ~0.09 GenEval). Learning without Forgetting (Li & Hoiem, 2016) in velocity space.
    anchor_weight: float = 0.0
    # Consolidation (ours): with ``anchor_from`` (a model folder, e.g. the shipped base) the anchored rows regress
    # onto that model's velocity instead of the start's, except rows of the pool tags in ``anchor_start_tags``
    # (t2i tags or edit types), which keep the start's: a round that hands each skill to the model that has it best
    # (position from a mirror round, drawing and editing from the base). Its U-Net may differ in architecture.
    anchor_from: str = ""
    anchor_start_tags: tuple[str, ...] = ()
    # Grounded attention (flow stages; TokenCompose, Wang et al. 2024; 0 = off): weight of
    # ``train.grounding.grounding_loss`` on the t2i rows that kept their text: each clause's tokens attend inside its
    # objects' masks, on the cross-attention maps at least ``ground_min_side`` tokens on a side.
    ground_weight: float = 0.0
    ground_min_side: int = 1
    # "flow" (train.loop), "rl" (DiffusionNFT, needs ``rl``), "distill" (needs ``distill``), "dmd" (needs ``dmd``)
    kind: str = "flow"
    rl: RLStageConfig | None = None
    distill: DistillStageConfig | None = None
    dmd: DMDConfig | None = None

    def __post_init__(self) -> None:
        if self.kind not in STAGE_KINDS:
            raise ValueError(f"stage {self.name!r}: unknown kind {self.kind!r}; known: {', '.join(STAGE_KINDS)}")
        for kind in ("rl", "distill", "dmd"):
            has = getattr(self, kind) is not None
            if self.kind == kind and not has:
                raise ValueError(f"stage {self.name!r}: kind {kind!r} needs its '{kind}' config")
            if self.kind != kind and has:
                raise ValueError(f"stage {self.name!r}: a '{kind}' config is set but the stage's kind is "
                                 f"{self.kind!r}")
        if self.steps < 1:
            raise ValueError(f"stage {self.name!r}: steps must be >= 1, got {self.steps}")
        if self.mirror is not None and self.kind != "flow":
            raise ValueError(f"stage {self.name!r}: mirror pairs need a flow stage, not kind {self.kind!r}")
        if self.anchor_weight < 0 or (self.anchor_weight > 0 and self.kind != "flow"):
            raise ValueError(f"stage {self.name!r}: anchor_weight must be >= 0 and needs a flow stage, got "
                             f"{self.anchor_weight} on kind {self.kind!r}")
        if (self.anchor_from or self.anchor_start_tags) and self.anchor_weight <= 0:
            raise ValueError(f"stage {self.name!r}: anchor_from / anchor_start_tags need anchor_weight > 0")
        if self.anchor_start_tags and not self.anchor_from:
            raise ValueError(f"stage {self.name!r}: anchor_start_tags keep the start model for some rows, which "
                             "needs another model for the rest (anchor_from)")
        if self.twin_weight < 0 or self.twin_scale <= 0 or not 0 <= self.twin_min_t < 1:
            raise ValueError(f"stage {self.name!r}: need twin_weight >= 0, twin_scale > 0 and 0 <= twin_min_t < 1, "
                             f"got {self.twin_weight}, {self.twin_scale}, {self.twin_min_t}")
        if self.twin_weight > 0 and (self.kind != "flow" or (self.mix.t2i <= 0 and self.mirror is None)):
            raise ValueError(f"stage {self.name!r}: the twin contrast needs a flow stage that draws t2i samples "
                             f"(kind {self.kind!r}, t2i share {self.mix.t2i})")

        if self.ground_weight < 0 or self.ground_min_side < 1:
            raise ValueError(f"stage {self.name!r}: need ground_weight >= 0 and ground_min_side >= 1, got "
                             f"{self.ground_weight}, {self.ground_min_side}")
        if self.ground_weight > 0 and (self.kind != "flow" or self.mix.t2i <= 0):
            raise ValueError(f"stage {self.name!r}: grounded attention needs a flow stage that draws t2i samples "
                             f"(kind {self.kind!r}, t2i share {self.mix.t2i})")

    @property
    def total_steps(self) -> int:
        """Units of progress in the stage: optimiser steps (flow), iterations (rl), steps x rounds (distill)."""
        return self.steps * self.distill.rounds if self.kind == "distill" else self.steps


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
    eta: float = 0.0  # generation's sampler stochasticity (VariantDefaults.eta; 1 = ancestral); edits stay on the ODE


@dataclass(frozen=True)
class Recipe:
    name: str
    preset: str
    stages: tuple[StageConfig, ...]
    unet_overrides: dict[str, Any] = field(default_factory=dict)
    text_encoder: str = "minilm"
    # MiniLM only: the hidden state the U-Net reads (-1 = the last; see TextEncoderSpec.layer)
    text_layer: int = -1
    vae: VAEConfig = field(default_factory=VAEConfig)
    vae_steps: int = 3000
    vae_path: str | None = None  # reuse a trained VAE instead of training one
    # fine-tune: start the U-Net from this pipeline folder's weights (its config must equal the recipe's network)
    init_from: str | None = None
    # with init_from: the recipe's network may add transformers at levels where init_from's has "none"; they
    # start as the identity (zero output projection), so the grown network computes what the old one did
    grow_attention: bool = False
    # with init_from: init_from's U-Net has the pooled text path (pooled_text_embed) and the recipe's does not; its
    # weights are dropped, so the words reach the network only through cross-attention (BENCHMARKS.md, v3)
    drop_pooled_text: bool = False
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    checkpoint_every: int = 500
    model_dtype: str = "float32"  # storage dtype of the final model's U-Net weights (loaded back as float32)

    def __post_init__(self) -> None:
        if self.model_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"model_dtype must be float32, float16 or bfloat16, got {self.model_dtype!r}")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"recipe {self.name!r}: stage names must be unique, got {names}")
        for s in self.stages[:-1]:
            if s.kind == "distill":
                raise ValueError(f"recipe {self.name!r}: distill stage {s.name!r} must be the last stage (its "
                                 "student is the mobile variant; later training would undo the distillation)")

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
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None:
            return None
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(options[0], value) if len(options) == 1 else value
    if origin is tuple and isinstance(value, list):
        return tuple(_build(tp.__args__[0], v) for v in value)
    return value
