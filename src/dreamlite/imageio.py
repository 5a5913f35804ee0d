"""Image input/output with clear errors: loading (any mode, bomb-safe), conversion, atomic saving."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

MAX_PIXELS = 64 * 1024 * 1024  # refuse larger images before decoding them (decompression bombs)


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the problem."""


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB. Alpha is composited on white; palette/grayscale are converted."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if not path.is_file():
        raise ImageError(f"not a file: {path}")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(f"{path}: image claims {w}x{h} pixels, more than the {MAX_PIXELS:,}-pixel limit "
                                 "(possible decompression bomb)")
            img.load()
            return to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: refused as a decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path} is not a readable image: {e}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels become white (documented behaviour)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def pil_to_tensor(images: list[Image.Image], width: int, height: int) -> Tensor:
    """PIL images -> [B, 3, H, W] in [-1, 1], resized with LANCZOS (as the official pipeline) when needed."""
    arrs = []
    for img in images:
        img = to_rgb(img)
        if img.size != (width, height):
            img = img.resize((width, height), Image.LANCZOS)
        arrs.append(np.asarray(img, dtype=np.uint8))
    return uint8_to_tensor(np.stack(arrs))


def uint8_to_tensor(images: np.ndarray) -> Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ImageError(f"expected uint8 images [B, H, W, 3], got shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_uint8(x: Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] (clamped, rounded)."""
    return (x.float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (0..255) of the same shape; inf when they are identical."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def save_image(img: Image.Image, path: str | Path) -> Path:
    """Write atomically: a temp file in the same folder, then rename; never a half-written image."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        raise ImageError(f"unsupported output format {path.suffix!r} for {path}; use .png, .jpg, .webp or .bmp")
    if not path.parent.exists():
        raise ImageError(f"output folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        img.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
