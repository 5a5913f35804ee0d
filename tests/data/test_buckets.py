"""Aspect buckets: tables and their scaling, the nearest-bucket rule, fitting an image to its bucket."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from dreamlite.data.buckets import (
    SQUARE, V54, V765, bucket_index, bucket_indices, check_multiple, fit_to_bucket, make_buckets, nearest_bucket,
)


# ------------------------------------------------------------------------------------------------ tables
def test_tables_as_listed_keep_order_and_drop_duplicates():
    v54 = make_buckets("v54")
    assert v54 == V54 and len(v54) == 17  # all 16-px multiples already, no duplicates
    v765 = make_buckets("v765")
    # (1248, 832) and (832, 1248) are listed twice: kept once, at their first position.
    assert len(V765) == 20 and len(v765) == 18
    assert v765[:4] == ((1248, 832), (1024, 1024), (896, 1152), (960, 1088))
    assert v765.count((832, 1248)) == 1 and v765[-1] == (1184, 896)
    assert make_buckets("square") == SQUARE == ((1024, 1024),)
    # ~1024-px class: every bucket within 15 % of a megapixel.
    assert all(abs(w * h / 1024**2 - 1) < 0.15 for w, h in v54 + v765)


def test_scaling_rounds_half_up_to_the_multiple():
    assert make_buckets("v54", scale=2)[0] == (2496, 1664)  # the official doubling
    assert make_buckets("v54", scale=0.5)[:2] == ((624, 416), (512, 512))
    # 1248/16 = 78 -> 80 (78/16 = 4.875), 832/16 = 52 -> 48 (3.25); every side a multiple of 16, >= 16.
    tiny = make_buckets("v54", scale=1 / 16)
    assert tiny[0] == (80, 48) and tiny[1] == (64, 64)
    assert all(w % 16 == 0 and h % 16 == 0 and min(w, h) >= 16 for w, h in tiny)
    assert len(tiny) < len(V54)  # neighbouring pairs collapse at toy size; duplicates removed
    assert len(set(tiny)) == len(tiny)
    # Half-up, not half-to-even: 40 -> 48 (2.5 multiples), 24 -> 32 (1.5); tiny sides become one multiple.
    assert make_buckets([[40, 24]]) == ((48, 32),)
    assert make_buckets([[40, 3]]) == ((48, 16),)
    assert make_buckets([[100, 60]], multiple=32) == ((96, 64),)
    # Explicit pairs (JSON lists) that collide after rounding are kept once, in order.
    assert make_buckets([[32, 32], [64, 32], [33, 31]]) == ((32, 32), (64, 32))


# ------------------------------------------------------------------------------------------------ selection
def test_nearest_bucket_by_aspect_ratio():
    assert nearest_bucket(1920, 1080, V54) == (1376, 768)  # 16:9 -> 1.79 (1344x768 is 1.75)
    assert nearest_bucket(1080, 1920, V54) == (768, 1376)
    assert nearest_bucket(500, 500, V54) == (1024, 1024)
    assert nearest_bucket(3000, 1000, V54) == (1440, 736)  # beyond the widest: the widest
    assert nearest_bucket(7, 5, V54) == (1216, 864)  # 1.4: 1.407 beats 1.5 (1248x832) and 1.32 (1184x896)
    # Only the ratio counts, not the size.
    assert nearest_bucket(16, 9, V54) == nearest_bucket(1600, 900, V54)


def test_ties_go_to_the_earlier_bucket():
    # 1.5 is exactly half way between 2 and 1.
    assert nearest_bucket(48, 32, [(64, 32), (32, 32)]) == (64, 32)
    assert nearest_bucket(48, 32, [(32, 32), (64, 32)]) == (32, 32)
    assert bucket_index(48, 32, [(32, 32), (64, 32)]) == 0


def test_vectorised_indices_match_the_scalar_rule():
    buckets = make_buckets("v765", scale=1 / 16) + ((32, 32), (64, 32))
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 400, (200, 2), generator=g)
    sizes = torch.cat([sizes, torch.tensor([[48, 32], [32, 48], [1, 1], [4000, 3]])])
    got = bucket_indices(sizes, buckets)
    want = [bucket_index(int(w), int(h), buckets) for w, h in sizes]
    assert got.dtype == torch.long and got.tolist() == want
    assert bucket_indices(torch.zeros(0, 2, dtype=torch.long), buckets).shape == (0,)


# ------------------------------------------------------------------------------------------------ fitting
def _stripes(size: tuple[int, int], band: int, axis: str) -> Image.Image:
    """Red image with a green band of ``band`` px on both ends of ``axis`` ("x": left/right, "y": top/bottom)."""
    im = Image.new("RGB", size, (255, 0, 0))
    w, h = size
    for box in (((0, 0, band, h), (w - band, 0, w, h)) if axis == "x" else ((0, 0, w, band), (0, h - band, w, h))):
        im.paste((0, 255, 0), box)
    return im


def _colours(im: Image.Image) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in c) for c in np.unique(np.asarray(im).reshape(-1, 3), axis=0)}


def test_fit_to_bucket_covers_and_centre_crops():
    # 100x100 into a 2:1 bucket: scaled to 64x64 and cropped to rows 16..48, so the top/bottom 20 % bands go.
    out = fit_to_bucket(_stripes((100, 100), 20, "y"), (64, 32))
    assert out.size == (64, 32) and out.mode == "RGB"
    assert _colours(out) == {(255, 0, 0)}
    # A wide image into a square bucket loses its sides, not its top and bottom.
    out = fit_to_bucket(_stripes((200, 100), 40, "x"), (32, 32))
    assert out.size == (32, 32) and _colours(out) == {(255, 0, 0)}
    # Upscaling works the same way; the kept side spans the whole bucket.
    out = fit_to_bucket(_stripes((20, 40), 4, "x"), (64, 32))
    assert out.size == (64, 32)
    assert out.getpixel((0, 16)) == (0, 255, 0) and out.getpixel((32, 16)) == (255, 0, 0)
    # Already the bucket's size: returned as is.
    im = Image.new("RGB", (64, 32), (1, 2, 3))
    assert fit_to_bucket(im, (64, 32)) is im


def test_every_selected_bucket_keeps_most_of_the_image():
    buckets = make_buckets("v54", scale=1 / 16)
    for w, h in [(640, 480), (480, 640), (1920, 1080), (300, 301), (1800, 900)]:
        bw, bh = nearest_bucket(w, h, buckets)
        kept = min(w / h, bw / bh) / max(w / h, bw / bh)  # fraction of the image area the crop keeps
        assert kept > 0.75, (w, h, bw, bh)
        assert fit_to_bucket(Image.new("RGB", (w, h)), (bw, bh)).size == (bw, bh)


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("table, match", [
    ("v99", r"unknown bucket table 'v99'; known: v54, v765, square"),
    ([], "non-empty list of positive"),
    ([[32, 32, 32]], "positive \\[width, height\\] pairs"),
    ([[32, 0]], "positive \\[width, height\\] pairs"),
    ([[32, -16]], "positive"),
])
def test_bad_tables_raise(table, match):
    with pytest.raises(ValueError, match=match):
        make_buckets(table)


@pytest.mark.parametrize("scale, multiple", [(0, 16), (-1, 16), (math.nan, 16), (1.0, 0), (1.0, -8)])
def test_bad_scale_or_multiple_raise(scale, multiple):
    with pytest.raises(ValueError, match="scale must be > 0 and multiple >= 1"):
        make_buckets("v54", scale=scale, multiple=multiple)


def test_bad_sizes_and_empty_tables_raise():
    with pytest.raises(ValueError, match="image size must be positive, got 0x10"):
        nearest_bucket(0, 10, V54)
    with pytest.raises(ValueError, match="positive"):
        bucket_index(10, -1, V54)
    with pytest.raises(ValueError, match="no buckets"):
        nearest_bucket(10, 10, [])
    with pytest.raises(ValueError, match=r"sizes must be \[N, 2\]"):
        bucket_indices(torch.ones(3, 3), V54)


def test_check_multiple_names_the_bad_buckets():
    check_multiple(make_buckets("v54"), 32)  # the official table is 32-px aligned
    with pytest.raises(ValueError, match=r"\(624, 416\).*not multiples of 32 px"):
        check_multiple(make_buckets("v54", scale=0.5), 32)
