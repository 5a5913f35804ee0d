"""Shape outlines and box geometry of the Shapes world - the one definition of both.

Every shape is described in its own *unit* frame: the object's radius ``r`` is the unit, the frame is centred
on the shape's bounding box and ``y`` grows downward (image convention). Every outline fits in the square
``[-1, 1]^2``, so an object of radius ``r`` at centre ``(x, y)`` has the box ``(x, y) +- r * half_extent``.
The renderer draws these outlines and the detector matches against them, so they live here once.

``relative_position`` is GenEval's relative-position rule, used by the scene sampler (to build scenes that
satisfy a "left of" prompt) and by the GenEval scorer (to check one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart")

SQUARE_HALF_SIDE = 0.88  # a full-width square looks much heavier than the circle beside it
STAR_INNER_RATIO = 0.45  # a regular pentagram is 0.38; fatter arms survive 32x32 pixels and blur
HEART_SQUARE_SIDE = 2.0 / (1.0 / math.sqrt(2.0) + 1.0)  # makes the heart exactly 2 units wide


def _star_vertices() -> np.ndarray:
    k = np.arange(10)
    angle = np.deg2rad(-90.0 + 36.0 * k)  # first point straight up
    radius = np.where(k % 2 == 0, 1.0, STAR_INNER_RATIO)
    pts = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    pts[:, 1] -= (pts[:, 1].min() + pts[:, 1].max()) / 2  # centre the bounding box
    return pts / np.abs(pts[:, 0]).max()  # unit half-width


STAR_VERTICES: np.ndarray = _star_vertices()
TRIANGLE_VERTICES: np.ndarray = np.array([[0.0, -math.sqrt(3) / 2], [1.0, math.sqrt(3) / 2],
                                          [-1.0, math.sqrt(3) / 2]])


@dataclass(frozen=True)
class HeartParts:
    """A heart = a square standing on a corner plus two discs on its upper edges."""

    square_center_y: float
    square_half_side: float
    lobe_center_x: float  # lobes sit at (+-x, y)
    lobe_center_y: float
    lobe_radius: float
    half_height: float


def _heart_parts() -> HeartParts:
    a = HEART_SQUARE_SIDE
    diag = a / math.sqrt(2.0)
    lobe_y_from_bottom = 1.5 * diag  # midpoint of an upper edge, measured up from the bottom corner
    height = lobe_y_from_bottom + a / 2
    bottom = height / 2
    return HeartParts(square_center_y=bottom - diag, square_half_side=a / 2, lobe_center_x=diag / 2,
                      lobe_center_y=bottom - lobe_y_from_bottom, lobe_radius=a / 2, half_height=height / 2)


HEART: HeartParts = _heart_parts()

HALF_EXTENTS = MappingProxyType({
    "circle": (1.0, 1.0),
    "square": (SQUARE_HALF_SIDE, SQUARE_HALF_SIDE),
    "triangle": (1.0, math.sqrt(3) / 2),
    "star": (1.0, float(np.abs(STAR_VERTICES[:, 1]).max())),
    "heart": (1.0, HEART.half_height),
})


def half_extent(shape: str) -> tuple[float, float]:
    """(hx, hy) of ``shape`` in units of its radius."""
    try:
        return HALF_EXTENTS[shape]
    except KeyError:
        raise ValueError(f"unknown shape {shape!r}; the Shapes world has {', '.join(SHAPES)}") from None


# ----------------------------------------------------------------------------------- GenEval's position rule
POSITION_THRESHOLD = 0.1  # GenEval: each box's dims shrink the offset by 10% before the direction test
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


def position_vectors(box_a: np.ndarray, box_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GenEval's geometry for boxes ``[..., 4]`` (x0, y0, x1, y1): (revised offset, unit direction), each
    ``[..., 2]``. The direction is the revised offset divided by the length of the raw offset."""
    a = np.asarray(box_a, dtype=np.float64)
    b = np.asarray(box_b, dtype=np.float64)
    center_a = (a[..., :2] + a[..., 2:]) / 2
    center_b = (b[..., :2] + b[..., 2:]) / 2
    dims = np.abs(a[..., 2:] - a[..., :2]) + np.abs(b[..., 2:] - b[..., :2])
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0.0) * np.sign(offset)
    norm = np.linalg.norm(offset, axis=-1, keepdims=True)
    direction = np.divide(revised, norm, out=np.zeros_like(revised), where=norm > 0)
    return revised, direction


def relative_position(box_a: np.ndarray, box_b: np.ndarray) -> set[str]:
    """The relations of A to B under GenEval's rule (empty when the boxes are too close to tell)."""
    revised, (dx, dy) = position_vectors(box_a, box_b)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def relation_margin(box_a: np.ndarray, box_b: np.ndarray, relation: str) -> np.ndarray:
    """How far A satisfies ``relation`` to B, batched over ``[..., 4]`` boxes: the unit-direction component
    beyond GenEval's 0.5 cut. Positive means the relation holds; the sampler asks for a margin so that a
    box found a pixel off by a detector still gives the same answer."""
    _, direction = position_vectors(box_a, box_b)
    axis, sign = {"left of": (0, -1.0), "right of": (0, 1.0), "above": (1, -1.0), "below": (1, 1.0)}[relation]
    return sign * direction[..., axis] - 0.5


def _shoelace(vertices: np.ndarray) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


AREAS = MappingProxyType({  # in radius units squared
    "circle": math.pi,
    "square": (2 * SQUARE_HALF_SIDE) ** 2,
    "triangle": _shoelace(TRIANGLE_VERTICES),
    "star": _shoelace(STAR_VERTICES),
    "heart": HEART_SQUARE_SIDE ** 2 + math.pi * (HEART_SQUARE_SIDE / 2) ** 2,  # two half-discs stick out
})
