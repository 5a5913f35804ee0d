"""Aspect-ratio buckets: the one place the bucket tables, their scaling and the nearest-bucket rule live.

The official tables (PIPELINE.md §8) are width-first ``(width, height)`` pairs of ~1024-px class (about one
megapixel each). The official code multiplies every pair by 2 (~2048-px class); a 1024-px model such as
``dreamlite-0.39b`` uses them *as listed* (``scale=1``); ``scale=2`` reproduces the official doubling and smaller
scales (``0.5``, ``1/16``) give 512-px or toy-sized classes. Scaled sides are rounded to the nearest multiple of
``multiple`` (16 by default: an 8x VAE plus one U-Net downsampling; pass a larger multiple when the network needs
it), never below one multiple.

Selection follows the official rule: the bucket whose width/height ratio is closest (absolute difference) to the
image's, ties going to the earlier entry of the table. Images are then resized to cover their bucket and
centre-cropped (``fit_to_bucket``), so one batch of a single bucket stacks into one latent tensor.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from PIL import Image, ImageOps

Bucket = tuple[int, int]  # (width, height) in pixels

# PIPELINE.md §8, width-first, as listed (duplicates kept as data; ``make_buckets`` removes them).
V54: tuple[Bucket, ...] = (
    (1248, 832), (1024, 1024), (896, 1184), (832, 1248), (1376, 768), (1184, 896), (928, 1120), (864, 1216),
    (1216, 864), (1312, 800), (768, 1376), (1280, 832), (1152, 896), (1344, 768), (1120, 928), (1408, 736),
    (1440, 736),
)
V765: tuple[Bucket, ...] = (
    (1248, 832), (1024, 1024), (896, 1152), (1248, 832), (960, 1088), (1088, 960), (1152, 896), (832, 1248),
    (832, 1248), (1312, 800), (800, 1312), (1344, 768), (768, 1344), (1440, 736), (736, 1440), (1472, 704),
    (704, 1472), (1600, 672), (672, 1568), (1184, 896),
)
SQUARE: tuple[Bucket, ...] = ((1024, 1024),)  # the official default (bucket 0): everything at 1024²
TABLES: Mapping[str, tuple[Bucket, ...]] = {"v54": V54, "v765": V765, "square": SQUARE}


def make_buckets(table: str | Sequence[Sequence[int]] = "v54", scale: float = 1.0,
                 multiple: int = 16) -> tuple[Bucket, ...]:
    """The buckets of ``table`` (a name in ``TABLES`` or explicit ``(w, h)`` pairs) times ``scale``, each side
    rounded to a multiple of ``multiple``; duplicates removed, table order kept."""
    if isinstance(table, str):
        if table not in TABLES:
            raise ValueError(f"unknown bucket table {table!r}; known: {', '.join(TABLES)} (or a list of [w, h])")
        pairs = TABLES[table]
    else:
        pairs = tuple(tuple(int(v) for v in p) for p in table)  # type: ignore[misc]
        if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
            raise ValueError(f"buckets must be a non-empty list of positive [width, height] pairs, got {table!r}")
    if not (scale > 0) or multiple < 1:
        raise ValueError(f"bucket scale must be > 0 and multiple >= 1, got scale={scale}, multiple={multiple}")
    out: list[Bucket] = []
    for w, h in pairs:
        b = (_round_to(w * scale, multiple), _round_to(h * scale, multiple))
        if b not in out:
            out.append(b)
    return tuple(out)


def _round_to(value: float, multiple: int) -> int:
    # half-up (not Python's half-to-even) so that a table scales the same way whatever the side
    return max(multiple, math.floor(value / multiple + 0.5) * multiple)


def check_multiple(buckets: Sequence[Bucket], multiple: int) -> None:
    """Raise if a bucket side is not a multiple of ``multiple`` (e.g. VAE factor x U-Net downsampling)."""
    bad = [b for b in buckets if b[0] % multiple or b[1] % multiple]
    if bad:
        raise ValueError(f"buckets {bad} are not multiples of {multiple} px, which the VAE and U-Net need; "
                         f"use bucket_multiple={multiple} or a larger scale")


def required_multiple(vae: Any, unet: Any) -> int:
    """Pixels a bucket side must be a multiple of: the VAE's factor x the U-Net's total downsampling."""
    from dreamlite.models.vae import downsample_factor
    return downsample_factor(vae) * 2 ** (len(unet.config.block_out_channels) - 1)


def buckets_for(table: str | Sequence[Sequence[int]], resolution: Bucket, multiple: int) -> tuple[Bucket, ...]:
    """The buckets of ``table`` scaled to a model trained at ``resolution`` (w, h): tables are ~1024-px class,
    so the scale is sqrt(w * h) / 1024. Explicit ``(w, h)`` pairs are used as given (checked, not scaled)."""
    if isinstance(table, str):
        return make_buckets(table, math.sqrt(resolution[0] * resolution[1]) / 1024, multiple)
    buckets = make_buckets(table, 1.0, 1)
    check_multiple(buckets, multiple)
    return buckets


def nearest_bucket(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose width/height ratio is closest to ``width / height`` (first one on ties)."""
    return buckets[bucket_index(width, height, buckets)]


def bucket_index(width: int, height: int, buckets: Sequence[Bucket]) -> int:
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not buckets:
        raise ValueError("no buckets to choose from")
    ratio = width / height
    diffs = [abs(w / h - ratio) for w, h in buckets]
    return diffs.index(min(diffs))


def bucket_indices(sizes: torch.Tensor, buckets: Sequence[Bucket]) -> torch.Tensor:
    """Vectorised ``bucket_index``: sizes [N, 2] (width, height) -> [N] long. Same rule, same tie-breaking
    (``argmin`` returns the first minimum)."""
    if sizes.ndim != 2 or sizes.shape[1] != 2:
        raise ValueError(f"sizes must be [N, 2] (width, height), got {tuple(sizes.shape)}")
    if len(sizes) == 0:
        return torch.zeros(0, dtype=torch.long)
    ratios = sizes[:, 0].double() / sizes[:, 1].double()  # [N]
    table = torch.tensor([w / h for w, h in buckets], dtype=torch.float64)  # [K]
    return (table[None, :] - ratios[:, None]).abs().argmin(dim=1)


def fit_to_bucket(image: Image.Image, bucket: Bucket) -> Image.Image:
    """Resize (LANCZOS, as the official pipeline) so the image covers ``bucket``, then centre-crop to it."""
    if image.size == bucket:
        return image
    return ImageOps.fit(image, bucket, method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
