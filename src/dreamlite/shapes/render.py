"""Rasteriser of the Shapes world: anti-aliased, deterministic, vectorised over a batch of scenes.

Each object is drawn from a signed distance field (SDF) evaluated only on a small square patch around it;
coverage = clip(0.5 - distance_in_pixels, 0, 1), i.e. a one-pixel box filter across the edge. All objects of
one shape class in the batch are evaluated in one numpy call, and objects are composited slot by slot (the
k-th object of every scene at once). Objects never overlap, so plain "over" compositing is exact.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dreamlite.shapes.geometry import HEART, SHAPES, SQUARE_HALF_SIDE, STAR_VERTICES, TRIANGLE_VERTICES
from dreamlite.shapes.scene import BACKGROUND_COLORS, OBJECT_COLORS, SIZES, Scene

MAX_SIZE = 512
MIN_SIZE = 8
_CHUNK = 256  # scenes per compositing pass: bounds the float canvas to ~30 MB at 64x64


def _box_sdf(u: np.ndarray, v: np.ndarray, half: float) -> np.ndarray:
    qx = np.abs(u) - half
    qy = np.abs(v) - half
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _polygon_sdf(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Distance to the closest edge, negative inside (even-odd crossings of a ray toward +u)."""
    d2 = np.full(u.shape, np.inf, dtype=u.dtype)
    inside = np.zeros(u.shape, dtype=bool)
    n = len(vertices)
    for i in range(n):
        ax, ay = (float(c) for c in vertices[i])
        bx, by = (float(c) for c in vertices[(i + 1) % n])
        ex, ey = bx - ax, by - ay
        wx, wy = u - ax, v - ay
        t = (wx * ex + wy * ey) * (1.0 / (ex * ex + ey * ey))
        t = np.minimum(np.maximum(t, 0.0, out=t), 1.0, out=t)
        d2 = np.minimum(d2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        if ey != 0.0:  # a horizontal edge is never crossed by a horizontal ray
            straddles = (ay > v) != (by > v)
            inside ^= straddles & (u < ax + (v - ay) * (ex / ey))
    return np.sqrt(d2) * np.where(inside, -1.0, 1.0).astype(u.dtype)


def _heart_sdf(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    h = HEART
    c = math.sqrt(0.5)  # rotate the square by 45 degrees so it stands on a corner
    vv = v - h.square_center_y
    body = _box_sdf((u + vv) * c, (vv - u) * c, h.square_half_side)
    lobe_l = np.hypot(u + h.lobe_center_x, v - h.lobe_center_y) - h.lobe_radius
    lobe_r = np.hypot(u - h.lobe_center_x, v - h.lobe_center_y) - h.lobe_radius
    return np.minimum(body, np.minimum(lobe_l, lobe_r))


def shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (in radius units) of points (u, v) in the shape's unit frame."""
    if shape == "circle":
        return np.hypot(u, v) - 1.0
    if shape == "square":
        return _box_sdf(u, v, SQUARE_HALF_SIDE)
    if shape == "triangle":
        return _polygon_sdf(u, v, TRIANGLE_VERTICES)
    if shape == "star":
        return _polygon_sdf(u, v, STAR_VERTICES)
    if shape == "heart":
        return _heart_sdf(u, v)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def patch_size(max_radius_px: float) -> int:
    """Side of the square patch that holds an object of this radius plus its anti-aliased rim."""
    return int(math.ceil(2 * max_radius_px)) + 4


def coverage(shapes: Sequence[str], centers: np.ndarray, radii: np.ndarray, origins: np.ndarray,
             patch: int) -> np.ndarray:
    """Coverage [M, patch, patch] in [0, 1] of M objects. ``centers`` [M, 2] (x, y) and ``radii`` [M] in pixels;
    ``origins`` [M, 2] (x, y) integer pixel of each patch's top-left corner. Pixel (i, j) of a patch samples
    the point (ox + j + 0.5, oy + i + 0.5)."""
    centers = np.asarray(centers, dtype=np.float32).reshape(-1, 2)
    radii = np.asarray(radii, dtype=np.float32).reshape(-1)
    origins = np.asarray(origins).reshape(-1, 2).astype(np.float32)  # keeps the SDF maths in float32
    grid = np.arange(patch, dtype=np.float32) + 0.5
    out = np.zeros((len(centers), patch, patch), dtype=np.float32)
    shape_arr = np.asarray(shapes)
    for shape in set(shapes):
        idx = np.flatnonzero(shape_arr == shape)
        r = radii[idx, None, None]
        u = (origins[idx, 0, None, None] - centers[idx, 0, None, None] + grid[None, None, :]) / r
        v = (origins[idx, 1, None, None] - centers[idx, 1, None, None] + grid[None, :, None]) / r
        u, v = np.broadcast_arrays(u, v)
        cov = 0.5 - shape_sdf(shape, u, v) * r
        out[idx] = np.minimum(np.maximum(cov, 0.0, out=cov), 1.0, out=cov)
    return out


def _check_size(size: int) -> None:
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise ValueError(f"image size {size} is outside [{MIN_SIZE}, {MAX_SIZE}]")


def _render_chunk(scenes: Sequence[Scene], size: int) -> np.ndarray:
    bg = np.array([BACKGROUND_COLORS[s.background] for s in scenes], dtype=np.float32)
    objs = [(n, k, o) for n, s in enumerate(scenes) for k, o in enumerate(s.objects)]
    if not objs:
        return np.broadcast_to(bg[:, None, None, :], (len(scenes), size, size, 3)).astype(np.uint8)
    scene_idx = np.array([n for n, _, _ in objs])
    centers = np.array([(o.x * size, o.y * size) for _, _, o in objs], dtype=np.float32)
    radii = np.array([SIZES[o.size] * size for _, _, o in objs], dtype=np.float32)
    colors = np.array([OBJECT_COLORS[o.color] for _, _, o in objs], dtype=np.float32)
    patch = patch_size(float(radii.max()))
    origins = np.floor(centers).astype(np.int64) - patch // 2
    cov = coverage([o.shape for _, _, o in objs], centers, radii, origins, patch)

    # Objects never overlap, so per pixel: image = bg * (1 - sum(cov)) + sum(cov * colour). The sums are
    # bincounts over flat pixel indices - far cheaper than gathering and scattering patches.
    steps = np.arange(patch)
    ys = origins[:, 1, None, None] + steps[None, :, None]
    xs = origins[:, 0, None, None] + steps[None, None, :]
    # Pixels outside the image or outside the shape add nothing: drop them before counting.
    keep = (cov > 0) & (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
    obj_of, _, _ = np.nonzero(keep)
    flat = (scene_idx[obj_of] * size + np.broadcast_to(ys, cov.shape)[keep]) * size \
        + np.broadcast_to(xs, cov.shape)[keep]
    weight = cov[keep]
    n_pix = len(scenes) * size * size
    alpha = np.bincount(flat, weights=weight, minlength=n_pix).astype(np.float32)
    out = (1.0 - alpha).reshape(len(scenes), size * size, 1) * bg[:, None, :]
    out = out.reshape(n_pix, 3)
    for ch in range(3):
        out[:, ch] += np.bincount(flat, weights=weight * colors[obj_of, ch], minlength=n_pix)
    # A convex blend of values in [0, 255]: rounding alone lands in uint8 range.
    return np.rint(out, out=out).astype(np.uint8).reshape(len(scenes), size, size, 3)


def render_batch(scenes: Sequence[Scene], size: int = 64) -> np.ndarray:
    """uint8 images [N, size, size, 3] of ``scenes`` (deterministic: same scenes, same pixels)."""
    _check_size(size)
    if not scenes:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    parts = [_render_chunk(scenes[i:i + _CHUNK], size) for i in range(0, len(scenes), _CHUNK)]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """uint8 image [size, size, 3] of one scene."""
    return render_batch([scene], size)[0]
