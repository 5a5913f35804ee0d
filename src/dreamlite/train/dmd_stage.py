"""A recipe's DMD stage: distribution matching distillation (``dreamlite.train.dmd``) with exact resume.

The network entering the stage (its EMA weights) is the student: a few-step model, e.g. the shipped 4-step
``unet_mobile`` given as the recipe's ``init_from``, or a base that DMD turns into one. The real denoiser is
``DMDConfig.teacher``'s base U-Net (a model folder reading the recipe's text states), or, when that is "", the
network as the stage starts (written once to ``<run>/stages/<stage>/teacher.safetensors``). The fake network
starts as a copy of the real one. Conditions come from the corpus pools by the stage's mix (their latents only
give the shape). A checkpoint holds the student, EMA, optimizer, LR schedule, RNG and step, and the fake network
with its optimizer (``fake.safetensors``, ``fake_optimizer.pt``).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dreamlite.sampling import make_sigmas
from dreamlite.train.config import StageConfig
from dreamlite.train.distill_stage import batch_drawer
from dreamlite.train.dmd import dmd_iteration
from dreamlite.train.loop import (
    LoopState,
    StageContext,
    StageResult,
    frozen_weights,
    load_checkpoint,
    load_extra,
    log_stage_row,
    lr_lambda,
    save_checkpoint,
)
from dreamlite.train.rl import frozen_copy


def real_denoiser(ctx: StageContext, stage: StageConfig, model: torch.nn.Module) -> torch.nn.Module:
    """The frozen teacher: ``stage.dmd.teacher``'s U-Net, or the stage's starting network."""
    if stage.dmd.teacher:
        from dreamlite.train.recipe import load_anchor

        return load_anchor(Path(stage.dmd.teacher), ctx.recipe, stage.name, model).to(ctx.accelerator.device)
    real = frozen_copy(model)
    real.load_state_dict(frozen_weights(ctx.run_dir, stage.name, "teacher", model, ctx.accelerator))
    return real


def student_sigmas(ctx: StageContext, stage: StageConfig) -> torch.Tensor:
    """The student's schedule at the pools' latent size (the target half of the canvas)."""
    h, w = next(iter(ctx.pools.values())).x0.shape[-2:]
    return make_sigmas(stage.dmd.student_steps, h, w)


def run_dmd_stage(ctx: StageContext, stage: StageConfig, state: LoopState, resume_from=None,
                  stop_after: int | None = None) -> StageResult:
    """Run (or continue, from checkpoint ``resume_from``) the stage from ``state.step`` to ``stage.steps``."""
    cfg, acc, model = stage.dmd, ctx.accelerator, ctx.accelerator.unwrap_model(ctx.unet)
    if resume_from is None and state.step == 0:
        ctx.ema.copy_to(model)  # the evaluated weights are the student
    real = real_denoiser(ctx, stage, model)
    fake = copy.deepcopy(real).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=stage.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(stage.warmup_steps, stage.steps,
                                                                       stage.min_lr_ratio))
    opt_fake = torch.optim.AdamW(fake.parameters(), lr=cfg.fake_lr, weight_decay=stage.weight_decay)
    generator = ctx.generator(state.stage_index)
    if resume_from is not None:
        state = load_checkpoint(resume_from, acc, ctx.unet, ctx.ema, optimizer, scheduler, generator,
                                extra_optimizers={"fake": opt_fake})
        load_extra(resume_from, "fake", fake)
    ctx.ema.decay = stage.ema_decay
    optimizer = acc.prepare(optimizer)
    fake_ddp, opt_fake = acc.prepare(fake, opt_fake)
    draw, sigmas = batch_drawer(ctx, stage, generator), student_sigmas(ctx, stage)
    losses, t0, done = [], time.perf_counter(), 0
    bar = tqdm(total=stage.steps, initial=state.step, desc=f"stage {stage.name}",
               disable=not acc.is_local_main_process)
    while state.step < stage.steps:
        learning = state.step >= cfg.fake_warmup
        stats = dmd_iteration(ctx.unet, fake_ddp, real, (optimizer, opt_fake), draw, sigmas, cfg, generator,
                              learning, stage.grad_clip, acc.backward)
        if learning:
            scheduler.step()
        state.step += 1
        state.global_step += 1
        done += 1
        if learning:
            ctx.ema.update(model, state.global_step)
        losses.append((state.global_step, stats.fake_loss))
        bar.update(1)
        bar.set_postfix(fake=f"{stats.fake_loss:.4f}", dmd=f"{stats.student_loss:.3f}" if learning else "warm-up")
        if state.step % 10 == 0 or state.step == stage.steps:
            row = {"stage": stage.name, "step": state.global_step, "loss": stats.fake_loss}
            if math.isfinite(stats.student_loss):
                row["dmd"] = stats.student_loss
            log_stage_row(ctx.run_dir, acc, row)
        stopping = stop_after is not None and done >= stop_after
        if stopping or state.step % ctx.recipe.checkpoint_every == 0 or state.step == stage.steps:
            save_checkpoint(ctx.run_dir, acc, ctx.unet, ctx.ema, optimizer, scheduler, generator, state,
                            extra={"fake": fake}, extra_optimizers={"fake": opt_fake})
        if stopping:
            break
    bar.close()
    seconds = time.perf_counter() - t0
    return StageResult(losses, seconds, done * stage.batch_size * acc.num_processes / max(seconds, 1e-9))


__all__ = ["real_denoiser", "run_dmd_stage", "student_sigmas"]
