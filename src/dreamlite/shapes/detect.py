"""Object detector of the Shapes world, from pixels only (no scene information).

Pipeline, for an RGB uint8 image of any size with sides >= ``MIN_IMAGE_SIDE`` (32 px):
1. Images with a side above ``WORK_SIDE`` are area-downsampled to it (boxes are scaled back).
2. Background = per-channel median of the border ring (objects never touch the border).
3. Foreground = pixels farther than ``FG_THRESHOLD`` (RGB, 0-255) from the background; 4-connected components.
   Components that are tiny or far too large are not objects.
4. Colour = median of a component's most saturated pixels, named by the nearest of the ten object colours
   (rejected when no colour is within ``MAX_COLOR_DISTANCE``).
5. Shape = analysis by synthesis: the component's soft mask (alpha, by unmixing each pixel between background
   and object colour) is compared with each class's outline placed to match the mask's area and centroid
   (both survive blur and JPEG), at a few scales and blur levels; the best soft IoU names the class and is the
   detection's score. The box is the fitted outline's box.
6. Detections with score >= ``MIN_SCORE`` are returned sorted by score, best first (as GenEval's detector).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from dreamlite.shapes.geometry import AREAS, SHAPES, half_extent
from dreamlite.shapes.render import coverage
from dreamlite.shapes.scene import BACKGROUND_COLORS, OBJECT_COLORS, SIZES

MIN_IMAGE_SIDE = 32
WORK_SIDE = 128  # larger inputs are downsampled to this; the smallest object is still 11 px wide there
FG_THRESHOLD = 40.0  # background palette is >= 80 from every object colour: split the difference
MAX_COLOR_DISTANCE = 90.0
MAX_BACKGROUND_DISTANCE = 60.0
MIN_SCORE = 0.5
MAX_BOX_FRACTION = 0.6  # the largest object spans 0.33 of the side
FIT_SCALES = (0.92, 1.0, 1.08)
FIT_BLURS = (0.0, 1.0, 2.0)  # pixels at the working resolution

_COLOR_NAMES = tuple(OBJECT_COLORS)
_COLOR_RGB = np.array([OBJECT_COLORS[c] for c in _COLOR_NAMES], dtype=np.float32)
_BG_NAMES = tuple(BACKGROUND_COLORS)
_BG_RGB = np.array([BACKGROUND_COLORS[c] for c in _BG_NAMES], dtype=np.float32)
_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.169, -0.331, 0.5], [0.5, -0.419, -0.081]], dtype=np.float32)
CHROMA_WEIGHT = 0.1
_UNMIX_METRIC = _YCBCR.T @ np.diag([1.0, CHROMA_WEIGHT, CHROMA_WEIGHT]).astype(np.float32) @ _YCBCR


@dataclass(frozen=True)
class Detection:
    cls: str
    color: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the input image
    score: float

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def to_dict(self) -> dict:
        return {"class": self.cls, "color": self.color, "box": [round(v, 2) for v in self.box],
                "score": round(self.score, 4)}


@dataclass(frozen=True)
class Analysis:
    """Everything the detector reads from one image."""

    width: int
    height: int
    background: str | None  # nearest background palette name, None when no palette colour is close
    background_rgb: tuple[float, float, float]
    detections: tuple[Detection, ...]


def check_image(image: np.ndarray) -> np.ndarray:
    """The image as uint8 [H, W, 3]; raises ValueError naming what is wrong."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {arr.dtype}")
    if min(arr.shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(f"image {arr.shape[1]}x{arr.shape[0]} is below the detector's minimum "
                         f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}")
    return arr


def _border_ring(img: np.ndarray) -> np.ndarray:
    w = max(1, min(img.shape[:2]) // 32)
    return np.concatenate([img[:w].reshape(-1, 3), img[-w:].reshape(-1, 3),
                           img[w:-w, :w].reshape(-1, 3), img[w:-w, -w:].reshape(-1, 3)])


@lru_cache(maxsize=1)
def shape_moments() -> dict[str, tuple[float, float, float]]:
    """(area, centroid x, centroid y) of each outline in radius units, measured on the renderer's own output
    at high resolution (so the detector fits exactly what the renderer draws)."""
    r, patch = 100.0, 206
    m = len(SHAPES)
    cov = coverage(list(SHAPES), np.full((m, 2), patch / 2), np.full(m, r), np.zeros((m, 2)), patch)
    grid = (np.arange(patch) + 0.5 - patch / 2) / r
    area = cov.sum(axis=(1, 2))
    cx = (cov.sum(axis=1) * grid).sum(axis=1) / area
    cy = (cov.sum(axis=2) * grid).sum(axis=1) / area
    return {s: (float(a / r**2), float(x), float(y)) for s, a, x, y in zip(SHAPES, area, cx, cy)}


def _fit_shape(alpha: np.ndarray, mass: float, centroid: tuple[float, float]) -> tuple[str, float, float,
                                                                                     tuple[float, float]]:
    """Best (class, soft IoU, radius, box centre) for a soft mask ``alpha`` [P, P] of total ``mass`` and
    ``centroid`` (patch pixels). Area and centroid survive blur, so each class's outline is placed to match
    them, then compared at a few scales and blur levels."""
    patch = alpha.shape[0]
    moments = shape_moments()
    shapes, radii, centers = [], [], []
    for shape in SHAPES:
        area, ox, oy = moments[shape]
        r = np.sqrt(mass / area)
        for s in FIT_SCALES:
            shapes.append(shape)
            radii.append(r * s)
            centers.append((centroid[0] - ox * r * s, centroid[1] - oy * r * s))
    m = len(shapes)
    templates = coverage(shapes, np.array(centers), np.array(radii), np.zeros((m, 2)), patch)
    variants = [templates]
    variants += [ndimage.gaussian_filter(templates, sigma=(0, b, b), mode="constant") for b in FIT_BLURS if b > 0]
    t = np.stack(variants)  # [B, M, P, P]
    iou = np.minimum(t, alpha).sum(axis=(2, 3)) / np.maximum(np.maximum(t, alpha).sum(axis=(2, 3)), 1e-6)
    per_template = iou.max(axis=0)
    best = per_template.reshape(len(SHAPES), len(FIT_SCALES)).max(axis=1)
    k = int(np.argmax(best))
    j = k * len(FIT_SCALES) + int(np.argmax(per_template[k * len(FIT_SCALES):(k + 1) * len(FIT_SCALES)]))
    return SHAPES[k], float(best[k]), float(radii[j]), centers[j]


def _component(img: np.ndarray, labels: np.ndarray, k: int, slc: tuple[slice, slice], bg: np.ndarray,
               dist: np.ndarray) -> tuple[str, str, tuple[float, float, float, float], float] | None:
    """(class, colour, box in working pixels, score) of component ``k``, or None when it is no object."""
    own = labels[slc] == k
    d = dist[slc][own]
    pixels = img[slc][own]
    core = pixels[d >= 0.8 * np.percentile(d, 95)]
    rgb = np.median(core, axis=0)
    cdist = np.linalg.norm(_COLOR_RGB - rgb, axis=1)
    if cdist.min() > MAX_COLOR_DISTANCE:
        return None
    color = _COLOR_NAMES[int(np.argmin(cdist))]
    # Soft mask on a square window around the component: unmix each pixel between background and colour.
    y0, x0 = slc[0].start, slc[1].start
    side = max(slc[0].stop - y0, slc[1].stop - x0) + 8
    oy = y0 - (side - (slc[0].stop - y0)) // 2
    ox = x0 - (side - (slc[1].stop - x0)) // 2
    ys = np.clip(np.arange(oy, oy + side), 0, img.shape[0] - 1)
    xs = np.clip(np.arange(ox, ox + side), 0, img.shape[1] - 1)
    win = img[ys[:, None], xs[None, :]]
    other = labels[ys[:, None], xs[None, :]]
    # Unmix in a metric that trusts luma more than chroma: JPEG keeps luma sharp and halves chroma resolution.
    axis = (rgb - bg) @ _UNMIX_METRIC
    raw = ((win - bg) @ axis) / max(float(axis @ (rgb - bg)), 1e-6)
    raw[(other != 0) & (other != k)] = 0.0  # a neighbour's pixels are not this object's
    # Moments from the unclipped mask: background noise averages out instead of piling up above zero.
    raw = np.clip(raw, -0.5, 1.5)
    mass = float(raw.sum())
    if mass <= 1.0:
        return None
    grid = np.arange(side) + 0.5
    centroid = (float((raw.sum(axis=0) * grid).sum() / mass), float((raw.sum(axis=1) * grid).sum() / mass))
    alpha = np.clip(raw, 0.0, 1.0).astype(np.float32)
    cls, score, r, (cx, cy) = _fit_shape(alpha, mass, centroid)
    hx, hy = half_extent(cls)
    return cls, color, (cx - hx * r + ox, cy - hy * r + oy, cx + hx * r + ox, cy + hy * r + oy), score


def analyse(image: np.ndarray) -> Analysis:
    """Background and detections (sorted by score, best first) of an RGB uint8 image."""
    arr = check_image(image)
    height, width = arr.shape[:2]
    scale = 1.0
    if max(height, width) > WORK_SIDE:
        scale = WORK_SIDE / max(height, width)
        size = (max(MIN_IMAGE_SIDE, round(width * scale)), max(MIN_IMAGE_SIDE, round(height * scale)))
        arr = np.asarray(Image.fromarray(arr).resize(size, Image.BOX))
        scale_x, scale_y = width / size[0], height / size[1]
    else:
        scale_x = scale_y = 1.0
    img = arr.astype(np.float32)
    bg = np.median(_border_ring(img), axis=0)
    bg_dist = np.linalg.norm(_BG_RGB - bg, axis=1)
    bg_name = _BG_NAMES[int(np.argmin(bg_dist))] if bg_dist.min() <= MAX_BACKGROUND_DISTANCE else None
    dist = np.linalg.norm(img - bg, axis=2)
    labels, _ = ndimage.label(dist > FG_THRESHOLD)
    side = min(img.shape[:2])
    min_area = 0.4 * AREAS["star"] * (SIZES["small"] * side) ** 2
    areas = np.bincount(labels.ravel())
    found = []
    for k, slc in enumerate(ndimage.find_objects(labels), start=1):
        if slc is None or areas[k] < min_area:
            continue
        if max(slc[0].stop - slc[0].start, slc[1].stop - slc[1].start) > MAX_BOX_FRACTION * side:
            continue
        result = _component(img, labels, k, slc, bg, dist)
        if result is None or result[3] < MIN_SCORE:
            continue
        cls, color, (x0, y0, x1, y1), score = result
        found.append(Detection(cls, color, (x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y), score))
    found.sort(key=lambda d: -d.score)
    return Analysis(width, height, bg_name, tuple(float(v) for v in bg), tuple(found))


def detect(image: np.ndarray) -> list[Detection]:
    """Objects in an RGB uint8 image [H, W, 3] of any size >= 32x32, best score first."""
    return list(analyse(image).detections)
