"""Scenes of the Shapes world: the vocabulary, the scene graph, and non-overlapping placement.

A scene is a background colour plus objects (shape, colour, size, centre). Coordinates are fractions of the
image side (``y`` grows downward), so one scene renders at any resolution.

Design rules that keep every object visible and detectable:
- object colours are GenEval's ten; backgrounds come from a separate palette at least 80 (RGB distance, 0-255)
  from every object colour, so no object ever blends into its background;
- object boxes keep a gap of ``GAP`` between each other and ``EDGE_MARGIN`` from the image border (the
  detector reads the background from the border ring);
- the smallest object is ``SIZES['small']`` = 0.09 of the side in radius: 5.8 px at 64x64, 2.9 px at 32x32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Sequence

import numpy as np

from dreamlite.shapes.geometry import SHAPES, half_extent, relation_margin

# GenEval's ten colour names; the RGB values are this world's choice (pairwise >= 95 apart).
OBJECT_COLORS = MappingProxyType({
    "red": (215, 35, 35), "orange": (245, 130, 20), "yellow": (240, 225, 30), "green": (40, 165, 60),
    "blue": (35, 85, 215), "purple": (135, 50, 180), "pink": (245, 140, 200), "brown": (125, 75, 35),
    "black": (20, 20, 20), "white": (250, 250, 250),
})
COLORS: tuple[str, ...] = tuple(OBJECT_COLORS)
BACKGROUND_COLORS = MappingProxyType({
    "gray": (128, 128, 128), "teal": (15, 120, 125), "turquoise": (70, 200, 200), "beige": (215, 195, 150),
    "navy": (30, 40, 100),
})
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_COLORS)
SIZES = MappingProxyType({"small": 0.09, "medium": 0.125, "large": 0.165})  # radius / image side
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

EDGE_MARGIN = 0.04  # box to image border
GAP = 0.06  # box to box: 3.8 px at 64x64, enough to keep two blurred objects apart
RELATION_MARGIN = 0.15  # sampled relations hold with this much to spare under GenEval's rule
MAX_OBJECTS = 5


class SceneError(ValueError):
    """A scene (or its JSON) breaks the Shapes world's rules."""


class PlacementError(RuntimeError):
    """No non-overlapping layout was found for the requested objects (callers resample)."""


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    size: str
    x: float  # box centre, fraction of the image width
    y: float  # box centre, fraction of the image height (down)

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def half_extent(self) -> tuple[float, float]:
        hx, hy = half_extent(self.shape)
        return hx * self.radius, hy * self.radius

    @property
    def box(self) -> tuple[float, float, float, float]:
        hx, hy = self.half_extent
        return self.x - hx, self.y - hy, self.x + hx, self.y + hy

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "x": self.x, "y": self.y}

    @classmethod
    def from_dict(cls, d: dict) -> ShapeObject:
        try:
            obj = cls(str(d["shape"]), str(d["color"]), str(d["size"]), float(d["x"]), float(d["y"]))
        except (KeyError, TypeError, ValueError) as e:
            raise SceneError(f"object {d!r} needs shape, color, size, x, y ({e})") from None
        obj.validate()
        return obj

    def validate(self) -> None:
        if self.shape not in SHAPES:
            raise SceneError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if self.color not in OBJECT_COLORS:
            raise SceneError(f"unknown colour {self.color!r}; known: {', '.join(COLORS)}")
        if self.size not in SIZES:
            raise SceneError(f"unknown size {self.size!r}; known: {', '.join(SIZE_NAMES)}")
        x0, y0, x1, y1 = self.box
        if min(x0, y0) < 0.0 or max(x1, y1) > 1.0:
            raise SceneError(f"{self.color} {self.shape} at ({self.x:.3f}, {self.y:.3f}) leaves the image")


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[ShapeObject, ...] = ()

    def validate(self) -> None:
        if self.background not in BACKGROUND_COLORS:
            raise SceneError(f"unknown background {self.background!r}; known: {', '.join(BACKGROUNDS)}")
        for obj in self.objects:
            obj.validate()
        boxes = self.boxes()
        for i in range(len(boxes)):
            for j in range(i):
                if box_separation(boxes[i], boxes[j]) <= 0:
                    raise SceneError(f"objects {j} and {i} overlap")

    def boxes(self) -> np.ndarray:
        """[K, 4] object boxes (x0, y0, x1, y1) as fractions of the side."""
        return np.array([o.box for o in self.objects], dtype=np.float64).reshape(-1, 4)

    def with_objects(self, objects: Sequence[ShapeObject]) -> Scene:
        return replace(self, objects=tuple(objects))

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [o.to_dict() for o in self.objects]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        if not isinstance(d, dict) or "background" not in d or not isinstance(d.get("objects", []), list):
            raise SceneError(f"a scene is {{'background': name, 'objects': [...]}}, got {str(d)[:80]!r}")
        scene = cls(str(d["background"]), tuple(ShapeObject.from_dict(o) for o in d.get("objects", [])))
        scene.validate()
        return scene


