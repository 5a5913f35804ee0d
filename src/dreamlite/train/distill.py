"""Progressive distillation for flow models: fold guidance in, then halve the sampling steps round by round.

- **Round 0 - guidance folding** (Meng et al. 2023, "On Distillation of Guided Diffusion Models"): the student's
  single conditional velocity regresses the teacher's *guided* velocity at the same (x_t, t): 2-way CFG
  v_u + s (v_c - v_u) to generate, 3-way v_u + s (v_text - v_img) + s_img (v_img - v_u) to edit - exactly what
  ``dreamlite.sampling.velocity`` computes with a ``Guidance``. The student then samples with 1 network call
  per step instead of 2 or 3.
- **Rounds 1.. - step halving** (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
  Models"), in flow form: the teacher samples with 2N Euler steps on the schedule
  ``sigmas = make_sigmas(2N, h, w)``, the student with N. One student Euler step from sigma_i to sigma_{i+2}
  must land where the teacher's two steps (sigma_i -> sigma_{i+1} -> sigma_{i+2}) land, i.e. regress

      v_target = (x_{i+2} - x_i) / (sigma_{i+2} - sigma_i).

  Because ``make_sigmas`` shifts linspace(1, 1/N, N), every other point of the 2N-step schedule *is* the
  N-step schedule: the student is deployed with ``make_sigmas(N, h, w)``. The velocity MSE is the endpoint
  MSE divided by (sigma_{i+2} - sigma_i)^2. After a round the student becomes the next round's teacher.

As in Salimans & Ho, x_i is the forward-noised data point interpolate(x0, noise, sigma_i) (``dreamlite.flow``),
and only the target half of the canvas is compared (``incontext.pack`` / ``unpack`` via ``sampling.velocity``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamlite.flow import euler_step, interpolate, sample_t_logit_normal
from dreamlite.sampling import NO_GUIDANCE, Conditions, Guidance, make_sigmas, velocity
from dreamlite.train.flow import optimizer_step


@dataclass(frozen=True)
class DistillRound:
    """One distillation round. ``student_steps`` None: guidance folding at continuous t (logit-normal with
    ``t_mean``/``t_std``); an int N: step halving, the teacher taking 2N steps. ``guidance``: the *teacher's*
    guidance (round 0: the base model's CFG scales; later rounds: the guidance-free previous student)."""

    student_steps: int | None
    guidance: Guidance = NO_GUIDANCE
    t_mean: float = 0.0
    t_std: float = 1.0

    def __post_init__(self) -> None:
        if self.student_steps is not None and self.student_steps < 1:
            raise ValueError(f"student_steps must be >= 1, got {self.student_steps}")

    @property
    def name(self) -> str:
        return "guidance" if self.student_steps is None else f"steps-{self.student_steps}"


def progressive_plan(start_steps: int, final_steps: int, guidance: Guidance) -> list[DistillRound]:
    """Round 0 folds ``guidance`` into a student of the base model's ``start_steps`` schedule; each next round
    halves the steps: start/2, start/4, ..., ``final_steps`` (start must be final * 2^k)."""
    if final_steps < 1 or start_steps < final_steps or start_steps % final_steps \
            or not math.log2(start_steps // final_steps).is_integer():
        raise ValueError(f"start_steps ({start_steps}) must be final_steps ({final_steps}) times a power of 2")
    rounds, n = [DistillRound(None, guidance)], start_steps
    while n > final_steps:
        n //= 2
        rounds.append(DistillRound(n))
    return rounds


def schedules(student_steps: int, latent_h: int, latent_w: int, scheduler=None) -> tuple[Tensor, Tensor]:
    """(teacher sigmas [2N + 1], student sigmas [N + 1]) for a target latent h x w; student = teacher[::2]."""
    if scheduler is None:
        teacher, student = _default_schedules(student_steps, latent_h, latent_w)
        return teacher.clone(), student.clone()
    return (make_sigmas(2 * student_steps, latent_h, latent_w, scheduler),
            make_sigmas(student_steps, latent_h, latent_w, scheduler))


@lru_cache(maxsize=64)
def _default_schedules(student_steps: int, latent_h: int, latent_w: int) -> tuple[Tensor, Tensor]:
    return make_sigmas(2 * student_steps, latent_h, latent_w), make_sigmas(student_steps, latent_h, latent_w)


def _sq_err(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample MSE, float32: [B, ...] x 2 -> [B] (the convention of ``train/flow.flow_matching_loss``)."""
    return F.mse_loss(a.float(), b.float(), reduction="none").flatten(1).mean(dim=1)


# --------------------------------------------------------------------------------------------- targets
@torch.no_grad()
def guided_target(teacher: Callable, x_t: Tensor, t: Tensor, cond: Conditions, guidance: Guidance) -> Tensor:
    """The teacher's guided velocity [B, C, h, w] at x_t [B, C, h, w], t [B]: the guidance-folding target."""
    return velocity(teacher, x_t, t, cond, guidance).float()


@torch.no_grad()
def two_step_target(teacher: Callable, x_i: Tensor, s_i: Tensor, s_mid: Tensor, s_next: Tensor, cond: Conditions,
                    guidance: Guidance = NO_GUIDANCE) -> Tensor:
    """(x_{i+2} - x_i) / (s_{i+2} - s_i) [B, C, h, w] after two teacher Euler steps s_i -> s_mid -> s_next
    (each [B] or a scalar): the velocity of the one student step that lands where the teacher lands."""
    B = x_i.shape[0]
    s_i, s_mid, s_next = (torch.as_tensor(s, dtype=torch.float32).to(x_i.device).reshape(-1).expand(B)
                          for s in (s_i, s_mid, s_next))
    x_mid = euler_step(x_i, velocity(teacher, x_i, s_i, cond, guidance), s_i, s_mid)
    x_next = euler_step(x_mid, velocity(teacher, x_mid, s_mid, cond, guidance), s_mid, s_next)
    step = (s_next - s_i).reshape(-1, *([1] * (x_i.ndim - 1)))  # [B, 1, 1, 1]
    return (x_next.float() - x_i.float()) / step


# ----------------------------------------------------------------------------------------------- losses
def guidance_distill_loss(student: Callable, teacher: Callable, x0: Tensor, noise: Tensor, t: Tensor,
                          cond: Conditions, guidance: Guidance, reduce: bool = True) -> Tensor:
    """Round 0: ||v_student(x_t) - v_teacher,guided(x_t)||^2 at x_t = (1 - t) x0 + t noise; x0, noise
    [B, C, h, w], t [B]. The student gets the conditional inputs only (text, and the source for edits)."""
    x_t = interpolate(x0, noise, t)  # [B, C, h, w]
    target = guided_target(teacher, x_t, t, cond, guidance)
    err = _sq_err(velocity(student, x_t, t, cond), target)  # [B]
    return err.mean() if reduce else err


def step_distill_loss(student: Callable, teacher: Callable, x0: Tensor, noise: Tensor, step: Tensor,
                      teacher_sigmas: Tensor, cond: Conditions, guidance: Guidance = NO_GUIDANCE,
                      reduce: bool = True) -> Tensor:
    """Rounds 1..: student step j [B] (0 <= j < N) runs from teacher_sigmas[2j] to teacher_sigmas[2j + 2];
    its velocity at x_i = interpolate(x0, noise, sigma_2j) regresses ``two_step_target``."""
    n_teacher = teacher_sigmas.numel() - 1
    if n_teacher % 2 or step.min() < 0 or step.max() >= n_teacher // 2:
        raise ValueError(f"step indices must lie in [0, {n_teacher // 2}) of an even teacher schedule")
    sig = teacher_sigmas.float().to(x0.device)
    j = step.to(x0.device).long()
    s_i, s_mid, s_next = sig[2 * j], sig[2 * j + 1], sig[2 * j + 2]  # [B] each
    x_i = interpolate(x0, noise, s_i)
    target = two_step_target(teacher, x_i, s_i, s_mid, s_next, cond, guidance)
    err = _sq_err(velocity(student, x_i, s_i, cond), target)  # [B]
    return err.mean() if reduce else err


def distill_loss(student: Callable, teacher: Callable, x0: Tensor, cond: Conditions, rnd: DistillRound,
                 generator: torch.Generator) -> Tensor:
    """The round's loss on a batch of data latents x0 [B, C, h, w], with noise and t (or step indices) drawn
    from ``generator`` on the CPU."""
    B, device = x0.shape[0], x0.device
    noise = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
    if rnd.student_steps is None:
        t = sample_t_logit_normal(B, rnd.t_mean, rnd.t_std, generator=generator).to(device)
        return guidance_distill_loss(student, teacher, x0, noise, t, cond, rnd.guidance)
    teacher_sigmas, _ = schedules(rnd.student_steps, x0.shape[-2], x0.shape[-1])
    step = torch.randint(0, rnd.student_steps, (B,), generator=generator)
    return step_distill_loss(student, teacher, x0, noise, step, teacher_sigmas, cond, rnd.guidance)


def distill_round(student: torch.nn.Module, teacher: Callable, optimizer: torch.optim.Optimizer,
                  draw_batch: Callable[[torch.Generator], tuple[Tensor, Conditions]], rnd: DistillRound,
                  steps: int, generator: torch.Generator, grad_clip: float = 1.0,
                  backward: Callable[[Tensor], None] | None = None) -> list[float]:
    """``steps`` optimiser steps of ``distill_loss``; ``draw_batch(generator) -> (x0, cond)`` supplies data
    latents. Returns the losses. ``backward`` (e.g. ``accelerator.backward``) defaults to ``loss.backward()``."""
    losses = []
    student.train()
    for _ in range(steps):
        x0, cond = draw_batch(generator)
        loss = distill_loss(student, teacher, x0, cond, rnd, generator)
        losses.append(optimizer_step(student, optimizer, loss, grad_clip, backward,
                                     f"distillation loss in round {rnd.name}"))
    return losses


__all__ = ["DistillRound", "distill_loss", "distill_round", "guidance_distill_loss", "guided_target",
           "progressive_plan", "schedules", "step_distill_loss", "two_step_target"]
