"""MobileUNet: the DreamLite network (arXiv 2603.28713, Sec. 3.1), and nothing else.

A pruned mobile U-Net that sees an in-context canvas ``[target | condition]`` (packed along the width,
see ``dreamlite.incontext``) and predicts a flow-matching velocity for the whole canvas. Every
architectural switch of the official 0.39B network is a config field:

* ``separable_conv`` - ResNet convs are depthwise 3x3 -> pointwise 1x1 with a x2 channel expansion
  between conv1 and conv2, and no conv biases (the paper's "depthwise separable" pruning).
* ``down_attention`` / ``up_attention`` / ``mid_attention`` - per level, ``"none"`` (no transformer),
  ``"cross"`` (transformer blocks without self-attention - the paper removes self-attention at the
  high-resolution levels) or ``"self+cross"``. In ``"cross"`` blocks the first LayerNorm still runs and
  *replaces* the residual stream, exactly as the official release does (checkpoints depend on it).
* ``num_kv_heads`` - multi-query attention: one 64-wide K/V head shared by all query heads.
* ``qk_norm`` - per-head RMSNorm on q and k.
* ``ff_mult`` - GEGLU feed-forward width multiplier.
* ``text_proj`` - Linear then RMSNorm on the text features (``"rms"``), Linear only, or none.
* ``size_embed_dim`` - the (width, height) ``time_ids`` size conditioning, 0 to disable.
* ``pooled_text_embed`` - (ours, off for the paper's preset) a masked mean of the projected text added to
  the time embedding; it gives very small models a global summary of the prompt.
* ``position_embed`` - (ours, 0 = off as in the paper's network) F Fourier frequencies of each token's place in
  its half of the canvas, projected (zero-initialised, so switching it on keeps a trained network's function) and
  added to the tokens of every transformer. Without it a query learns where it is only from conv zero padding;
  "the first noun goes left" needs the query to know left from right. On the Shapes model it did not move
  position's side (BENCHMARKS.md, "v8"): there the starting noise, not the query, decides the side.
* ``text_position_embed`` - (ours, 0 = off as in the paper's network) a learned embedding of each text token's
  index (the first N; later tokens share the last), added to the projected text (zero-initialised, so switching it
  on keeps a trained network's function). Cross-attention reads the text as a *set*: without it, the U-Net sees
  "a star left of a square" and "a square left of a star" as the same tokens, told apart only by the encoder's
  context in the two noun states (a small text encoder puts little there: BENCHMARKS.md, "Mirror pairs").

Module and parameter names follow the official checkpoint, so official weights and PEFT LoRA adapters
(``to_q``, ``to_k``, ``to_v``, ``to_out.0``) load without renaming.

Shapes: B batch, C channels, H x W latent canvas (W = 2 x target width), N = H*W tokens, L text tokens,
D text width, h heads, d head width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

ATTENTION_MODES = ("none", "cross", "self+cross")


def sinusoid(values: Tensor, dim: int) -> Tensor:
    """[B] -> [B, dim] float32; cosine half first, frequencies exp(-ln(1e4) * i / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    angles = values.float()[:, None] * freqs[None, :]  # [B, half]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)  # [B, dim]


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * g over the last axis, mean taken in float32 (as the official net)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


class EmbeddingMLP(nn.Module):
    """Linear -> SiLU -> Linear (keys ``linear_1``, ``linear_2``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class SeparableConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, no biases."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class ResnetBlock(nn.Module):
    """GN-SiLU-conv1 (+ time shift) GN-SiLU-conv2, plus a (1x1 when widths differ) shortcut."""

    def __init__(self, c_in: int, c_out: int, time_dim: int, groups: int, eps: float, separable: bool):
        super().__init__()
        c_mid = 2 * c_out if separable else c_out  # the official separable block widens x2 inside
        self.norm1 = nn.GroupNorm(groups, c_in, eps=eps)
        self.conv1 = SeparableConv(c_in, c_mid) if separable else nn.Conv2d(c_in, c_mid, 3, padding=1)
        self.time_emb_proj = nn.Linear(time_dim, c_mid)
        self.norm2 = nn.GroupNorm(groups, c_mid, eps=eps)
        self.conv2 = SeparableConv(c_mid, c_out) if separable else nn.Conv2d(c_mid, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [B, C_mid, H, W]
        h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))  # [B, C_out, H, W]
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Attention(nn.Module):
    """Multi-query attention with per-head RMS q/k norm; context=None means self-attention.

    With one K/V head the H query heads are folded into the query axis ([B, N*H, d]), so one SDPA call
    runs all heads against the shared K/V without expanding or transposing anything.
    """

    def __init__(self, dim: int, context_dim: int, heads: int, kv_heads: int, qk_norm: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        if heads % kv_heads:
            raise ValueError(f"{heads} query heads cannot share {kv_heads} K/V heads")
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, kv_heads * self.head_dim, bias=False)
        self.to_v = nn.Linear(context_dim, kv_heads * self.head_dim, bias=False)
        self.norm_q = RMSNorm(self.head_dim) if qk_norm else None
        self.norm_k = RMSNorm(self.head_dim) if qk_norm else None
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        B, N, C = x.shape
        context = x if context is None else context
        L, h, g, d = context.shape[1], self.heads, self.kv_heads, self.head_dim
        q = self.to_q(x).view(B, N, h, d)  # [B, N, h, d]
        k = self.to_k(context).view(B, L, g, d)  # [B, L, g, d]
        v = self.to_v(context).view(B, L, g, d)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        if g == 1:
            q = q.view(B, 1, N * h, d)  # all query heads share the single K/V head
            k, v = k.view(B, 1, L, d), v.view(B, 1, L, d)
            mask = None if bias is None else bias.view(B, 1, 1, L)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, 1, N*h, d]
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, tokens, d]
            mask = None if bias is None else bias.view(B, 1, 1, L)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=g != h)
            out = out.transpose(1, 2)  # [B, N, h, d]
        return self.to_out[0](out.reshape(B, N, C))  # head-major merge -> [B, N, C]


class GEGLUFeedForward(nn.Module):
    """Linear(C -> 2*mult*C): first half value, second half gate; value * GELU(gate) -> Linear."""

    def __init__(self, dim: int, mult: int):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLUProj(dim, inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


class GEGLUProj(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class TransformerBlock(nn.Module):
    """Pre-LN block: [self-attn] -> cross-attn -> GEGLU FF, each residual."""

    def __init__(self, dim: int, context_dim: int, heads: int, kv_heads: int, qk_norm: bool,
                 ff_mult: int, self_attention: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, dim, heads, kv_heads, qk_norm) if self_attention else None
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads, kv_heads, qk_norm)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim, ff_mult)

    def forward(self, x: Tensor, text: Tensor, bias: Tensor | None) -> Tensor:
        if self.attn1 is not None:
            x = x + self.attn1(self.norm1(x))
        else:
            # Official "RemoveSelfAttn" blocks keep norm1 and let it replace the stream (no residual).
            x = self.norm1(x)
        x = x + self.attn2(self.norm2(x), text, bias)
        return x + self.ff(self.norm3(x))


def canvas_coordinates(H: int, W: int, freqs: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fourier features of each token's place on the packed canvas, [H*W, 4*freqs + 1], row-major as the tokens.

    Coordinates are per half (u, v in [0, 1) across the target half and again across the condition half, so a target
    token and the source token it edits share them) plus one feature saying which half (+1 target, -1 condition).
    Frequencies pi * 2^k, k < freqs: cos(pi u) alone already orders left to right."""
    cols = (torch.arange(W, device=device, dtype=torch.float32) + 0.5) / W  # [W] in (0, 1) over the canvas
    u = (2 * cols) % 1.0  # [W] place within its half
    half = torch.where(cols < 0.5, 1.0, -1.0)  # [W]
    v = (torch.arange(H, device=device, dtype=torch.float32) + 0.5) / H  # [H]
    k = math.pi * 2.0 ** torch.arange(freqs, device=device, dtype=torch.float32)  # [F]
    fu = torch.cat([torch.sin(u[:, None] * k), torch.cos(u[:, None] * k)], 1)  # [W, 2F]
    fv = torch.cat([torch.sin(v[:, None] * k), torch.cos(v[:, None] * k)], 1)  # [H, 2F]
    feats = torch.cat([fv[:, None, :].expand(H, W, -1), fu[None].expand(H, W, -1),
                       half[None, :, None].expand(H, W, 1)], -1)  # [H, W, 4F + 1]
    return feats.reshape(H * W, -1).to(dtype)


class Transformer2D(nn.Module):
    """GroupNorm -> tokens -> Linear (+ place embedding) -> blocks -> Linear -> map, residual around the whole."""

    def __init__(self, dim: int, depth: int, heads: int, groups: int, context_dim: int, kv_heads: int,
                 qk_norm: bool, ff_mult: int, self_attention: bool, position_freqs: int = 0):
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim)
        self.position_freqs = position_freqs
        if position_freqs:
            self.pos_proj = nn.Linear(4 * position_freqs + 1, dim)
            nn.init.zeros_(self.pos_proj.weight)  # starts as no embedding: a trained network keeps its function
            nn.init.zeros_(self.pos_proj.bias)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(dim, context_dim, heads, kv_heads, qk_norm, ff_mult, self_attention)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, text: Tensor, bias: Tensor | None) -> Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).permute(0, 2, 3, 1).reshape(B, H * W, C)  # [B, N, C], row-major tokens
        h = self.proj_in(h)
        if self.position_freqs:
            h = h + self.pos_proj(canvas_coordinates(H, W, self.position_freqs, h.device, h.dtype))  # [B, N, C]
        for block in self.transformer_blocks:
            h = block(h, text, bias)
        h = self.proj_out(h).view(B, H, W, C).permute(0, 3, 1, 2)  # [B, C, H, W]
        return h + x


class Downsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)  # [B, C, ceil(H/2), ceil(W/2)]


class Upsample(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        # Nearest to the next skip's size: x2 when sides divide evenly, exact fit when they do not.
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class Level(nn.Module):
    """One resolution level: (resnet[, transformer]) pairs, then an optional resampler."""

    def __init__(self, c_ins: list[int], c_out: int, attention: str, depth: int, heads: int, resample: str,
                 net: "MobileUNet"):
        super().__init__()
        cfg = net.config
        self.resnets = nn.ModuleList(
            ResnetBlock(c, c_out, net.time_dim, cfg.norm_num_groups, cfg.norm_eps, cfg.separable_conv)
            for c in c_ins
        )
        self.attentions = nn.ModuleList(
            net.make_transformer(c_out, depth, heads, attention == "self+cross") for _ in c_ins
        ) if attention != "none" else nn.ModuleList()
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(c_out)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(c_out)])

    def pairs(self):
        attentions = list(self.attentions) or [None] * len(self.resnets)
        return zip(self.resnets, attentions)


class MidBlock(nn.Module):
    """resnet -> transformer -> resnet at the lowest resolution."""

    def __init__(self, dim: int, attention: str, depth: int, heads: int, net: "MobileUNet"):
        super().__init__()
        cfg = net.config
        self.resnets = nn.ModuleList(
            ResnetBlock(dim, dim, net.time_dim, cfg.norm_num_groups, cfg.norm_eps, cfg.separable_conv)
            for _ in range(2)
        )
        self.attentions = nn.ModuleList(
            [net.make_transformer(dim, depth, heads, attention == "self+cross")] if attention != "none" else []
        )

    def forward(self, x: Tensor, emb: Tensor, text: Tensor, bias: Tensor | None) -> Tensor:
        x = self.resnets[0](x, emb)
        for attn in self.attentions:
            x = attn(x, text, bias)
        return self.resnets[1](x, emb)


