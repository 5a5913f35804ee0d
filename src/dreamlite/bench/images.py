"""Reading and writing benchmark images - one policy for both benchmarks.

Scorers accept images of any size and format PIL reads; they are converted to RGB. An image is a failed
sample (never an error that stops the run) when it is missing, unreadable, not square (sides differ by more
than 2%: a packed ``(target | source)`` canvas returned by mistake is the usual cause) or smaller than the
detector's minimum side. Larger images are downsampled by the detector itself (see ``shapes.detect``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dreamlite.shapes.detect import MIN_IMAGE_SIDE

MAX_ASPECT_DEVIATION = 0.02


@dataclass(frozen=True)
class LoadedImage:
    pixels: np.ndarray | None  # uint8 [H, W, 3], None when unusable
    problem: str | None  # why the image is unusable


def size_problem(width: int, height: int) -> str | None:
    if min(width, height) < MIN_IMAGE_SIDE:
        return f"wrongly sized image {width}x{height}: the detector needs at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
    if abs(width - height) > MAX_ASPECT_DEVIATION * max(width, height):
        return f"wrongly sized image {width}x{height}: benchmark images are square"
    return None


def to_pixels(image: Image.Image | np.ndarray) -> LoadedImage:
    """An in-memory image (PIL or uint8 array) checked by the same rules as a file."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    else:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
            return LoadedImage(None, f"not an RGB uint8 image: shape {arr.shape}, dtype {arr.dtype}")
        arr = arr[:, :, :3]
    problem = size_problem(arr.shape[1], arr.shape[0])
    return LoadedImage(None if problem else np.ascontiguousarray(arr), problem)


def load(path: Path) -> LoadedImage:
    """The image at ``path``, or the reason it cannot be scored."""
    if not path.is_file():
        return LoadedImage(None, f"missing image {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return to_pixels(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return LoadedImage(None, f"unreadable image {path}: {e}")


def save_png(image: Image.Image | np.ndarray, path: Path) -> None:
    """Write a PNG atomically (temp name, then rename): a crash never leaves a half-written image."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
