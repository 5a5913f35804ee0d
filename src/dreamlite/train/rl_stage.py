"""A recipe's RL stage: DiffusionNFT (``dreamlite.train.rl``) iterations with exact resume.

Iteration i draws P prompts (text-to-image) or P edits from the RL pools with ``rl.rl_rng(rl_seed, i)`` (training
seeds, benchmark texts excluded), collects K rollouts each with the old policy, scores them with the stage's
``Reward`` (``REWARDS[cfg.reward]``: the Shapes detector by default), takes the NFT update and soft-updates the old
policy. The task of iteration i follows the stage's mix (t2i : edit), deterministically. The stage starts from the
EMA weights (the evaluated model); that start is also the frozen reference of the KL guard and of the watch.
A checkpoint holds the policy, EMA, optimizer, LR schedule, RNG, the old policy (``old.safetensors``) and the
iteration counter; the reference is written once to ``<run>/stages/<stage>/reference.safetensors``.
With ``max_drift`` set, a watch whose drift exceeds it ends the stage on the last healthy watch's weights.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from dreamlite.sampling import Conditions, make_sigmas
from dreamlite.train.config import DataMix, RLStageConfig, StageConfig
from dreamlite.train.loop import (LoopState, StageContext, StageResult, frozen_weights, load_checkpoint, load_extra,
                                  log_stage_row, lr_lambda, save_checkpoint)
from dreamlite.train.rewards import EditReward, GenEvalReward, Reward, edit_metadata
from dreamlite.train.rl import frozen_copy, latent_reward, nft_iteration, rl_edit_cases, rl_rng, rl_t2i_prompts

# name -> factory(cfg) -> {task: Reward}; register a learned reward (or a test's fake one) here.
REWARDS: dict[str, Callable[[RLStageConfig], dict[str, Reward]]] = {
    "shapes": lambda c: {"t2i": GenEvalReward(c.partial_weight),
                         "edit": EditReward(c.edit_reward_mode, c.preservation_power)},
    "geneval": lambda c: {"t2i": GenEvalReward(c.partial_weight)},
    "imgedit": lambda c: {"edit": EditReward(c.edit_reward_mode, c.preservation_power)},
}


def make_rewards(stage: StageConfig) -> dict[str, Reward]:
    """The stage's rewards per task; every task the mix draws needs one."""
    name = stage.rl.reward
    if name not in REWARDS:
        raise KeyError(f"stage {stage.name!r}: unknown reward {name!r}; known: {', '.join(REWARDS)}")
    rewards = REWARDS[name](stage.rl)
    for task, weight in (("t2i", stage.mix.t2i), ("edit", stage.mix.edit)):
        if weight > 0 and task not in rewards:
            raise ValueError(f"stage {stage.name!r}: reward {name!r} cannot score {task} but the mix draws it")
    return rewards


def task_of(iteration: int, mix: DataMix) -> str:
    """'t2i' or 'edit' for an iteration: edits get a share mix.edit / (t2i + edit), spread evenly."""
    share = mix.edit / (mix.t2i + mix.edit)
    return "edit" if math.floor((iteration + 1) * share) > math.floor(iteration * share) else "t2i"


@dataclass
class TaskBatch:
    task: str
    cond: Conditions  # P rows, with the negative prompt for rollout guidance
    prompts: list[str]
    metadata: list[dict]
    sources: np.ndarray | None  # uint8 [P, H, W, 3] for edits


def conditions(ctx: StageContext, prompts: list[str], sources: np.ndarray | None) -> Conditions:
    """Encoded prompts (+ negative prompts, + VAE-encoded sources) for P samples at the recipe's resolution."""
    from dreamlite.models.vae import encode, to_tensor

    dev, size, n = ctx.accelerator.device, ctx.recipe.corpus.image_size, len(prompts)
    images = None if sources is None else [Image.fromarray(s) for s in sources]
    task = "generate" if sources is None else "edit"
    text, mask = ctx.encoder.encode(prompts, images, task=task)
    neg, neg_mask = ctx.encoder.encode([""] * n, images, task=task, unconditional=True)
    source = None
    if sources is not None:
        with torch.no_grad():
            source = encode(ctx.vae, to_tensor(sources).to(dev, ctx.vae.dtype)).float()
    return Conditions(text.to(dev), mask.to(dev), torch.full((n, 2), float(size), device=dev), source,
                      neg.to(dev), neg_mask.to(dev))


