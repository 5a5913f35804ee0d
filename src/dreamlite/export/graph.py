"""Delegate-friendly forms of the U-Net's layers, for ExecuTorch (XNNPACK) and Core ML.

``torch.export`` of the plain ``MobileUNet`` leaves many ops that XNNPACK cannot take (GroupNorm,
LayerNorm, RMSNorm's mean over the last axis of a 3-D tensor, the masked-SDPA decomposition's
``where``/``any``, GEGLU's ``split``). Every such op cuts the graph into another delegate; the tiny
preset lowered into hundreds of partitions and took ~7 minutes to lower. The forms below compute the
same numbers with ops XNNPACK does take:

* norms average a 4-D view over its two innermost axes (XNNPACK's global average pooling);
* single-K/V-head attention is explicit ``bmm -> scale -> +bias -> softmax -> bmm`` (the official
  Android export rewrites attention the same way);
* GEGLU halves are slices instead of ``chunk``.

``export_friendly(unet)`` returns a copy that shares the original's parameters (no weight copy) with
these layers swapped in; its state dict is identical, its outputs equal the original's to float
rounding (checked in ``tests/export``).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamlite.models.unet import Attention, GEGLUProj, MobileUNet, RMSNorm


def _mean_last(x4: Tensor) -> Tensor:
    """Mean over the two innermost axes of a 4-D tensor, kept (XNNPACK's global average pooling)."""
    return x4.mean(dim=(2, 3), keepdim=True)


def _normalize_rows(x: Tensor, eps: float, centre: bool) -> Tensor:
    """(x - mean) / sqrt(var + eps) (or x / rms when not centring) over the last axis, any rank."""
    shape = x.shape
    x4 = x.reshape(1, -1, shape[-1], 1)  # rows on axis 1, features on axis 2
    if centre:
        x4 = x4 - _mean_last(x4)
    x4 = x4 * torch.rsqrt(_mean_last(x4 * x4) + eps)
    return x4.reshape(shape)


class GroupNorm4D(nn.Module):
    """``nn.GroupNorm`` on [B, C, H, W] via a [B, G, C/G, H*W] view."""

    def __init__(self, src: nn.GroupNorm):
        super().__init__()
        self.num_groups, self.eps = src.num_groups, src.eps
        self.weight, self.bias = src.weight, src.bias  # shared, not copied

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        x4 = x.reshape(B, self.num_groups, C // self.num_groups, H * W)
        x4 = x4 - _mean_last(x4)
        x4 = x4 * torch.rsqrt(_mean_last(x4 * x4) + self.eps)
        y = x4.reshape(B, C, H, W)
        if self.weight is not None:
            y = y * self.weight.reshape(1, C, 1, 1) + self.bias.reshape(1, C, 1, 1)
        return y


class LayerNormRows(nn.Module):
    """``nn.LayerNorm`` over the last axis only (the U-Net uses no other kind)."""

    def __init__(self, src: nn.LayerNorm):
        super().__init__()
        if len(src.normalized_shape) != 1:
            raise ValueError(f"only last-axis LayerNorm is supported, got {src.normalized_shape}")
        self.eps = src.eps
        self.weight, self.bias = src.weight, src.bias

    def forward(self, x: Tensor) -> Tensor:
        y = _normalize_rows(x, self.eps, centre=True)
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


class RMSNormRows(nn.Module):
    """``dreamlite`` RMSNorm (float32 inside) over the last axis."""

    def __init__(self, src: RMSNorm):
        super().__init__()
        self.eps, self.weight = src.eps, src.weight

    def forward(self, x: Tensor) -> Tensor:
        return (_normalize_rows(x.float(), self.eps, centre=False) * self.weight.float()).to(x.dtype)


class MatmulAttention(Attention):
    """Attention whose single-K/V-head path is explicit matmuls; other layouts keep SDPA."""

    def forward(self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        if self.kv_heads != 1:
            return super().forward(x, context, bias)
        B, N, C = x.shape
        context = x if context is None else context
        L, h, d = context.shape[1], self.heads, self.head_dim
        q = self.to_q(x).reshape(B, N, h, d)
        k = self.to_k(context).reshape(B, L, 1, d)
        v = self.to_v(context).reshape(B, L, d)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        q = q.reshape(B, N * h, d)  # all query heads share the one K/V head, as in MobileUNet
        scores = torch.bmm(q, k.reshape(B, L, d).transpose(1, 2)) * (1.0 / math.sqrt(d))  # [B, N*h, L]
        if bias is not None:
            scores = scores + bias.reshape(B, 1, L)
        out = torch.bmm(torch.softmax(scores, dim=-1), v)  # [B, N*h, d]
        return self.to_out[0](out.reshape(B, N, C))


class SliceGEGLUProj(GEGLUProj):
    """GEGLU projection with slices instead of ``chunk`` (a ``split`` XNNPACK does not take)."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x)
        inner = h.shape[-1] // 2
        return h[..., :inner] * F.gelu(h[..., inner:])


def _swap(parent: nn.Module, name: str, child: nn.Module) -> None:
    if isinstance(child, nn.GroupNorm):
        setattr(parent, name, GroupNorm4D(child))
    elif isinstance(child, nn.LayerNorm):
        setattr(parent, name, LayerNormRows(child))
    elif isinstance(child, RMSNorm):
        setattr(parent, name, RMSNormRows(child))
    elif type(child) is Attention:
        child.__class__ = MatmulAttention  # same parameters and attributes; only forward differs
    elif type(child) is GEGLUProj:
        child.__class__ = SliceGEGLUProj


def export_friendly(unet: MobileUNet) -> MobileUNet:
    """A copy of ``unet`` (sharing its parameters) with delegate-friendly layers; eval mode."""
    memo = {id(t): t for t in [*unet.parameters(), *unet.buffers()]}  # share tensors, copy structure
    model = copy.deepcopy(unet, memo)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            _swap(parent, name, child)
    return model.eval()
