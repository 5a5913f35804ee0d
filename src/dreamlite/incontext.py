"""In-context packing: the one definition of DreamLite's canvas layout (paper Sec. 3.2).

Generation and editing share one input: the latent being made sits on the left, a condition on the
right, concatenated along the width - ``(target | blank)`` to generate, ``(target | source)`` to edit.
Training, sampling, distillation, RL and export all build their canvas here.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pack(target: Tensor, cond: Tensor | None = None) -> Tensor:
    """[B, C, h, w] (+ [B, C, h, w] or None) -> [B, C, h, 2w]; ``None`` means a blank (zero) condition."""
    if target.ndim != 4:
        raise ValueError(f"pack: target must be a latent [B, C, h, w], got shape {tuple(target.shape)}")
    if cond is None:
        cond = torch.zeros_like(target)
    elif tuple(cond.shape) != tuple(target.shape):
        raise ValueError(f"pack: condition shape {tuple(cond.shape)} differs from target shape "
                         f"{tuple(target.shape)}; both halves of the canvas must match")
    return torch.cat([target, cond.to(target.dtype)], dim=-1)  # [B, C, h, 2w]


def unpack(canvas: Tensor) -> Tensor:
    """[B, C, h, 2w] -> the target (left) half [B, C, h, w]."""
    if canvas.ndim != 4:
        raise ValueError(f"unpack: canvas must be [B, C, h, 2w], got shape {tuple(canvas.shape)}")
    if canvas.shape[-1] % 2:
        raise ValueError(f"unpack: canvas width {canvas.shape[-1]} is odd; a packed canvas is twice the "
                         "target width")
    return canvas[..., : canvas.shape[-1] // 2]


def condition_half(canvas: Tensor) -> Tensor:
    """[B, C, h, 2w] -> the condition (right) half [B, C, h, w]."""
    unpack(canvas)  # validates
    return canvas[..., canvas.shape[-1] // 2 :]