def t2i_batch(ctx: StageContext, rows: list[tuple[str, dict]]) -> TaskBatch:
    prompts = [p for p, _ in rows]
    return TaskBatch("t2i", conditions(ctx, prompts, None), prompts, [m for _, m in rows], None)


def edit_batch(ctx: StageContext, cases: list) -> TaskBatch:
    sources = np.stack([c.source_image for c in cases])
    prompts = [c.instruction for c in cases]
    meta = [edit_metadata(c.source_scene, c.target_scene, c.edit_type) for c in cases]
    return TaskBatch("edit", conditions(ctx, prompts, sources), prompts, meta, sources)


def rewards_by_category(metadata: list[dict], prompt_rewards: tuple[float, ...]) -> dict[str, float]:
    """Mean reward per GenEval tag (t2i) or edit type (edit) of one iteration's prompts: the per-tag RL curves."""
    sums: dict[str, list[float]] = {}
    for meta, reward in zip(metadata, prompt_rewards, strict=True):
        sums.setdefault(meta.get("tag") or meta.get("edit_type") or "?", []).append(reward)
    return {k: float(np.mean(v)) for k, v in sorted(sums.items())}


def draw_batch(ctx: StageContext, stage: StageConfig, iteration: int) -> TaskBatch:
    """Iteration ``iteration``'s prompts (this rank's share) from the RL pools, never benchmark texts."""
    cfg, mix, acc = stage.rl, stage.mix, ctx.accelerator
    rng = rl_rng(cfg.rl_seed, iteration * acc.num_processes + acc.process_index)
    if task_of(iteration, mix) == "t2i":
        return t2i_batch(ctx, rl_t2i_prompts(rng, cfg.prompts_per_iter, mix.tag_weights or None))
    return edit_batch(ctx, rl_edit_cases(rng, cfg.prompts_per_iter, ctx.recipe.corpus.image_size,
                                         mix.edit_weights or None))


def decoder(ctx: StageContext) -> Callable[[torch.Tensor], np.ndarray]:
    from dreamlite.models.vae import decode, to_uint8

    return lambda z: to_uint8(decode(ctx.vae, z.to(ctx.vae.dtype)))


def latent_shape(ctx: StageContext) -> tuple[int, int, int]:
    from dreamlite.models.vae import downsample_factor

    h = ctx.recipe.corpus.image_size // downsample_factor(ctx.vae)
    return int(ctx.vae.config.latent_channels), h, h


@dataclass
class Snapshot:
    """The policy and EMA weights (on the CPU) at one RL iteration: the collapse guard's fall-back."""

    iteration: int
    weights: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]

    @classmethod
    def take(cls, iteration: int, model: torch.nn.Module, ema) -> "Snapshot":
        cpu = lambda d: {k: v.detach().to("cpu", copy=True) for k, v in d.items()}  # noqa: E731
        return cls(iteration, cpu(model.state_dict()), cpu(ema.shadow))


def _drift_breached(acc, row: dict | None, max_drift: float) -> bool:
    """Whether the watch (main process only) saw drift above ``max_drift``, agreed on by every process."""
    flag = torch.tensor([float(row is not None and not row["drift"] <= max_drift)], device=acc.device)
    return bool(acc.reduce(flag, reduction="sum").item() > 0)


def _stop_on_drift(ctx: StageContext, stage: StageConfig, state: LoopState, healthy: Snapshot | None,
                   reference: torch.nn.Module, model: torch.nn.Module, row: dict | None) -> None:
    """Restore the last healthy watch's weights (the stage's start when none was seen in this process), end the
    stage there and record why in ``<run>/stages/<stage>/stopped.json``."""
    if healthy is None:
        healthy = Snapshot(0, reference.state_dict(), {k: p.detach().float() for k, p in reference.named_parameters()})
    model.load_state_dict(healthy.weights)
    for k, v in healthy.ema.items():
        ctx.ema.shadow[k].copy_(v)
    if ctx.accelerator.is_main_process:
        note = {"stopped_at_iteration": state.step, "drift": None if row is None else row["drift"],
                "max_drift": stage.rl.max_drift, "restored_iteration": healthy.iteration}
        folder = ctx.run_dir / "stages" / stage.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "stopped.json").write_text(json.dumps(note, indent=1) + "\n")
        ctx.accelerator.print(f"rl stage {stage.name!r}: drift {note['drift']:.3g} > max_drift "
                              f"{stage.rl.max_drift:g} at iteration {state.step}; stopped and restored the weights "
                              f"of iteration {healthy.iteration}")
    state.global_step += stage.steps - state.step  # the stage counts as done, so a resume moves on
    state.step = stage.steps


