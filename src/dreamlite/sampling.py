"""Sampling: the sigma schedule, conditioning and guidance wrappers, and the sampler (Euler, or stochastic DDIM).

A sampler is a function of (model, x, sigmas, conditions, guidance). ``model`` is anything with
MobileUNet's forward signature (the torch module, an ONNX or ExecuTorch runtime wrapper); conditioning
(``Conditions`` -> packed canvas, text, size ids) and guidance (2-way CFG to generate, 3-way to edit) are
thin wrappers around it, so sampling, distillation, RL rollouts, evaluation and export share one interface.
Times follow ``dreamlite.flow``: t = sigma in [0, 1], network timestep t * 1000.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor
from tqdm.auto import tqdm

from dreamlite.flow import TIMESTEP_SCALE, euler_step, ddim_step, resolution_mu
from dreamlite.incontext import pack, unpack

# Resolution shift of the official pipeline (PIPELINE.md Sec. 6): fallbacks used when a scheduler config
# lacks the keys. One place; the pipeline's registered scheduler is built from these.
SHIFT_DEFAULTS = dict(base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.16)


def default_scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=True,
                                           time_shift_type="exponential", **SHIFT_DEFAULTS)


def make_sigmas(num_steps: int, latent_h: int, latent_w: int,
                scheduler: FlowMatchEulerDiscreteScheduler | None = None) -> Tensor:
    """[num_steps + 1] decreasing sigmas ending in 0 for a *target* latent of latent_h x latent_w.

    Base sigmas linspace(1, 1/N, N), shifted by the resolution-dependent mu, terminal 0 appended.
    """
    if not isinstance(num_steps, int) or num_steps <= 0:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_steps!r}")
    scheduler = scheduler or default_scheduler()
    cfg = {k: scheduler.config.get(k, v) if hasattr(scheduler.config, "get") else v
           for k, v in SHIFT_DEFAULTS.items()}
    mu = resolution_mu(latent_h, latent_w, cfg["base_image_seq_len"], cfg["max_image_seq_len"],
                       cfg["base_shift"], cfg["max_shift"])
    base = np.linspace(1.0, 1.0 / num_steps, num_steps)
    if scheduler.config.use_dynamic_shifting:
        scheduler.set_timesteps(sigmas=base, mu=mu, device="cpu")
    else:
        scheduler.set_timesteps(sigmas=base, device="cpu")
    return scheduler.sigmas.float().clone()


@dataclass(frozen=True)
class Conditions:
    """Everything the network is conditioned on, for B samples.

    ``text``/``mask``: the conditional prompt states; ``uncond_text``/``uncond_mask``: the negative prompt
    (needed only with guidance); ``source``: the edit source latent [B, C, h, w] or None to generate;
    ``time_ids``: [B, 2] (width, height) in pixels.
    """

    text: Tensor
    mask: Tensor
    time_ids: Tensor
    source: Tensor | None = None
    uncond_text: Tensor | None = None
    uncond_mask: Tensor | None = None

    @property
    def is_edit(self) -> bool:
        return self.source is not None

    def repeat(self, n: int) -> "Conditions":
        """Each sample repeated n times (num_images_per_prompt, RL groups)."""
        rep = lambda x: None if x is None else x.repeat_interleave(n, dim=0)  # noqa: E731
        return replace(self, text=rep(self.text), mask=rep(self.mask), time_ids=rep(self.time_ids),
                       source=rep(self.source), uncond_text=rep(self.uncond_text),
                       uncond_mask=rep(self.uncond_mask))


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance scales; both 1.0 means a single conditional call (distilled models).

    Generate: v = v_u + scale (v_c - v_u). Edit (3-way, as the official pipeline):
    v = v_u + scale (v_text - v_img) + image_scale (v_img - v_u), with v_u = (uncond text, blank),
    v_img = (uncond text, source), v_text = (text, source).

    ``max_sigma``: guidance only at noise levels t <= max_sigma; above it the conditional velocity alone (v_c, or
    v_text for edits), one network call instead of 2 or 3 (guidance in a limited interval, Kynkaenniemi et al.
    2024). 1.0 = guidance at every step.
    """

    scale: float = 1.0
    image_scale: float = 1.0
    max_sigma: float = 1.0

    def __post_init__(self):
        if self.scale < 0 or self.image_scale < 0:
            raise ValueError(f"guidance scales must be >= 0, got scale={self.scale}, "
                             f"image_scale={self.image_scale}")
        if not 0 < self.max_sigma <= 1:
            raise ValueError(f"guidance max_sigma must be in (0, 1], got {self.max_sigma}")

    @property
    def off(self) -> bool:
        return self.scale == 1.0 and self.image_scale == 1.0


