"""Counting: parameters and FLOPs per U-Net step (measured by tracing on the meta device, no compute)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from dreamlite.models.unet import MobileUNet


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def unet_gflops(model: MobileUNet, height: int, width: int, text_len: int = 77, batch: int = 1) -> float:
    """GFLOPs (2 x multiply-adds of matmuls, convs and attention) of one forward at a packed canvas HxW."""
    cfg = model.config
    with torch.device("meta"):
        meta = model if next(model.parameters()).device.type == "meta" else MobileUNet.from_config(cfg)
        sample = torch.zeros(batch, cfg.in_channels, height, width)
        text = torch.zeros(batch, text_len, cfg.text_embed_dim)
        mask = torch.ones(batch, text_len)
        ids = torch.zeros(batch, 2)
        t = torch.zeros(batch)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(sample, t, text, mask, ids if cfg.size_embed_dim else None)
    return counter.get_total_flops() / 1e9
