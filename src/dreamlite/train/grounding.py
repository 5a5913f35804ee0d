"""Grounded cross-attention: each clause's words attend to where its objects are (TokenCompose, Wang et al. 2024).

The failure this targets (BENCHMARKS.md, "Grounded attention"): asked for "a circle and a square", the shipped base
draws two objects that are each a blend of both nouns (two rounded squares; two concave "squares" for "a heart and a
square"), which the detector reads as one shape twice, and its cross-attention is barely localised (0.10-0.15 of a
clause's attention on its own objects at the top level). TokenCompose fine-tunes a text-to-image U-Net with, beside
the denoising loss, a loss on its cross-attention maps: the attention mass of each noun token should fall inside that
noun's segmentation mask. The Shapes world knows every object's place, so the masks here are exact (box coverage at
the map's resolution). Measured: the loss localises attention (0.70-0.80 on the grounded levels in 500 steps) but
the drawing does not follow (GenEval not better at four images per prompt; editing worse), so it is off by default.

For each t2i sample, a *group* is one include clause of its prompt ("a red circle", "three stars"): the prompt's
tokens for its words (the colour, when the clause names one, and the noun) and the union mask of the scene objects
that satisfy it. Per cross-attention map A [B, N_target, L] (heads averaged, the target half of the canvas only),
a group's map is a_g = sum of A over its tokens, and its loss (1 - sum(a_g * mask) / sum(a_g))^2 (TokenCompose's
L_token), averaged over groups and maps.

The probe recomputes the attention probabilities from each ``attn2`` module's own projections on the inputs it was
called with (forward hooks), so the network file stays a network and the loss sees the exact maps of the forward.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamlite.shapes.scene import Scene, ShapeObject
from dreamlite.shapes.spec import PromptSpec

MAX_GROUPS = 2  # GenEval's tags name at most two clauses
MAX_TOKENS = 4  # colour + noun, each possibly two word pieces
MASK_RES = 16  # stored mask side (pooled to each map's size)


# ------------------------------------------------------------------------------------------ groups and masks
@dataclass(frozen=True)
class Group:
    """One include clause of a prompt: character spans of its words in the prompt, and its objects."""

    spans: tuple[tuple[int, int], ...]
    objects: tuple[ShapeObject, ...]


def _matches(obj: ShapeObject, cls: str, color: str | None) -> bool:
    return obj.shape == cls and (color is None or obj.color == color)


def object_groups(prompt: str, metadata: dict, scene: Scene) -> list[Group]:
    """The groups of a t2i sample, or [] when a clause's words or objects cannot be told apart (a class named twice
    without colours, a word missing from the prompt): such samples carry no grounding rather than a wrong one."""
    spec = PromptSpec.from_dict({**metadata, "prompt": prompt})
    groups = []
    for clause in spec.include:
        noun = rf"{re.escape(clause.cls)}s?"  # "circle" or "circles"
        pattern = rf"\b({re.escape(clause.color)}) ({noun})\b" if clause.color else rf"\b({noun})\b"
        found = list(re.finditer(pattern, prompt))
        others = [c for c in spec.include if c is not clause and c.cls == clause.cls]
        if len(found) != 1 or (others and (clause.color is None or any(c.color in (None, clause.color)
                                                                        for c in others))):
            return []
        objects = tuple(o for o in scene.objects if _matches(o, clause.cls, clause.color))
        if not objects:
            return []
        groups.append(Group(tuple(found[0].span(k) for k in range(1, found[0].re.groups + 1)), objects))
    return groups if len(groups) <= MAX_GROUPS else []


def coverage_mask(objects: Sequence[ShapeObject], res: int = MASK_RES) -> np.ndarray:
    """[res, res] float32: the fraction of each cell covered by the union of the objects' boxes (max over them)."""
    edges = np.arange(res + 1, dtype=np.float64) / res
    out = np.zeros((res, res), dtype=np.float64)
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        fx = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None) * res  # [res]
        fy = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None) * res
        out = np.maximum(out, fy[:, None] * fx[None, :])
    return out.astype(np.float32)