NO_GUIDANCE = Guidance()


def _pad_to(x: Tensor, length: int) -> Tensor:
    pad = length - x.shape[1]
    return x if pad == 0 else torch.nn.functional.pad(x, (0, 0, 0, pad) if x.ndim == 3 else (0, pad))


def _stack_text(pairs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Concatenate (text, mask) batches along B, right-padding text length with masked zeros."""
    L = max(t.shape[1] for t, _ in pairs)
    return (torch.cat([_pad_to(t, L) for t, _ in pairs]), torch.cat([_pad_to(m, L) for _, m in pairs]))


def velocity(model: Callable, x_t: Tensor, t: Tensor, cond: Conditions, guidance: Guidance = NO_GUIDANCE) -> Tensor:
    """Guided velocity of the target latent x_t [B, C, h, w] at times t [B] (one network call)."""
    B = x_t.shape[0]
    above = t.reshape(-1).expand(B) > guidance.max_sigma  # [B]: samples past the guidance interval
    if guidance.off or bool(above.all()):
        canvas = pack(x_t, cond.source)
        text, mask, n = cond.text, cond.mask, 1
    else:
        if cond.uncond_text is None:
            raise ValueError("guidance needs the negative prompt states (Conditions.uncond_text)")
        neg = (cond.uncond_text, cond.uncond_mask)
        if cond.is_edit:  # [uncond+blank, uncond+source, text+source]
            canvas = torch.cat([pack(x_t), pack(x_t, cond.source), pack(x_t, cond.source)])
            text, mask = _stack_text([neg, neg, (cond.text, cond.mask)])
            n = 3
        else:  # [uncond+blank, text+blank]
            canvas = torch.cat([pack(x_t), pack(x_t)])
            text, mask = _stack_text([neg, (cond.text, cond.mask)])
            n = 2
    t_in = (t.reshape(-1).expand(B) * TIMESTEP_SCALE).to(x_t.dtype).repeat(n)
    out = model(canvas, t_in, text.to(x_t.dtype), mask, cond.time_ids.to(x_t.dtype).repeat(n, 1))
    v = unpack(out)  # [n*B, C, h, w]
    if n == 1:
        return v
    if n == 2:
        v_u, v_c = v.chunk(2)
        guided = v_u + guidance.scale * (v_c - v_u)
    else:
        v_u, v_img, v_c = v.chunk(3)
        guided = v_u + guidance.scale * (v_c - v_img) + guidance.image_scale * (v_img - v_u)
    return torch.where(above.reshape(-1, 1, 1, 1).to(v.device), v_c, guided)  # mixed t (RL, distillation)


@torch.no_grad()
def sample(model: Callable, x: Tensor, sigmas: Tensor, cond: Conditions, guidance: Guidance = NO_GUIDANCE,
           progress: bool = False, callback: Callable[[int, Tensor], None] | None = None, eta: float = 0.0,
           noise_sampler: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Integrate the flow from sigmas[0] (noise x) to sigmas[-1]; returns the target latent.

    ``eta`` = 0: Euler steps (the deterministic ODE). ``eta`` in (0, 1]: ``flow.ddim_step``, stochastic DDIM
    steps (1 = ancestral) whose fresh noise comes from ``noise_sampler(x)`` (a tensor shaped like x; default
    ``torch.randn_like``); the last step, to sigma 0, adds none.
    """
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D schedule of at least 2 values, got shape {tuple(sigmas.shape)}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    noise_sampler = noise_sampler or torch.randn_like
    for i in tqdm(range(len(sigmas) - 1), disable=not progress, desc="sampling", leave=False):
        t = sigmas[i].to(x.device).expand(x.shape[0])
        v = velocity(model, x, t, cond, guidance)
        if eta == 0.0 or float(sigmas[i + 1]) == 0.0:
            x = euler_step(x, v, sigmas[i], sigmas[i + 1])
        else:
            x = ddim_step(x, v, sigmas[i], sigmas[i + 1], eta, noise_sampler(x).to(x.device))
        if callback is not None:
            callback(i, x)
    return x
