"""Flow-matching maths: pure functions, no models.

THE time convention of dreamlite (stated once, used everywhere): ``t`` is the noise level sigma in [0, 1];
``x_t = (1 - t) * x0 + t * noise``; the network predicts the velocity ``v = noise - x0`` (rectified flow, as
the official DreamLite training scripts); ``t = 1`` is pure noise, ``t = 0`` is data; the network is fed the
timestep ``t * 1000``. Sampling integrates dx/dt = v from t = 1 down to t = 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TIMESTEP_SCALE = 1000.0  # the network sees t * 1000 (official pipelines pass sigma * 1000)


def _bcast(t: Tensor | float, x: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t


def interpolate(x0: Tensor, noise: Tensor, t: Tensor | float) -> Tensor:
    """x_t = (1 - t) x0 + t noise; t is a scalar or [B]."""
    t = _bcast(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """dx_t/dt = noise - x0."""
    return noise - x0


def x0_from_velocity(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    return x_t - _bcast(t, x_t) * v


def noise_from_velocity(x_t: Tensor, v: Tensor, t: Tensor | float) -> Tensor:
    return x_t + (1 - _bcast(t, x_t)) * v


def euler_step(x_t: Tensor, v: Tensor, t: Tensor | float, t_next: Tensor | float) -> Tensor:
    """One Euler step from t to t_next, computed in float32 and cast back (as the official scheduler)."""
    dt = _bcast(torch.as_tensor(t_next, dtype=torch.float32) - torch.as_tensor(t, dtype=torch.float32), x_t.float())
    return (x_t.float() + dt * v.float()).to(x_t.dtype)


def ddim_step(x_t: Tensor, v: Tensor, t: Tensor | float, t_next: Tensor | float, eta: float, z: Tensor) -> Tensor:
    """One step of the DDIM family (Song et al. 2021, Eq. 12 and 16) written for rectified flow, in float32.

    x0 = x_t - t v and noise = x_t + (1 - t) v are the network's estimates; the step draws from the Gaussian
    q(x_next | x_t, x0) with its variance scaled by eta^2:
    x_next = (1 - t_next) x0 + sqrt(t_next^2 - c^2) noise + c z, z ~ N(0, I) fresh, with
    c = eta (t_next / t) sqrt(t^2 - ((1 - t) t_next / (1 - t_next))^2). eta = 0 is ``euler_step`` exactly (the
    ODE); eta = 1 is the ancestral (DDPM) step. Every eta samples the data distribution as the steps shrink
    (tests/test_flow.py checks it on Gaussian data); with an under-fit network the fresh noise lets a sample
    still ambiguous mid-way (which of two named shapes an object is) commit to one instead of following the
    mean of both, as a deterministic path does (BENCHMARKS.md, "Stochastic sampling").
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    x, v = x_t.float(), v.float()
    t = _bcast(torch.as_tensor(t, dtype=torch.float32), x)
    s = _bcast(torch.as_tensor(t_next, dtype=torch.float32), x)
    x0, noise = x - t * v, x + (1 - t) * v
    transition = (t ** 2 - ((1 - t) * s / (1 - s).clamp(min=1e-12)) ** 2).clamp(min=0.0)  # Var[x_t | x_next]
    c = eta * s / t.clamp(min=1e-12) * transition.sqrt()
    return ((1 - s) * x0 + (s ** 2 - c ** 2).clamp(min=0.0).sqrt() * noise + c * z.float()).to(x_t.dtype)


def shift_sigmas(sigmas: Tensor, mu: float) -> Tensor:
    """Exponential time shift sigma' = e^mu / (e^mu + 1/sigma - 1); mu > 0 spends more steps at high noise."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    out = math.exp(mu) / (math.exp(mu) + (1.0 / sigmas.clamp(min=1e-12) - 1.0))
    return torch.where(sigmas > 0, out, torch.zeros_like(out)).float()


def resolution_mu(latent_h: int, latent_w: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                  base_shift: float = 0.5, max_shift: float = 1.16) -> float:
    """The resolution-dependent shift of the official pipeline: linear in the *target* latent's 2x2-patch count.

    ``image_seq_len = latent_h * latent_w // 4`` (the target half only, not the double-width canvas).
    """
    seq_len = latent_h * latent_w // 4
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return seq_len * m + (base_shift - m * base_seq_len)


def sample_t_logit_normal(n: int, mean: float = 0.0, std: float = 1.0, *, shift_mu: float = 0.0,
                          generator: torch.Generator | None = None, device=None) -> Tensor:
    """Training times t = shift(sigmoid(N(mean, std))): the SD3 / Flux family's logit-normal sampling."""
    u = torch.randn(n, generator=generator, device=device) * std + mean
    t = torch.sigmoid(u)
    return shift_sigmas(t, shift_mu).to(t.device) if shift_mu else t