def token_indices(encoder, prompt: str, spans: Sequence[tuple[int, int]], task: str = "generate") -> list[int]:
    """Indices, in ``encoder.encode([prompt])``'s states, of the tokens that overlap the character ``spans`` of
    ``prompt``. Needs an encoder whose states are one per token of its tokenizer (MiniLM): the prompt is rendered
    with the encoder's task prefix and tokenised with character offsets."""
    tokenizer, fmt = getattr(encoder, "tokenizer", None), getattr(encoder, "format", None)
    if tokenizer is None or fmt is None or getattr(fmt, "family", None) != "minilm":
        raise ValueError("grounded attention needs a MiniLM text encoder (one state per tokenizer token); got "
                         f"{type(encoder).__name__}")
    text = fmt.render(task, prompt, conditional=True)
    start = text.rfind(prompt)
    if start < 0:
        raise ValueError(f"the encoder's rendering of {prompt!r} does not contain it: {text!r}")
    offsets = tokenizer(text, return_offsets_mapping=True, truncation=True,
                        max_length=encoder.max_length)["offset_mapping"]
    out = []
    for a, b in spans:
        a, b = a + start, b + start
        out += [i for i, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
    return out


def ground_tensors(encoder, prompts: Sequence[str], metadata: Sequence[dict], scenes: Sequence[Scene],
                   task: str = "generate") -> tuple[Tensor, Tensor]:
    """(tokens [N, G, T] long, -1 = none; masks [N, G, R, R] float16) for a t2i pool's samples."""
    n = len(prompts)
    tokens = torch.full((n, MAX_GROUPS, MAX_TOKENS), -1, dtype=torch.long)
    masks = torch.zeros(n, MAX_GROUPS, MASK_RES, MASK_RES, dtype=torch.float16)
    for i, (prompt, md, scene) in enumerate(zip(prompts, metadata, scenes)):
        for g, group in enumerate(object_groups(prompt, md, scene)):
            idx = token_indices(encoder, prompt, group.spans, task)[:MAX_TOKENS]
            tokens[i, g, :len(idx)] = torch.tensor(idx, dtype=torch.long)
            masks[i, g] = torch.from_numpy(coverage_mask(group.objects)).half()
    return tokens, masks


# ------------------------------------------------------------------------------------------ the maps and loss
def attention_probs(attn: nn.Module, x: Tensor, context: Tensor, bias: Tensor | None) -> Tensor:
    """The head-averaged attention probabilities [B, N, L] of ``dreamlite.models.unet.Attention`` on its inputs,
    from its own projections (the same maths as its SDPA call, written out)."""
    B, N, _ = x.shape
    L, h, g, d = context.shape[1], attn.heads, attn.kv_heads, attn.head_dim
    q = attn.to_q(x).view(B, N, h, d)  # [B, N, h, d]
    k = attn.to_k(context).view(B, L, g, d)  # [B, L, g, d]
    if attn.norm_q is not None:
        q, k = attn.norm_q(q), attn.norm_k(k)
    k = k.repeat_interleave(h // g, dim=2)  # [B, L, h, d]: query head i reads K/V head i // (h / g)
    scores = torch.einsum("bnhd,blhd->bhnl", q, k) / math.sqrt(d)  # [B, h, N, L]
    if bias is not None:
        scores = scores + bias.view(B, 1, 1, L).to(scores.dtype)
    return scores.softmax(-1).mean(1)  # [B, N, L]


class CrossAttentionProbe:
    """``with CrossAttentionProbe(unet) as probe: unet(...)`` records the inputs of every transformer block's
    cross-attention (``attn2``); ``probe.maps(canvas_hw)`` then gives each one's target-half probabilities."""

    def __init__(self, unet: nn.Module):
        self.modules = [m.attn2 for m in unet.modules() if hasattr(m, "attn2") and m.attn2 is not None]
        if not self.modules:
            raise ValueError(f"{type(unet).__name__} has no cross-attention blocks (attn2) to ground")
        self.calls: list[tuple[nn.Module, Tensor, Tensor, Tensor | None]] = []
        self.handles: list = []

    def __enter__(self) -> "CrossAttentionProbe":
        def hook(module, args, kwargs, output):
            x, context, bias = (list(args) + [kwargs.get("context"), kwargs.get("bias")])[:3]
            self.calls.append((module, x, context, bias))

        self.calls.clear()
        self.handles = [m.register_forward_hook(hook, with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def maps(self, canvas_hw: tuple[int, int], min_side: int = 1) -> list[Tensor]:
        """[B, H, W // 2, L] per recorded call whose target half is at least ``min_side`` tokens on a side: the
        probabilities of the target half's tokens (row-major H x W canvas at the call's level, found from its token
        count: each level halves the sides, rounding up). Calls below ``min_side`` are not recomputed at all."""
        h0, w0 = canvas_hw
        out = []
        for module, x, context, bias in self.calls:
            H, W = _level_shape(x.shape[1], h0, w0)
            if min(H, W // 2) < min_side:
                continue
            p = attention_probs(module, x, context, bias).view(x.shape[0], H, W, -1)  # [B, H, W, L]
            out.append(p[:, :, :W // 2])
        if not out:
            raise ValueError(f"no cross-attention map is at least {min_side} tokens on a side")
        return out


def _level_shape(n_tokens: int, h: int, w: int) -> tuple[int, int]:
    while h * w > n_tokens and h > 1:
        h, w = -(-h // 2), -(-w // 2)
    if h * w != n_tokens:
        raise ValueError(f"{n_tokens} attention tokens are no level of a {h}x{w} canvas")
    return h, w


def inside_share(p: Tensor, tokens: Tensor, masks: Tensor) -> Tensor:
    """[B, G]: the share of each group's attention mass (its tokens' probabilities summed, over the map ``p``
    [B, H, Wt, L]) that falls on its objects' cells (``masks`` [B, G, R, R] pooled to the map, relative to the
    group's best-covered cell: at coarse levels an object fills no cell, and attention all on its cells should
    still count as inside)."""
    B, H, Wt, L = p.shape
    m = F.adaptive_avg_pool2d(masks.float().to(p.device), (H, Wt))  # [B, G, H, Wt] coverage per cell
    m = m / m.flatten(2).amax(-1)[..., None, None].clamp_min(1e-8)
    tok = tokens.to(p.device)
    onehot = F.one_hot(tok.clamp(min=0), L).float() * (tok >= 0)[..., None]  # [B, G, T, L]
    a = torch.einsum("bhwl,bgl->bghw", p.float(), onehot.sum(2))  # [B, G, H, Wt]
    return (a * m).flatten(2).sum(-1) / a.flatten(2).sum(-1).clamp_min(1e-8)  # [B, G]


def grounded_groups(tokens: Tensor, masks: Tensor, rows: Tensor) -> Tensor:
    """[B, G] bool: the groups of ``rows`` that have tokens and a non-empty mask."""
    return (tokens >= 0).any(-1) & rows[:, None] & (masks.flatten(2).sum(-1) > 0)


def grounding_loss(maps: Sequence[Tensor], tokens: Tensor, masks: Tensor, rows: Tensor,
                   min_side: int = 1) -> Tensor | None:
    """TokenCompose's L_token, (1 - inside share)^2, over ``maps`` ([B, H, Wt, L] each) whose side is at least
    ``min_side``, for the ``rows`` [B] bool of groups with tokens (``tokens`` [B, G, T], -1 none; ``masks``
    [B, G, R, R]); None when no row has a group."""
    valid = grounded_groups(tokens, masks, rows)  # [B, G]
    if not valid.any():
        return None
    losses = [((1 - inside_share(p, tokens, masks)) ** 2)[valid.to(p.device)].mean()
              for p in maps if min(p.shape[1], p.shape[2]) >= min_side]
    if not losses:
        raise ValueError(f"no cross-attention map is at least {min_side} tokens on a side")
    return torch.stack(losses).mean()


__all__ = ["CrossAttentionProbe", "Group", "MASK_RES", "MAX_GROUPS", "MAX_TOKENS", "attention_probs",
           "coverage_mask", "ground_tensors", "grounded_groups", "grounding_loss", "inside_share", "object_groups",
           "token_indices"]