def run_rl_stage(ctx: StageContext, stage: StageConfig, state: LoopState, resume_from=None,
                 stop_after: int | None = None) -> StageResult:
    """Run (or continue, from checkpoint ``resume_from``) the RL stage from ``state.step`` to ``stage.steps``."""
    from dreamlite.train.rl_watch import RLWatch

    cfg, acc, model = stage.rl, ctx.accelerator, ctx.accelerator.unwrap_model(ctx.unet)
    if resume_from is None and state.step == 0:
        ctx.ema.copy_to(model)  # RL starts from the evaluated weights
    reference = frozen_copy(model)
    reference.load_state_dict(frozen_weights(ctx.run_dir, stage.name, "reference", model, acc))
    old = frozen_copy(reference)
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=stage.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(stage.warmup_steps, stage.steps,
                                                                       stage.min_lr_ratio))
    generator = ctx.generator(state.stage_index)
    if resume_from is not None:
        state = load_checkpoint(resume_from, acc, ctx.unet, ctx.ema, optimizer, scheduler, generator)
        load_extra(resume_from, "old", old)
    ctx.ema.decay = stage.ema_decay
    optimizer = acc.prepare(optimizer)
    rewards, decode, shape = make_rewards(stage), decoder(ctx), latent_shape(ctx)
    sigmas = make_sigmas(cfg.sample_steps, shape[1], shape[2])
    watch = RLWatch(ctx, stage, rewards, reference) if cfg.watch_every and acc.is_main_process else None
    guard = reference if cfg.nft.kl_weight > 0 else None
    losses, t0, done, healthy, stopped = [], time.perf_counter(), 0, None, False
    while state.step < stage.steps:
        if cfg.watch_every and state.step % cfg.watch_every == 0:
            row = watch.log(state.step, model) if watch is not None else None
            if cfg.max_drift > 0:
                if not _drift_breached(acc, row, cfg.max_drift):
                    healthy = Snapshot.take(state.step, model, ctx.ema)
                else:
                    _stop_on_drift(ctx, stage, state, healthy, reference, model, row)
                    save_checkpoint(ctx.run_dir, acc, ctx.unet, ctx.ema, optimizer, scheduler, generator, state,
                                    extra={"old": old})
                    stopped = True
                    break
        batch = draw_batch(ctx, stage, state.step)
        reward_fn = latent_reward(rewards[batch.task], decode, batch.prompts, batch.metadata, cfg.nft.group_size,
                                  batch.sources)
        stats = nft_iteration(ctx.unet, old, optimizer, batch.cond, sigmas, shape, reward_fn, cfg.nft, generator,
                              guard, acc.backward)
        scheduler.step()
        state.step += 1
        state.global_step += 1
        done += 1
        ctx.ema.update(model, state.global_step)
        loss = float(np.mean(stats.losses))
        losses.append((state.global_step, loss))
        log_stage_row(ctx.run_dir, acc, {"stage": stage.name, "step": state.global_step, "loss": loss,
                                         "task": batch.task, "reward": stats.reward_mean, "signal": stats.signal,
                                         "by_category": rewards_by_category(batch.metadata, stats.prompt_rewards)})
        stopping = stop_after is not None and done >= stop_after
        if stopping or state.step % ctx.recipe.checkpoint_every == 0 or state.step == stage.steps:
            save_checkpoint(ctx.run_dir, acc, ctx.unet, ctx.ema, optimizer, scheduler, generator, state,
                            extra={"old": old})
        if stopping:
            break
    if watch is not None and state.step == stage.steps and not stopped:
        watch.log(state.step, model)
    seconds = time.perf_counter() - t0
    n = done * cfg.prompts_per_iter * cfg.nft.group_size * acc.num_processes
    return StageResult(losses, seconds, n / max(seconds, 1e-9))


__all__ = ["REWARDS", "Snapshot", "TaskBatch", "conditions", "draw_batch", "make_rewards", "rewards_by_category",
           "run_rl_stage", "task_of"]
