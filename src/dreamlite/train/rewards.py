"""Rewards for post-training (RL): images (+ prompts, metadata, sources) -> float tensor [N] in [0, 1].

Every reward follows one protocol, ``Reward``, so that the exact Shapes-world rewards below and learned reward
models (a VLM judge, an aesthetic scorer, an image-reward network) plug into ``dreamlite.train.rl`` the same
way. The Shapes rewards score with the benchmark code itself, never a copy of it:

- ``GenEvalReward``: the pixels-only Shapes detector and GenEval's rules (``dreamlite.bench.geneval``; Ghosh et
  al. 2023, "GenEval"): 1 when the image satisfies the prompt's metadata row, else 0; optionally blended with
  the per-clause partial credit (``geneval.partial_score``), a denser signal for RL (DiffusionNFT, Zheng et al.
  2025, trains on GenEval-style rule rewards).
- ``EditReward``: ImgEdit-style success x preservation (``dreamlite.bench.imgedit.score_edit``; Ye et al. 2025,
  "ImgEdit"), or the 1-5 score mapped to [0, 1].

Images are uint8 ``[H, W, 3]`` arrays, a uint8 batch ``[N, H, W, 3]``, or PIL images (what
``models.vae.to_uint8`` and the pipeline produce). An image the benchmarks would reject (too small, not square)
earns 0, as a failed benchmark sample does. Metadata a reward cannot score is an error, not a 0: a silent 0 for
a whole prompt would be an invisible bias in the advantages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, Union, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dreamlite.bench import geneval, imgedit
from dreamlite.bench import images as bench_images
from dreamlite.shapes.edits import EDIT_TYPES
from dreamlite.shapes.scene import Scene
from dreamlite.shapes.spec import PromptSpec

ImageLike = Union[np.ndarray, Image.Image]
Images = Union[np.ndarray, Sequence[ImageLike]]  # uint8 [N, H, W, 3] or N images


@runtime_checkable
class Reward(Protocol):
    """A reward model: N images and what they were asked to show -> float32 tensor [N] with values in [0, 1].

    ``prompts``: the N prompts or edit instructions (user text, without task prefix or template);
    ``metadata``: N dicts of whatever the reward needs (a GenEval row, the edit's scenes; empty for a
    learned reward); ``sources``: the N edit sources, or None for text-to-image.
    """

    name: str

    def __call__(self, images: Images, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]],
                 sources: Images | None = None) -> Tensor: ...


def as_image_list(images: Images) -> list[ImageLike]:
    """A uint8 batch [N, H, W, 3] or a sequence of images -> a list of N images (arrays or PIL)."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"an image batch must be uint8 [N, H, W, 3], got shape {images.shape}")
        return list(images)
    if isinstance(images, Tensor):
        raise TypeError("rewards take uint8 images, not tensors: convert with dreamlite.models.vae.to_uint8")
    return list(images)


def _check_lengths(images: list[ImageLike], prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> None:
    if not len(images) == len(prompts) == len(metadata):
        raise ValueError(f"reward got {len(images)} images, {len(prompts)} prompts and {len(metadata)} metadata "
                         "rows; they must be aligned one to one")


def _tensor(values: Sequence[float]) -> Tensor:
    out = torch.tensor(list(values), dtype=torch.float32)
    if out.numel() and (out.min() < 0 or out.max() > 1 or not torch.isfinite(out).all()):
        raise AssertionError(f"reward values left [0, 1]: {out.tolist()}")
    return out


# ------------------------------------------------------------------------------------------------ GenEval
@dataclass(frozen=True)
class GenEvalReward:
    """GenEval's verdict on the Shapes detector's reading of each image (Ghosh et al. 2023).

    reward = (1 - partial_weight) * correct + partial_weight * partial_score, so 1 exactly when the image is
    correct and, for ``partial_weight`` 0 (the default), GenEval's binary rule. ``partial_score`` gives credit
    per clause (count found x colours right x positions held; exclude clauses earn credit when respected, so
    a blank image still earns the exclude share on counting prompts - keep the weight small).
    ``metadata``: GenEval rows (``tag``, ``include``, ``exclude``, ``prompt``), e.g. from
    ``dreamlite.shapes.tasks.sample_t2i_prompts``; each row's prompt must equal the prompt it is scored with.
    """

    partial_weight: float = 0.0
    name: str = "geneval"

    def __post_init__(self) -> None:
        if not 0.0 <= self.partial_weight <= 1.0:
            raise ValueError(f"partial_weight must be in [0, 1], got {self.partial_weight}")

    def score_one(self, image: ImageLike, row: Mapping[str, Any]) -> float:
        """Reward of one image for one GenEval metadata row."""
        result = geneval.score_image(bench_images.to_pixels(image), dict(row), "<rl sample>")
        if result.correct is None:
            raise ValueError(f"prompt {result.prompt!r} is not scorable in the Shapes world: {result.reason}")
        return (1.0 - self.partial_weight) * float(result.correct) + self.partial_weight * result.partial

    def __call__(self, images: Images, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]],
                 sources: Images | None = None) -> Tensor:
        """[N] rewards; ``sources`` is ignored (text-to-image)."""
        imgs = as_image_list(images)
        _check_lengths(imgs, prompts, metadata)
        for prompt, row in zip(prompts, metadata):
            if row.get("prompt") != prompt:
                raise ValueError(f"metadata row is for {row.get('prompt')!r} but the image was made for {prompt!r}")
        return _tensor([self.score_one(img, row) for img, row in zip(imgs, metadata)])