def box_separation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest axis gap between boxes ``[..., 4]`` (negative when they overlap)."""
    sx = np.maximum(b[..., 0] - a[..., 2], a[..., 0] - b[..., 2])
    sy = np.maximum(b[..., 1] - a[..., 3], a[..., 1] - b[..., 3])
    return np.maximum(sx, sy)


@dataclass(frozen=True)
class RelationConstraint:
    """New object ``subject`` must stand ``relation`` (GenEval words) to new object ``reference``."""

    subject: int
    relation: str
    reference: int


def place(rng: np.random.Generator, half_extents: np.ndarray, fixed_boxes: np.ndarray | None = None,
          relations: Sequence[RelationConstraint] = (), center_bounds: np.ndarray | None = None,
          candidates: int = 128, rounds: int = 16) -> np.ndarray:
    """Centres [K, 2] for K new objects with ``half_extents`` [K, 2] that keep ``GAP`` from each other and
    from ``fixed_boxes`` [F, 4], stay ``EDGE_MARGIN`` inside the image, satisfy ``relations`` with
    ``RELATION_MARGIN`` and keep their centres in ``center_bounds`` [K, 4] (x0, y0, x1, y1) when given.

    Draws ``candidates`` layouts at once (vectorised rejection sampling) for up to ``rounds`` rounds.
    Raises PlacementError when nothing fits."""
    half = np.asarray(half_extents, dtype=np.float64).reshape(-1, 2)
    k = len(half)
    fixed = np.zeros((0, 4)) if fixed_boxes is None else np.asarray(fixed_boxes, dtype=np.float64).reshape(-1, 4)
    lo = EDGE_MARGIN + half
    hi = 1.0 - EDGE_MARGIN - half
    if center_bounds is not None:
        bounds = np.asarray(center_bounds, dtype=np.float64).reshape(k, 4)
        lo, hi = np.maximum(lo, bounds[:, :2]), np.minimum(hi, bounds[:, 2:])
    if np.any(hi < lo):
        raise PlacementError("an object is too large for its allowed region")
    pairs = [(i, j) for i in range(k) for j in range(i)]
    for _ in range(rounds):
        centres = lo + rng.random((candidates, k, 2)) * (hi - lo)  # [T, K, 2]
        boxes = np.concatenate([centres - half, centres + half], axis=-1)  # [T, K, 4]
        ok = np.ones(candidates, dtype=bool)
        for i, j in pairs:
            ok &= box_separation(boxes[:, i], boxes[:, j]) >= GAP
        if len(fixed):
            ok &= np.all(box_separation(boxes[:, :, None, :], fixed[None, None]) >= GAP, axis=(1, 2))
        for rel in relations:
            ok &= relation_margin(boxes[:, rel.subject], boxes[:, rel.reference], rel.relation) >= RELATION_MARGIN
        hits = np.flatnonzero(ok)
        if len(hits):
            return centres[hits[0]]
    raise PlacementError(f"could not place {k} object(s) beside {len(fixed)} fixed one(s)")


def random_object_attrs(rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    """n random (shape, colour, size) triples."""
    shapes = rng.integers(len(SHAPES), size=n)
    colors = rng.integers(len(COLORS), size=n)
    sizes = rng.integers(len(SIZE_NAMES), size=n)
    return [(SHAPES[s], COLORS[c], SIZE_NAMES[z]) for s, c, z in zip(shapes, colors, sizes)]


def layout(rng: np.random.Generator, attrs: Sequence[tuple[str, str, str]], background: str,
           relations: Sequence[RelationConstraint] = (), fixed: Sequence[ShapeObject] = ()) -> Scene:
    """A scene with ``fixed`` objects kept and ``attrs`` (shape, colour, size) placed around them. When the
    objects do not fit, sizes shrink one step at a time (largest first) before giving up."""
    attrs = list(attrs)
    fixed_boxes = np.array([o.box for o in fixed]).reshape(-1, 4)
    while True:
        half = np.array([[h * SIZES[z] for h in half_extent(s)] for s, _, z in attrs]).reshape(-1, 2)
        try:
            centres = place(rng, half, fixed_boxes, relations)
            break
        except PlacementError:
            ranks = [SIZE_NAMES.index(z) for _, _, z in attrs]
            if not attrs or max(ranks) == 0:
                raise
            i = int(np.argmax(ranks))
            attrs[i] = (attrs[i][0], attrs[i][1], SIZE_NAMES[ranks[i] - 1])
    new = [ShapeObject(s, c, z, float(x), float(y)) for (s, c, z), (x, y) in zip(attrs, centres)]
    return Scene(background, tuple(fixed) + tuple(new))


def random_background(rng: np.random.Generator, exclude: str | None = None) -> str:
    choices = [b for b in BACKGROUNDS if b != exclude]
    return choices[int(rng.integers(len(choices)))]