class MobileUNet(ModelMixin, ConfigMixin):
    """The DreamLite U-Net. ``forward(sample, timestep, encoder_hidden_states, mask, time_ids)``.

    ``sample`` is the packed canvas [B, C_in, H, 2w]; ``timestep`` is sigma * 1000 (see
    ``dreamlite.flow``); ``time_ids`` is (width, height) of the target image in pixels. Returns the
    velocity for the whole canvas; callers keep the target half with ``dreamlite.incontext.unpack``.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        block_out_channels: tuple[int, ...] = (256, 512, 896),
        layers_per_block: int = 2,
        down_attention: tuple[str, ...] = ("cross", "cross", "self+cross"),
        up_attention: tuple[str, ...] = ("self+cross", "cross", "none"),
        mid_attention: str = "self+cross",
        num_attention_heads: tuple[int, ...] = (4, 8, 14),
        transformer_layers_per_block: tuple[int, ...] = (1, 2, 4),
        mid_transformer_layers: int = 4,
        num_kv_heads: int = 1,
        qk_norm: bool = True,
        ff_mult: int = 3,
        separable_conv: bool = True,
        text_embed_dim: int = 2048,
        cross_attention_dim: int = 2304,
        text_proj: str = "rms",
        time_embed_dim: int = 1024,
        size_embed_dim: int = 256,
        pooled_text_embed: bool = False,
        position_embed: int = 0,
        text_position_embed: int = 0,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self._check_config()
        C = list(block_out_channels)
        n = len(C)
        self.time_dim = time_embed_dim
        self.gradient_checkpointing = False

        self.conv_in = nn.Conv2d(in_channels, C[0], 3, padding=1)
        self.time_embedding = EmbeddingMLP(C[0], time_embed_dim)
        self.add_embedding = EmbeddingMLP(2 * size_embed_dim, time_embed_dim) if size_embed_dim else None
        if text_proj == "rms":
            self.encoder_hid_proj = nn.Sequential(nn.Linear(text_embed_dim, cross_attention_dim),
                                                  RMSNorm(cross_attention_dim))
        elif text_proj == "linear":
            self.encoder_hid_proj = nn.Linear(text_embed_dim, cross_attention_dim)
        else:
            self.encoder_hid_proj = None
        self.pooled_text_proj = EmbeddingMLP(cross_attention_dim, time_embed_dim) if pooled_text_embed else None
        self.text_pos = nn.Embedding(text_position_embed, cross_attention_dim) if text_position_embed else None
        if self.text_pos is not None:
            nn.init.zeros_(self.text_pos.weight)  # starts as no embedding: a trained network keeps its function

        self.down_blocks = nn.ModuleList()
        c_prev = C[0]
        for i in range(n):
            c_ins = [c_prev] + [C[i]] * (layers_per_block - 1)
            self.down_blocks.append(Level(c_ins, C[i], down_attention[i], transformer_layers_per_block[i],
                                          num_attention_heads[i], "down" if i < n - 1 else "", self))
            c_prev = C[i]

        self.mid_block = MidBlock(C[-1], mid_attention, mid_transformer_layers, num_attention_heads[-1], self)

        # Up level i mirrors down level n-1-i and pops layers_per_block + 1 skips (see skip bookkeeping).
        skip_channels = [C[0]] + [c for i in range(n) for c in [C[i]] * layers_per_block + ([C[i]] if i < n - 1 else [])]
        self.up_blocks = nn.ModuleList()
        c_prev = C[-1]
        for i in range(n):
            level = n - 1 - i
            c_ins = []
            for _ in range(layers_per_block + 1):
                c_ins.append(c_prev + skip_channels.pop())
                c_prev = C[level]
            self.up_blocks.append(Level(c_ins, C[level], up_attention[i], transformer_layers_per_block[level],
                                        num_attention_heads[level], "up" if i < n - 1 else "", self))

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, C[0], eps=norm_eps)
        self.conv_out = nn.Conv2d(C[0], out_channels, 3, padding=1)

    def _check_config(self) -> None:
        cfg = self.config
        n = len(cfg.block_out_channels)
        for name in ("down_attention", "up_attention", "num_attention_heads", "transformer_layers_per_block"):
            if len(getattr(cfg, name)) != n:
                raise ValueError(f"config.{name} has {len(getattr(cfg, name))} entries, "
                                 f"block_out_channels has {n}")
        for name in ("down_attention", "up_attention"):
            for mode in getattr(cfg, name):
                if mode not in ATTENTION_MODES:
                    raise ValueError(f"config.{name}: unknown mode {mode!r}; expected one of {ATTENTION_MODES}")
        if cfg.mid_attention not in ATTENTION_MODES:
            raise ValueError(f"config.mid_attention: unknown mode {cfg.mid_attention!r}")
        if cfg.text_proj not in ("rms", "linear", "none"):
            raise ValueError(f"config.text_proj must be 'rms', 'linear' or 'none', got {cfg.text_proj!r}")
        if cfg.text_proj == "none" and cfg.text_embed_dim != cfg.cross_attention_dim:
            raise ValueError("text_proj='none' needs text_embed_dim == cross_attention_dim")
        if not isinstance(cfg.position_embed, int) or cfg.position_embed < 0:
            raise ValueError(f"config.position_embed must be a number of frequencies >= 0, got {cfg.position_embed!r}")
        if not isinstance(cfg.text_position_embed, int) or cfg.text_position_embed < 0:
            raise ValueError(f"config.text_position_embed must be a number of token indices >= 0, got "
                             f"{cfg.text_position_embed!r}")
        for c in cfg.block_out_channels:
            if c % cfg.norm_num_groups:
                raise ValueError(f"block width {c} is not divisible by norm_num_groups={cfg.norm_num_groups}")

    def make_transformer(self, dim: int, depth: int, heads: int, self_attention: bool) -> Transformer2D:
        cfg = self.config
        return Transformer2D(dim, depth, heads, cfg.norm_num_groups, cfg.cross_attention_dim, cfg.num_kv_heads,
                             cfg.qk_norm, cfg.ff_mult, self_attention, cfg.position_embed)

    def _check_inputs(self, sample: Tensor, text: Tensor, mask: Tensor | None, time_ids: Tensor | None) -> None:
        cfg = self.config
        if sample.ndim != 4 or sample.shape[1] != cfg.in_channels:
            raise ValueError(f"sample must be [B, {cfg.in_channels}, H, W], got {tuple(sample.shape)}")
        B = sample.shape[0]
        if text.ndim != 3 or text.shape[0] != B or text.shape[2] != cfg.text_embed_dim:
            raise ValueError(f"encoder_hidden_states must be [B={B}, L, {cfg.text_embed_dim}], "
                             f"got {tuple(text.shape)}")
        if mask is not None and tuple(mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"encoder_attention_mask must be [B, L] = {tuple(text.shape[:2])}, "
                             f"got {tuple(mask.shape)}")
        if cfg.size_embed_dim and (time_ids is None or tuple(time_ids.shape) != (B, 2)):
            got = None if time_ids is None else tuple(time_ids.shape)
            raise ValueError(f"time_ids must be [B={B}, 2] (width, height in pixels), got {got}")

    def embed(self, timestep: Tensor, time_ids: Tensor | None, text: Tensor, mask: Tensor | None,
              batch: int, dtype: torch.dtype) -> Tensor:
        """The vector every resnet is shifted by: time MLP + size MLP (+ pooled text), [B, time_dim]."""
        t = torch.as_tensor(timestep, device=text.device).reshape(-1).expand(batch)
        emb = self.time_embedding(sinusoid(t, self.config.block_out_channels[0]).to(dtype))  # [B, T]
        if self.add_embedding is not None:
            ids = sinusoid(time_ids.reshape(-1), self.config.size_embed_dim).reshape(batch, -1)  # [B, 2*S]
            emb = emb + self.add_embedding(ids.to(dtype))
        if self.pooled_text_proj is not None:
            w = torch.ones_like(text[..., 0]) if mask is None else mask.to(text.dtype)  # [B, L]
            pooled = (text * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1)  # [B, D]
            emb = emb + self.pooled_text_proj(pooled)
        return emb

    def forward(self, sample: Tensor, timestep: Tensor | float, encoder_hidden_states: Tensor,
                encoder_attention_mask: Tensor | None = None, time_ids: Tensor | None = None) -> Tensor:
        self._check_inputs(sample, encoder_hidden_states, encoder_attention_mask, time_ids)
        B, dtype = sample.shape[0], sample.dtype
        text = encoder_hidden_states
        if self.encoder_hid_proj is not None:
            text = self.encoder_hid_proj(text)  # [B, L, D_cross]
        if self.text_pos is not None:
            index = torch.arange(text.shape[1], device=text.device).clamp(max=self.text_pos.num_embeddings - 1)
            text = text + self.text_pos(index).to(text.dtype)  # [B, L, D_cross] + [L, D_cross]
        bias = None
        if encoder_attention_mask is not None:
            bias = (1.0 - encoder_attention_mask.to(dtype)) * -10000.0  # [B, L]; the official additive mask
        emb = self.embed(timestep, time_ids, text, encoder_attention_mask, B, dtype)  # [B, T]

        x = self.conv_in(sample)  # [B, C0, H, W]
        skips = [x]
        for level in self.down_blocks:
            for resnet, attn in level.pairs():
                x = self._run(resnet, x, emb)
                if attn is not None:
                    x = self._run(attn, x, text, bias)
                skips.append(x)
            if hasattr(level, "downsamplers"):
                x = level.downsamplers[0](x)
                skips.append(x)

        x = self._run(self.mid_block, x, emb, text, bias)  # [B, C_last, H/4, W/4] for 3 levels

        for level in self.up_blocks:
            for resnet, attn in level.pairs():
                x = torch.cat([x, skips.pop()], dim=1)  # [current | skip] on channels
                x = self._run(resnet, x, emb)
                if attn is not None:
                    x = self._run(attn, x, text, bias)
            if hasattr(level, "upsamplers"):
                x = level.upsamplers[0](x, skips[-1].shape[-2:])

        return self.conv_out(F.silu(self.conv_norm_out(x)))  # [B, C_out, H, W]

    def _run(self, module: nn.Module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
        return module(*args)


def from_preset(name: str, **overrides) -> MobileUNet:
    """A randomly initialised network of a named preset (see ``dreamlite.presets``)."""
    from dreamlite.presets import preset_config

    return MobileUNet(**preset_config(name, **overrides))


MobileUNet.from_preset = staticmethod(from_preset)
