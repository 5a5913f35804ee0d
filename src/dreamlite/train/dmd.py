"""Distribution matching distillation (DMD, Yin et al. 2024; DMD2, Yin et al. 2024b) in flow form.

Progressive distillation (``train.distill``) regresses the student onto the teacher's ODE steps, so the student
can only be as good as the teacher's deterministic sampler. DMD instead matches distributions: the student G is
pushed along the gradient of KL(p_G || p_real), which at noise level t is the difference of two denoisers,

    grad = (x0_fake - x0_real) / mean|x0_hat - x0_real|         (DMD's gradient, normalised per sample)

where x_t = interpolate(x0_hat, noise, t) noises the student's sample x0_hat, ``x0_real`` is the teacher's
denoised estimate with its guidance (2-way CFG to generate, 3-way to edit: ``sampling.velocity``), and
``x0_fake`` is the estimate of a *fake* network trained online by flow matching on the student's own samples
(so it tracks p_G). Nothing in this asks for the teacher's sampling path: the student aims at the distribution
the teacher's guided velocity field defines, which the shipped base reaches better with stochastic steps than
with the ODE (BENCHMARKS.md, "Stochastic sampling").

The student is a few-step Euler sampler on ``make_sigmas(N)`` (the mobile variant), and by default x0_hat is
what it deploys: the end of its N Euler steps from pure noise (the last step lands on sigma = 0, so it is that
step's x0 estimate), with the gradient through the last ``grad_steps`` network calls and the earlier ones run
without it (DMD2's backward simulation). DMD2 applies the loss to the x0 estimate of a *random* step
(``student_step="random"``), which is a sample for its sampler, which re-noises each estimate with fresh noise;
an Euler step's early x0 estimates are conditional means (blurred), and pushing them towards sharp samples
changes the path the deployed sampler takes (BENCHMARKS.md, "Distribution matching"). The fake network takes
``fake_updates`` flow-matching steps per student step (DMD2's two time-scale rule).
One time convention (``dreamlite.flow``): t is the noise level, x_t = (1 - t) x0 + t noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamlite.flow import euler_step, interpolate, velocity_target, x0_from_velocity
from dreamlite.sampling import Conditions, Guidance, velocity
from dreamlite.train.flow import optimizer_step


@dataclass(frozen=True)
class DMDConfig:
    """A DMD stage (``dreamlite.train.dmd_stage``). The stage's ``steps`` count student updates, its ``lr`` the
    student's; the fake network has its own ``fake_lr``. ``teacher`` "" = the model as the stage starts."""

    teacher: str = ""  # a model folder whose base U-Net is the real denoiser (e.g. the shipped base)
    guidance_scale: float = 3.0  # the teacher's text guidance (the real distribution is the guided one)
    image_guidance_scale: float = 2.5  # and its image guidance for edits (the shipped base's default)
    student_steps: int = 4  # the student's Euler steps on make_sigmas(student_steps, h, w)
    # which x0 estimate the loss sees: "final" (the deployed sample) or "random" (a random step's, as DMD2)
    student_step: str = "final"
    grad_steps: int = 0  # how many of the last network calls carry the gradient; 0 = all of them
    fake_updates: int = 2  # fake network steps per student step (DMD2 uses 5)
    fake_lr: float = 1e-4
    fake_warmup: int = 50  # iterations at the start in which only the fake network learns
    t_min: float = 0.02  # the DMD noise level t ~ U[t_min, t_max] (DMD2's range)
    t_max: float = 0.98

    def __post_init__(self) -> None:
        if self.student_steps < 1 or self.fake_updates < 1 or self.fake_warmup < 0 or self.fake_lr <= 0:
            raise ValueError(f"dmd: need student_steps >= 1, fake_updates >= 1, fake_warmup >= 0 and fake_lr > 0, "
                             f"got {self.student_steps}, {self.fake_updates}, {self.fake_warmup}, {self.fake_lr}")
        if self.student_step not in ("final", "random"):
            raise ValueError(f"dmd: student_step must be 'final' or 'random', got {self.student_step!r}")
        if not 0 <= self.grad_steps <= self.student_steps:
            raise ValueError(f"dmd: grad_steps must be in [0, student_steps = {self.student_steps}], got "
                             f"{self.grad_steps}")
        if not 0 < self.t_min < self.t_max <= 1:
            raise ValueError(f"dmd: need 0 < t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        Guidance(self.guidance_scale, self.image_guidance_scale)  # checks the scales now, not when the stage runs

    @property
    def guidance(self) -> Guidance:
        return Guidance(self.guidance_scale, self.image_guidance_scale)


def student_sample(student: Callable, noise: Tensor, sigmas: Tensor, cond: Conditions, step: int | None = None,
                   grad_steps: int = 0) -> Tensor:
    """The student's x0 estimate [B, C, h, w] at its step ``step`` (None = the last: the sample it deploys, as the
    last Euler step lands on sigma = 0) after Euler steps 0..step-1 from ``noise``. The last ``grad_steps`` network
    calls (0 = all) keep the gradient, the earlier ones run without it."""
    n = sigmas.numel() - 1
    step = n - 1 if step is None else step
    if not 0 <= step < n or not 0 <= grad_steps:
        raise ValueError(f"step {step} outside the student's {n} steps, or grad_steps {grad_steps} < 0")
    x, B = noise, noise.shape[0]
    sig = sigmas.float().to(noise.device)
    first_grad = 0 if grad_steps == 0 else step + 1 - grad_steps
    for i in range(step + 1):
        with torch.set_grad_enabled(torch.is_grad_enabled() and i >= first_grad):
            v = velocity(student, x, sig[i].expand(B), cond)
            x = euler_step(x, v, sig[i], sig[i + 1]) if i < step else x0_from_velocity(x, v, sig[i].expand(B))
    return x


@torch.no_grad()
def dmd_direction(real: Callable, fake: Callable, x0_hat: Tensor, noise: Tensor, t: Tensor, cond: Conditions,
                  guidance: Guidance) -> Tensor:
    """The normalised KL gradient (x0_fake - x0_real) / mean|x0_hat - x0_real| [B, C, h, w] at t [B]."""
    x_t = interpolate(x0_hat, noise, t)  # [B, C, h, w]
    x0_real = x0_from_velocity(x_t, velocity(real, x_t, t, cond, guidance), t).float()
    x0_fake = x0_from_velocity(x_t, velocity(fake, x_t, t, cond), t).float()
    scale = (x0_hat.float() - x0_real).abs().flatten(1).mean(1).clamp_min(1e-6)  # [B]
    return (x0_fake - x0_real) / scale.reshape(-1, 1, 1, 1)


def dmd_loss(x0_hat: Tensor, direction: Tensor) -> Tensor:
    """0.5 ||x0_hat - sg(x0_hat - direction)||^2 (mean over elements): its gradient wrt x0_hat is ``direction``
    divided by the element count, so the student's parameters move along the KL gradient through x0_hat."""
    return 0.5 * F.mse_loss(x0_hat.float(), (x0_hat.float() - direction).detach())


def fake_loss(fake: Callable, x0: Tensor, noise: Tensor, t: Tensor, cond: Conditions) -> Tensor:
    """Flow matching of the fake network on the student's (detached) samples x0 [B, C, h, w]; conditional only,
    as the fake is only ever asked conditionally."""
    x_t = interpolate(x0, noise, t)
    return F.mse_loss(velocity(fake, x_t, t, cond).float(), velocity_target(x0, noise).float())


def uniform_t(n: int, cfg: DMDConfig, generator: torch.Generator) -> Tensor:
    return cfg.t_min + (cfg.t_max - cfg.t_min) * torch.rand(n, generator=generator)


@dataclass
class DMDStats:
    student_loss: float  # nan in the fake network's warm-up
    fake_loss: float  # mean over the iteration's fake updates


def dmd_iteration(student: torch.nn.Module, fake: torch.nn.Module, real: Callable, optimizers: tuple,
                  draw_batch: Callable[[torch.Generator], tuple[Tensor, Conditions]], sigmas: Tensor, cfg: DMDConfig,
                  generator: torch.Generator, update_student: bool = True, grad_clip: float = 1.0,
                  backward: Callable[[Tensor], None] | None = None) -> DMDStats:
    """One iteration: draw conditions, sample the student, take a student step along the DMD direction (unless
    ``update_student`` is False: the fake's warm-up), then ``cfg.fake_updates`` fake steps on that sample.
    ``optimizers`` = (student's, fake's); all randomness comes from ``generator`` (CPU)."""
    opt_student, opt_fake = optimizers
    x_shape, cond = draw_batch(generator)  # data latents give the shape only: DMD needs no data
    B, device = x_shape.shape[0], x_shape.device
    draw = lambda: torch.randn(x_shape.shape, generator=generator).to(device, x_shape.dtype)  # noqa: E731
    step = None if cfg.student_step == "final" else int(torch.randint(0, sigmas.numel() - 1, (1,),
                                                                      generator=generator))
    student.train()
    with torch.set_grad_enabled(update_student):
        x0_hat = student_sample(student, draw(), sigmas, cond, step, cfg.grad_steps)  # [B, C, h, w]
    noise, t = draw(), uniform_t(B, cfg, generator).to(device)
    student_value = float("nan")
    if update_student:
        direction = dmd_direction(real, fake, x0_hat.detach(), noise, t, cond, cfg.guidance)
        student_value = optimizer_step(student, opt_student, dmd_loss(x0_hat, direction), grad_clip, backward,
                                       "dmd loss")
    sample = x0_hat.detach()
    fake.train()
    values = [optimizer_step(fake, opt_fake, fake_loss(fake, sample, draw(), uniform_t(B, cfg, generator).to(device),
                                                    cond), grad_clip, backward, "fake network loss")
              for _ in range(cfg.fake_updates)]
    return DMDStats(student_value, sum(values) / len(values))


__all__ = ["DMDConfig", "DMDStats", "dmd_direction", "dmd_iteration", "dmd_loss", "fake_loss", "student_sample",
           "uniform_t"]
