"""A recipe's distillation stage: ``distill.progressive_plan`` rounds with exact resume, ending in a mobile variant.

The model entering the stage (its EMA weights) is the *base*: it is written once to
``<run>/stages/<stage>/base.safetensors`` and is round 0's teacher, which folds the base's guidance
(``guidance_scale`` / ``image_guidance_scale``) into the student. Each later round halves the student's steps,
the previous round's student being the teacher, down to ``final_steps``. Each round runs the stage's ``steps``
optimiser steps with a fresh AdamW and warm-up; data latents come from the corpus pools by the stage's mix (a
t2i row gets a blank source, for which the 3-way edit guidance equals 2-way CFG exactly). A checkpoint holds the
student, EMA, optimizer, LR schedule, RNG, the current teacher (``teacher.safetensors``) and the step and round.
The run's model folder then holds both variants: ``unet/`` = base, ``unet_mobile/`` = the student (default).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from dreamlite.pipeline import VariantDefaults
from dreamlite.sampling import Conditions, Guidance
from dreamlite.train.config import DistillStageConfig, Recipe, StageConfig
from dreamlite.train.distill import distill_round, progressive_plan
from dreamlite.train.loop import (BatchSampler, LoopState, StageContext, StageResult, frozen_weights, load_checkpoint,
                                  load_extra, log_stage_row, lr_lambda, save_checkpoint)
from dreamlite.train.rl import frozen_copy


def mobile_variants(recipe: Recipe, cfg: DistillStageConfig) -> dict[str, VariantDefaults]:
    """base: the teacher with the recipe's evaluation steps and guidance; mobile: the student, no guidance."""
    e = recipe.eval
    return {"base": VariantDefaults("unet", e.steps, e.guidance_scale, e.image_guidance_scale),
            "mobile": VariantDefaults("unet_mobile", cfg.final_steps, 1.0, 1.0)}


def base_weights_path(run_dir: Path, stage: StageConfig) -> Path:
    return run_dir / "stages" / stage.name / "base.safetensors"


def distilled_pipeline(run_dir: Path, recipe: Recipe, stage: StageConfig, student, vae, encoder):
    """The pipeline with both variants, mobile (``student``) the default and the saved base beside it."""
    from dreamlite.train.evaluate import make_pipeline

    base = type(student).from_config(student.config)
    base.load_state_dict(load_file(str(base_weights_path(run_dir, stage))))
    return make_pipeline(student, vae, encoder, recipe, variants=mobile_variants(recipe, stage.distill),
                         default_variant="mobile", extra_unets={"base": base.eval()})


def _optimizer(ctx: StageContext, model, stage: StageConfig):
    """A fresh AdamW and warm-up schedule (one per round)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=stage.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(stage.warmup_steps, stage.steps,
                                                                       stage.min_lr_ratio))
    return optimizer, scheduler


def batch_drawer(ctx: StageContext, stage: StageConfig, generator: torch.Generator):
    """``draw_batch(generator) -> (x0, Conditions)`` over the corpus pools (edit rows keep their source)."""
    sampler = BatchSampler(ctx.pools, stage, generator, ctx.recipe.corpus.image_size)
    dev = ctx.accelerator.device
    un, um = ctx.uncond

    def draw(_: torch.Generator):
        b = sampler.draw()
        B = b["x0"].shape[0]
        cond = Conditions(b["text"].to(dev), b["mask"].to(dev), b["time_ids"].to(dev), b["cond"].to(dev),
                          un.expand(B, -1, -1).to(dev), um.expand(B, -1).to(dev))
        return b["x0"].to(dev), cond

    return draw


def run_distill_stage(ctx: StageContext, stage: StageConfig, state: LoopState, resume_from=None,
                      stop_after: int | None = None) -> StageResult:
    """Run (or continue, from checkpoint ``resume_from``) the stage's rounds up to ``stage.total_steps``."""
    cfg, acc, model = stage.distill, ctx.accelerator, ctx.accelerator.unwrap_model(ctx.unet)
    if resume_from is None and state.step == 0:
        ctx.ema.copy_to(model)  # distil the evaluated weights
    frozen_weights(ctx.run_dir, stage.name, "base", model, acc)
    plan = progressive_plan(cfg.start_steps, cfg.final_steps, Guidance(cfg.guidance_scale, cfg.image_guidance_scale))
    teacher = frozen_copy(model)  # round 0: the base
    generator = ctx.generator(state.stage_index)
    optimizer, scheduler = _optimizer(ctx, model, stage)
    if resume_from is not None:  # a checkpoint at a round's end already holds the next round's fresh optimizer
        state = load_checkpoint(resume_from, acc, ctx.unet, ctx.ema, optimizer, scheduler, generator)
        load_extra(resume_from, "teacher", teacher)
    ctx.ema.decay = stage.ema_decay
    optimizer = acc.prepare(optimizer)
    draw = batch_drawer(ctx, stage, generator)
    losses, t0, done = [], time.perf_counter(), 0
    while state.step < stage.total_steps:
        rnd = plan[state.step // stage.steps]
        loss = distill_round(ctx.unet, teacher, optimizer, draw, rnd, 1, generator, stage.grad_clip, acc.backward)[0]
        scheduler.step()
        state.step += 1
        state.global_step += 1
        state.round = state.step // stage.steps
        done += 1
        ctx.ema.update(model, state.global_step)
        losses.append((state.global_step, loss))
        round_end = state.step % stage.steps == 0
        if state.step % 10 == 0 or round_end:
            log_stage_row(ctx.run_dir, acc, {"stage": stage.name, "step": state.global_step, "loss": loss,
                                             "round": rnd.name})
        if round_end:  # this round's student teaches the next round, which starts a fresh optimizer
            teacher.load_state_dict(model.state_dict())
            optimizer, scheduler = _optimizer(ctx, model, stage)
            optimizer = acc.prepare(optimizer)
        stopping = stop_after is not None and done >= stop_after
        if stopping or round_end or state.step % ctx.recipe.checkpoint_every == 0:
            save_checkpoint(ctx.run_dir, acc, ctx.unet, ctx.ema, optimizer, scheduler, generator, state,
                            extra={"teacher": teacher})
        if stopping:
            break
    seconds = time.perf_counter() - t0
    return StageResult(losses, seconds, done * stage.batch_size * acc.num_processes / max(seconds, 1e-9))


__all__ = ["base_weights_path", "batch_drawer", "distilled_pipeline", "mobile_variants", "run_distill_stage"]