def geneval_metadata(spec: PromptSpec | Mapping[str, Any]) -> dict[str, Any]:
    """The metadata dict ``GenEvalReward`` reads, from a PromptSpec or a row (validated)."""
    return (spec if isinstance(spec, PromptSpec) else PromptSpec.from_dict(dict(spec))).to_dict()


# ---------------------------------------------------------------------------------------------------- edit
EDIT_MODES = ("product", "score")


@dataclass(frozen=True)
class EditReward:
    """ImgEdit-style edit reward from the Shapes detector (``dreamlite.bench.imgedit.score_edit``).

    ``mode="product"`` (default): success x preservation - 0 unless the named edit happened, then the share of
    unnamed objects (and the background) kept in place. ``mode="score"``: (score_1_5 - 1) / 4, which also pays
    a little for preservation when the edit failed (an untouched copy of the source earns 0.25).
    ``preservation_power`` p (product mode): success x preservation ** p. p > 1 widens the reward gap between a
    clean edit and one that disturbs the rest of the scene (0.8 kept earns 0.64 at p = 2), for a policy that
    edits well but keeps too little; p = 1 is ImgEdit's product.
    ``metadata``: dicts made by ``edit_metadata`` (source scene, target scene, edit type).
    """

    mode: str = "product"
    preservation_power: float = 1.0
    name: str = "imgedit"

    def __post_init__(self) -> None:
        if self.mode not in EDIT_MODES:
            raise ValueError(f"unknown edit reward mode {self.mode!r}; known: {', '.join(EDIT_MODES)}")
        if not self.preservation_power > 0 or (self.mode != "product" and self.preservation_power != 1.0):
            raise ValueError(f"preservation_power must be > 0 and only applies to mode 'product'; got "
                             f"{self.preservation_power} with mode {self.mode!r}")

    def score_one(self, image: ImageLike, meta: Mapping[str, Any]) -> float:
        """Reward of one edited image."""
        source, target, edit_type = _edit_fields(meta)
        s = imgedit.score_edit(image, source, target, edit_type)
        if self.mode == "product":
            return float(s.success) * s.preservation ** self.preservation_power
        return (s.score_1_5 - 1.0) / 4.0

    def __call__(self, images: Images, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]],
                 sources: Images | None = None) -> Tensor:
        """[N] rewards; the source *scenes* in ``metadata`` are what is scored, ``sources`` pixels are unused."""
        imgs = as_image_list(images)
        _check_lengths(imgs, prompts, metadata)
        return _tensor([self.score_one(img, meta) for img, meta in zip(imgs, metadata)])


def edit_metadata(source_scene: Scene, target_scene: Scene, edit_type: str) -> dict[str, Any]:
    """The metadata dict ``EditReward`` reads (JSON-serialisable: scenes as dicts)."""
    if edit_type not in EDIT_TYPES:
        raise ValueError(f"unknown edit type {edit_type!r}; known: {', '.join(EDIT_TYPES)}")
    return {"source": source_scene.to_dict(), "target": target_scene.to_dict(), "edit_type": edit_type}


def _edit_fields(meta: Mapping[str, Any]) -> tuple[Scene, Scene, str]:
    try:
        src, tgt, edit_type = meta["source"], meta["target"], meta["edit_type"]
    except KeyError as e:
        raise ValueError(f"edit reward metadata lacks {e.args[0]!r} (build it with edit_metadata)") from None
    as_scene = lambda s: s if isinstance(s, Scene) else Scene.from_dict(s)  # noqa: E731
    return as_scene(src), as_scene(tgt), str(edit_type)


# --------------------------------------------------------------------------------------------- combining
@dataclass(frozen=True)
class WeightedReward:
    """A convex combination of rewards (weights normalised to sum 1), still in [0, 1]: multi-reward RL."""

    parts: tuple[tuple[Reward, float], ...]
    name: str = "weighted"

    def __post_init__(self) -> None:
        if not self.parts or any(w < 0 for _, w in self.parts) or sum(w for _, w in self.parts) <= 0:
            raise ValueError("WeightedReward needs at least one reward and weights >= 0 with a positive sum")

    def __call__(self, images: Images, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]],
                 sources: Images | None = None) -> Tensor:
        total = sum(w for _, w in self.parts)
        out = sum(w / total * reward(images, prompts, metadata, sources) for reward, w in self.parts)
        return out.clamp(0.0, 1.0)  # [N]; clamp only removes float round-off


__all__ = ["EDIT_MODES", "EditReward", "GenEvalReward", "Reward", "WeightedReward", "as_image_list",
           "edit_metadata", "geneval_metadata"]
