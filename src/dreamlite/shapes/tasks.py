"""Training-data API of the Shapes world: batches of (image, prompt) and (source, instruction, target).

All sampling is driven by the caller's ``np.random.Generator``: the same generator state gives the same batch.

Seed ranges (keep benchmarks out of training):
- training, RL and data shards use seeds in ``[0, RESERVED_SEED_START)``; ``check_training_seed`` enforces it
  where a seed enters (e.g. ``dreamlite data shapes --seed``);
- ``[RESERVED_SEED_START, 2**63)`` is reserved for benchmarks: the shipped GenEval-style prompts come from
  ``GENEVAL_BENCH_SEED`` and the shipped edits from ``IMGEDIT_BENCH_SEED``.
The world is small (5 shapes x 10 colours), so a benchmark prompt *text* may also occur in training; what is
disjoint is the random stream, hence the layouts, sizes, colours of unnamed attributes and backgrounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from dreamlite.shapes.edits import EDIT_TYPES, sample_edit_case
from dreamlite.shapes.render import render_batch
from dreamlite.shapes.scene import Scene
from dreamlite.shapes.spec import TAGS, PromptSpec, sample_spec, scene_for_spec

RESERVED_SEED_START = 1_000_000_000
GENEVAL_BENCH_SEED = RESERVED_SEED_START + 1
IMGEDIT_BENCH_SEED = RESERVED_SEED_START + 2
# The held-out-phrasing variants of both benchmarks (``full_eval.py --phrasings heldout``): GenEval's rows
# re-worded, and a second set of edits, each from its own reserved stream.
GENEVAL_HELDOUT_SEED = RESERVED_SEED_START + 3
IMGEDIT_HELDOUT_SEED = RESERVED_SEED_START + 4
# The validation split (``full_eval.py --split val``): 600 GenEval-style rows and 240 edits drawn again from the
# same generators, for choosing among models (checkpoints, soup weights) without looking at the benchmark. The
# world is small, so most GenEval prompt texts recur (every two_object prompt is one of 20); what makes the split
# another sample is its rows' order, its edits' scenes and its own starting noise (``VAL_NOISE_SEED``: image i of
# the split is sampled from seed VAL_NOISE_SEED + i, the benchmark's from seed i).
GENEVAL_VAL_SEED = RESERVED_SEED_START + 5
IMGEDIT_VAL_SEED = RESERVED_SEED_START + 6
VAL_NOISE_SEED = 500_000


def check_training_seed(seed: int) -> int:
    """``seed`` if it may be used for training data; ValueError when it lies in the benchmark range."""
    if not 0 <= int(seed) < RESERVED_SEED_START:
        raise ValueError(f"seed {seed} is outside the training range [0, {RESERVED_SEED_START}); seeds from "
                         f"{RESERVED_SEED_START} on are reserved for benchmarks")
    return int(seed)


@dataclass(frozen=True)
class T2IBatch:
    images: np.ndarray  # uint8 [n, size, size, 3]
    prompts: list[str]
    metadata: list[dict]  # GenEval metadata rows (tag, include, exclude, prompt)
    scenes: list[Scene]


@dataclass(frozen=True)
class EditBatch:
    sources: np.ndarray  # uint8 [n, size, size, 3]
    targets: np.ndarray  # uint8 [n, size, size, 3]
    instructions: list[str]
    edit_types: list[str]
    source_scenes: list[Scene]
    target_scenes: list[Scene]


@dataclass(frozen=True)
class EditCaseSample:
    source_scene: Scene
    source_image: np.ndarray  # uint8 [size, size, 3]
    instruction: str
    target_scene: Scene
    edit_type: str


def _draw(rng: np.random.Generator, n: int, names: Sequence[str], weights: Mapping[str, float] | None,
          what: str) -> list[str]:
    """n names drawn with ``weights`` (missing names weigh 0; None means uniform)."""
    if weights is None:
        p = np.full(len(names), 1.0 / len(names))
    else:
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise ValueError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(names)}")
        p = np.array([float(weights.get(k, 0.0)) for k in names])
        if np.any(p < 0) or p.sum() <= 0:
            raise ValueError(f"{what} weights must be >= 0 with a positive sum, got {dict(weights)}")
        p = p / p.sum()
    return [names[int(i)] for i in rng.choice(len(names), size=n, p=p)]


def _specs(rng: np.random.Generator, n: int, phrasings: str,
           tag_weights: Mapping[str, float] | None) -> list[PromptSpec]:
    return [sample_spec(rng, tag, phrasings) for tag in _draw(rng, n, TAGS, tag_weights, "tag")]


def sample_t2i_prompts(rng: np.random.Generator, n: int, phrasings: str = "train",
                       tag_weights: Mapping[str, float] | None = None) -> list[tuple[str, dict]]:
    """n (prompt, GenEval metadata) pairs without images (for RL and evaluation)."""
    return [(s.prompt, s.to_dict()) for s in _specs(rng, n, phrasings, tag_weights)]


def sample_t2i(rng: np.random.Generator, n: int, size: int = 64,
               tag_weights: Mapping[str, float] | None = None, phrasings: str = "train") -> T2IBatch:
    """n rendered scenes with prompts drawn over GenEval's six tags (``tag_weights`` by tag name, uniform by
    default)."""
    specs = _specs(rng, n, phrasings, tag_weights)
    scenes = [scene_for_spec(rng, s) for s in specs]
    return T2IBatch(render_batch(scenes, size), [s.prompt for s in specs], [s.to_dict() for s in specs], scenes)


def sample_edit_cases(rng: np.random.Generator, n: int, size: int = 64, phrasings: str = "train",
                      type_weights: Mapping[str, float] | None = None) -> list[EditCaseSample]:
    """n edits as (source scene, source image, instruction, target scene, edit type), without target images
    (for RL: score the model's output with ``dreamlite.bench.imgedit.score_edit``)."""
    cases = [sample_edit_case(rng, t, phrasings) for t in _draw(rng, n, EDIT_TYPES, type_weights, "edit type")]
    images = render_batch([c.source for c in cases], size)
    return [EditCaseSample(c.source, img, c.instruction, c.target, c.edit_type) for c, img in zip(cases, images)]


def sample_edit(rng: np.random.Generator, n: int, size: int = 64, phrasings: str = "train",
                type_weights: Mapping[str, float] | None = None) -> EditBatch:
    """n (source image, instruction, target image) triples over the eight edit types."""
    cases = [sample_edit_case(rng, t, phrasings) for t in _draw(rng, n, EDIT_TYPES, type_weights, "edit type")]
    images = render_batch([c.source for c in cases] + [c.target for c in cases], size)
    return EditBatch(images[:n], images[n:], [c.instruction for c in cases], [c.edit_type for c in cases],
                     [c.source for c in cases], [c.target for c in cases])
