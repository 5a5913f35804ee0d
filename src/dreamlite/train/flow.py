"""The flow-matching training objective (rectified flow, velocity target; conventions in ``dreamlite.flow``), and the
one optimiser step that the post-training loops (RL, distillation, DMD) share."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamlite.flow import TIMESTEP_SCALE, interpolate, velocity_target
from dreamlite.incontext import pack, unpack


def predict_velocity(unet, x_t: Tensor, cond: Tensor, text: Tensor, mask: Tensor, time_ids: Tensor,
                     t: Tensor) -> Tensor:
    """The network's velocity on the target half of the packed canvas (x_t, cond): [B, C, h, w]."""
    return unpack(unet(pack(x_t, cond), t * TIMESTEP_SCALE, text, mask, time_ids))  # [B, C, h, w]


def flow_matching_loss(unet, x0: Tensor, cond: Tensor, text: Tensor, mask: Tensor, time_ids: Tensor,
                       t: Tensor, noise: Tensor, reduce: bool = True, target: Tensor | None = None) -> Tensor:
    """MSE between the predicted and true velocity on the *target half* of the canvas only.

    x0, cond, noise: [B, C, h, w] (cond is zeros for generation samples - the blank right half);
    t: [B] in (0, 1). The condition half is never noised and carries no loss (paper Sec. 3.2).
    ``target`` [B, C, h, w]: a velocity to regress onto instead of the data's ``noise - x0`` (anchored rows).
    """
    x_t = interpolate(x0, noise, t)  # [B, C, h, w]
    v_pred = predict_velocity(unet, x_t, cond, text, mask, time_ids, t).float()
    target = velocity_target(x0, noise) if target is None else target
    err = F.mse_loss(v_pred, target.float(), reduction="none").mean(dim=(1, 2, 3))  # [B]
    return err.mean() if reduce else err


def drop_conditions(text: Tensor, mask: Tensor, cond: Tensor, is_edit: Tensor, uncond_text: Tensor,
                    uncond_mask: Tensor, p_text: float, p_image: float, generator: torch.Generator,
                    keep: Tensor | None = None):
    """Condition dropout for classifier-free guidance.

    Generation samples: text -> negative prompt with prob p_text. Edit samples: with prob p_text the text
    is dropped (the (uncond, source) branch of 3-way guidance); with prob p_image the text *and* the source are
    dropped (the (uncond, blank) branch). ``uncond_text`` is [1, L0, D], broadcast into padded slots.
    ``keep`` [B] bool: samples never dropped (mirror pairs: their target is defined by their text).
    Returns (text, mask, cond, dropped): ``dropped`` [B] bool marks the samples whose text was dropped.
    """
    B, L = mask.shape
    u = torch.rand(B, generator=generator)
    drop_both = is_edit & (u < p_image)
    drop_text = torch.where(is_edit, u < p_image + p_text, u < p_text)  # includes drop_both for edits
    if keep is not None:
        drop_both, drop_text = drop_both & ~keep, drop_text & ~keep
    if drop_text.any():
        L0 = uncond_text.shape[1]
        if L0 > L:
            text = F.pad(text, (0, 0, 0, L0 - L))
            mask = F.pad(mask, (0, L0 - L))
            L = L0
        text, mask = text.clone(), mask.clone()
        text[drop_text] = 0
        mask[drop_text] = 0
        text[drop_text, :L0] = uncond_text[0].to(text.dtype)
        mask[drop_text, :L0] = uncond_mask[0].to(mask.dtype)
    if drop_both.any():
        cond = cond.clone()
        cond[drop_both] = 0
    return text, mask, cond, drop_text


def twin_contrast_loss(err: Tensor, err_twin: Tensor, scale: float, err_uncond: Tensor | None = None) -> Tensor:
    """Cross-entropy of a diffusion classifier choosing between a prompt and its twin (ours).

    ``err`` / ``err_twin``: [n] flow-matching errors of the same (x0, noise, t) under the prompt the image was
    rendered for and under its role-swapped twin (``dreamlite.shapes.language.role_swap``: shapes trade sides,
    or colours trade shapes). With logits -scale * err / e, e the pair's detached mean error (so ``scale`` reads
    as "one nat per 1/scale relative gap"), the loss is softplus(scale * (err - err_twin) / e), averaged.

    Why: the plain loss barely pays for binding (the twin's image differs from the prompt's by two outlines or two
    colours; BENCHMARKS.md, "Twins"), and its gradient for it drowns in everything else the batch teaches. The
    difference of the two errors cancels all that the pair shares, so this gradient is the binding alone
    (the diffusion-classifier view of Li et al. 2023; tuning through it: Qu et al., DPT, CVPR 2024).

    ``err_uncond`` (the same sample under the negative prompt) caps the twin's error, detached: answering the twin
    worse than no text at all earns nothing, which closes the cheap way to win (a model that, once x_t shows a
    layout, answers a contradicting prompt badly; BENCHMARKS.md, "Twins").

    Measured there: it teaches the network to tell colour twins apart (0.65 -> 0.97), not position twins, and in
    every setting tried it cost drawing more than it gave; off by default, kept as a tool for such experiments.
    """
    if err_uncond is not None:
        err_twin = torch.minimum(err_twin, err_uncond.detach())
    e = (0.5 * (err + err_twin)).detach().clamp_min(1e-8)
    return F.softplus(scale * (err - err_twin) / e).mean()


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, grad_clip: float,
                   backward: Callable[[Tensor], None] | None = None, what: str = "loss") -> float:
    """Backward (``backward``, e.g. ``accelerator.backward``; default ``loss.backward()``), clip the gradient norm at
    ``grad_clip`` (0 = off), step, zero the gradients; returns the loss, or raises naming ``what`` if it is not
    finite."""
    (backward or Tensor.backward)(loss)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"{what} became {value}")
    return value
