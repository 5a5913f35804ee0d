"""The shared training loop (accelerate): one code path for 1 CPU, one GPU, N GPUs or nodes.

Every stage of a recipe runs ``train_stage``: draw a batch from the cached pools by the stage's mix, flow-
matching loss on the target half, clipped AdamW step, EMA update, and atomic checkpoints that hold
everything needed to continue exactly (model, EMA, optimizer, LR schedule, every rank's RNG/data state).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from dreamlite.flow import interpolate, sample_t_logit_normal, velocity_target
from dreamlite.train.config import StageConfig
from dreamlite.train.corpus import Pool, pad_text
from dreamlite.train.flow import drop_conditions, flow_matching_loss, predict_velocity, twin_contrast_loss
from dreamlite.train.grounding import MASK_RES, MAX_GROUPS, MAX_TOKENS, CrossAttentionProbe, grounding_loss
from dreamlite.train.mirror import MirrorSet


class EMA:
    """Exponential moving average of parameters, float32, with the usual warm-up (decay grows with steps)
    so that a fast-learning small model is not averaged with its random initialisation."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().float().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        params = dict(model.named_parameters())
        torch._foreach_lerp_(list(self.shadow.values()), [params[k].detach().float() for k in self.shadow], 1 - d)

    def copy_to(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(self.shadow[k].to(p.dtype))


@dataclass
class LoopState:
    stage_index: int = 0
    step: int = 0  # progress in the current stage: optimiser steps (flow, distill) or iterations (rl)
    global_step: int = 0
    round: int = 0  # distill stages: the round the next step belongs to


@dataclass
class StageContext:
    """What every stage driver (flow, rl, distill) shares: the run, the trained model and the frozen parts."""

    accelerator: Accelerator
    unet: torch.nn.Module  # as returned by accelerator.prepare
    ema: EMA
    vae: Any
    encoder: Any
    uncond: tuple[Tensor, Tensor]  # the negative prompt's (states [1, L, D], mask [1, L])
    pools: dict[str, Pool]
    recipe: Any  # dreamlite.train.config.Recipe
    run_dir: Path

    def generator(self, stage_index: int) -> torch.Generator:
        """The stage's torch RNG (checkpointed): one stream per (seed, stage, rank)."""
        return torch.Generator().manual_seed(self.recipe.seed * 1_000_003 + stage_index * 10_007
                                             + self.accelerator.process_index)


class BatchSampler:
    """Draws stage batches from the t2i / edit pools with the stage's task and category weights."""

    def __init__(self, pools: dict[str, Pool], stage: StageConfig, generator: torch.Generator, image_size: int,
                 mirror: MirrorSet | None = None):
        self.stage, self.g, self.size, self.mirror = stage, generator, image_size, mirror
        if (mirror is None) != (stage.mirror is None):
            raise ValueError(f"stage {stage.name!r}: " + ("asks for mirror pairs but none were given" if mirror is None
                                                          else "got mirror pairs but its config has no 'mirror'"))
        mix = stage.mix
        suffix = "" if mix.pool == "main" else f"_{mix.pool}"
        self.t2i = pools.get("t2i" + suffix) if mix.t2i > 0 else None
        self.edit = pools.get("edit" + suffix) if mix.edit > 0 else None
        if self.t2i is None and self.edit is None:
            raise ValueError(f"stage {stage.name!r} draws from no pool (mix {mix})")
        total = mix.t2i * (self.t2i is not None) + mix.edit * (self.edit is not None)
        self.n_edit = 0 if self.edit is None else round(stage.batch_size * mix.edit / total)
        self.n_t2i = stage.batch_size - self.n_edit
        self.p_t2i = self._probs(self.t2i, mix.tag_weights)
        self.p_edit = self._probs(self.edit, mix.edit_weights)
        self.twins = stage.twin_weight > 0
        pool_twins = self.twins and bool(stage.twin_tags)  # else only the mirror pairs are contrasted
        if pool_twins and (self.t2i is None or self.t2i.twin_ids is None):
            raise ValueError(f"stage {stage.name!r} asks for the twin contrast but its t2i pool has no twin prompts "
                             "(built by a recipe without twin_weight: delete the run's corpus/t2i*.safetensors "
                             "to rebuild it with them)")
        # each t2i sample's twin id, or -1 where it has none or its tag is not contrasted (once, not per batch)
        self.t2i_twins = None
        if pool_twins:
            contrasted = torch.tensor([name in stage.twin_tags for name in self.t2i.category_names])
            self.t2i_twins = torch.where(contrasted[self.t2i.categories], self.t2i.twin_ids, -1)
        elif self.twins and self.t2i is not None:
            self.t2i_twins = torch.full((len(self.t2i),), -1)
        self.ground = stage.ground_weight > 0
        if self.ground and (self.t2i is None or self.t2i.ground_tokens is None):
            raise ValueError(f"stage {stage.name!r} asks for grounded attention but its t2i pool has no object masks "
                             "(built by a recipe without ground_weight: delete the run's corpus/t2i*.safetensors "
                             "to rebuild it with them)")
        # each sample's "keeps the start anchor" flag (``stage.anchor_start_tags``), once per pool, not per batch
        self.start_flags = {id(pool): self._start_flags(pool, stage.anchor_start_tags)
                            for pool in (self.t2i, self.edit) if pool is not None and stage.anchor_start_tags}

    @staticmethod
    def _start_flags(pool: Pool, tags: tuple[str, ...]) -> Tensor:
        return torch.tensor([name in tags for name in pool.category_names])[pool.categories]  # [N]

    @staticmethod
    def _probs(pool: Pool | None, weights: dict[str, float]) -> Tensor | None:
        if pool is None:
            return None
        w = torch.tensor([weights.get(name, 1.0 if not weights else 0.0) for name in pool.category_names])
        if w.sum() <= 0:
            raise ValueError(f"category weights {weights} select nothing from {pool.category_names}")
        return w[pool.categories]

    def draw(self) -> dict[str, Tensor]:
        parts = []
        for pool, n, probs in ((self.t2i, self.n_t2i, self.p_t2i), (self.edit, self.n_edit, self.p_edit)):
            if pool is None or n == 0:
                continue
            idx = torch.multinomial(probs, n, replacement=True, generator=self.g)
            text, mask = pool.bank.gather(pool.prompt_ids[idx])
            cond = pool.cond[idx] if pool.cond is not None else torch.zeros_like(pool.x0[idx])
            parts.append(dict(x0=pool.x0[idx], cond=cond, text=text, mask=mask,
                              is_edit=torch.full((n,), pool.cond is not None)))
            if self.start_flags:  # rows that keep the start model as their anchor (consolidation)
                parts[-1]["anchor_start"] = self.start_flags[id(pool)][idx]
            if self.ground:
                parts[-1].update(_ground_rows(pool if pool is self.t2i else None, idx))
            if self.twins:
                twin = self.t2i_twins[idx] if pool is self.t2i else torch.full((n,), -1)
                twin_text, twin_mask = pool.bank.gather(twin.clamp(min=0))
                parts[-1].update(twin_text=twin_text, twin_mask=twin_mask * (twin >= 0)[:, None], has_twin=twin >= 0)
        mirror_noise = None
        if self.mirror is not None:
            mirror_part, mirror_noise = self._mirror_rows()
            parts.append(mirror_part)
        for key, mask_key in (("text", "mask"), ("twin_text", "twin_mask")) if self.twins else (("text", "mask"),):
            L = max(p[key].shape[1] for p in parts)
            for p in parts:
                p[key], p[mask_key] = pad_text(p[key], p[mask_key], L)
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        B = batch["x0"].shape[0]
        batch["time_ids"] = torch.tensor([[float(self.size), float(self.size)]] * B)
        batch["t"] = sample_t_logit_normal(B, self.stage.t_mean, self.stage.t_std, generator=self.g)
        batch["noise"] = torch.randn(batch["x0"].shape, generator=self.g)
        if mirror_noise is not None:  # reflow samples (the last rows): their own starting noise, text never dropped
            k, t_mean = mirror_noise.shape[0], self.stage.mirror.t_mean
            batch["noise"][B - k:] = mirror_noise
            batch["keep_text"] = torch.arange(B) >= B - k
            # one t per pair: a prompt and its twin then share x_t up to the mirrored image, and only their texts
            # can tell the two targets apart (with a t each, the pair is two unrelated samples)
            t_pair = sample_t_logit_normal(k // 2, self.stage.t_mean if t_mean is None else t_mean,
                                           self.stage.t_std, generator=self.g)  # [k / 2]
            batch["t"][B - k:] = torch.cat([t_pair, t_pair])  # prompts, then their twins
        return batch

    def _mirror_rows(self) -> tuple[dict[str, Tensor], Tensor]:
        """``per_batch`` mirror pairs (each rollout's prompt, then its twin: ``train.mirror.MirrorSet.gather``) as
        a batch part, and their starting noise."""
        idx = torch.randint(len(self.mirror), (self.stage.mirror.per_batch,), generator=self.g)
        rows = self.mirror.gather(idx)
        n = rows["x0"].shape[0]
        part = dict(x0=rows["x0"], cond=torch.zeros_like(rows["x0"]), text=rows["text"], mask=rows["mask"],
                    is_edit=torch.zeros(n, dtype=torch.bool))
        if self.stage.anchor_start_tags:
            part["anchor_start"] = torch.zeros(n, dtype=torch.bool)  # data targets (keep_text), never anchored
        if self.ground:
            part.update(_ground_rows(None, torch.zeros(n, dtype=torch.long)))
        if self.twins:  # each row is contrasted with the other row's text: the prompt's with its twin's, and back
            swap = torch.cat([torch.arange(n // 2, n), torch.arange(n // 2)])
            part.update(twin_text=rows["text"][swap], twin_mask=rows["mask"][swap],
                        has_twin=torch.ones(n, dtype=torch.bool))
        return part, rows["noise"]


def _ground_rows(pool: Pool | None, idx: Tensor) -> dict[str, Tensor]:
    """Grounding tokens and masks of rows ``idx`` of ``pool``; rows without any (edits, mirror pairs) when None."""
    if pool is not None:
        return dict(ground_tokens=pool.ground_tokens[idx], ground_masks=pool.ground_masks[idx])
    n = len(idx)
    return dict(ground_tokens=torch.full((n, MAX_GROUPS, MAX_TOKENS), -1, dtype=torch.long),
                ground_masks=torch.zeros(n, MAX_GROUPS, MASK_RES, MASK_RES, dtype=torch.float16))


def lr_lambda(warmup: int, steps: int | None = None, min_ratio: float = 1.0) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, then constant (``min_ratio`` 1) or a cosine decay
    that reaches ``min_ratio`` at step ``steps`` (annealing at the end of a short CPU stage lowers its loss)."""

    def f(step: int) -> float:
        if step < warmup or min_ratio >= 1.0 or steps is None:
            return min(1.0, (step + 1) / max(1, warmup))
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


# ------------------------------------------------------------------------------------------- checkpoints
def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if path.is_dir() else None


def save_checkpoint(run_dir: Path, accelerator: Accelerator, unet, ema: EMA, optimizer, scheduler,
                    generator: torch.Generator, state: LoopState, keep: int = 2,
                    extra: dict[str, torch.nn.Module] | None = None,
                    extra_optimizers: dict[str, torch.optim.Optimizer] | None = None) -> Path:
    """Atomic: everything goes into a temp folder that is renamed only when complete. ``extra`` models (the RL
    old policy, a distillation teacher) are saved as ``<name>.safetensors``, read back with ``load_extra``;
    ``extra_optimizers`` (a DMD fake network's) as ``<name>_optimizer.pt``, read back by ``load_checkpoint``."""
    ckpts = run_dir / "checkpoints"
    name = f"ckpt-{state.global_step:07d}"
    tmp = ckpts / f".{name}.tmp"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_file({"state": generator.get_state()}, str(tmp / f"rng_rank{accelerator.process_index}.safetensors"))
    model_state = accelerator.get_state_dict(unet)
    if accelerator.is_main_process:
        accelerator.unwrap_model(unet).save_config(tmp / "unet")  # config.json, then the (possibly gathered) weights
        save_file({k: v.contiguous() for k, v in model_state.items()},
                  str(tmp / "unet" / "diffusion_pytorch_model.safetensors"))
        save_file({k: v.contiguous() for k, v in ema.shadow.items()}, str(tmp / "ema.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
        for key, module in (extra or {}).items():
            weights = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
            save_file(weights, str(tmp / f"{key}.safetensors"))
        for key, opt in (extra_optimizers or {}).items():
            torch.save(opt.state_dict(), tmp / f"{key}_optimizer.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = ckpts / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        pointer_tmp = ckpts / ".latest.tmp"
        pointer_tmp.write_text(name)
        os.replace(pointer_tmp, ckpts / "latest")
        for old in sorted(p for p in ckpts.glob("ckpt-*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return ckpts / name


def load_checkpoint(path: Path, accelerator: Accelerator, unet, ema: EMA, optimizer, scheduler,
                    generator: torch.Generator,
                    extra_optimizers: dict[str, torch.optim.Optimizer] | None = None) -> LoopState:
    weights = load_file(str(path / "unet" / "diffusion_pytorch_model.safetensors"))
    accelerator.unwrap_model(unet).load_state_dict(weights)
    ema.shadow = load_file(str(path / "ema.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    for key, opt in (extra_optimizers or {}).items():
        opt.load_state_dict(torch.load(path / f"{key}_optimizer.pt", weights_only=True))
    scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    rng = path / f"rng_rank{accelerator.process_index}.safetensors"
    generator.set_state(load_file(str(rng))["state"])
    return LoopState(**json.loads((path / "state.json").read_text()))


def load_extra(path: Path, name: str, module: torch.nn.Module) -> None:
    """Load the ``extra`` model ``name`` of checkpoint ``path`` into ``module``."""
    module.load_state_dict(load_file(str(path / f"{name}.safetensors")))


def frozen_weights(run_dir: Path, stage: str, name: str, module: torch.nn.Module,
                   accelerator: Accelerator) -> dict[str, Tensor]:
    """Weights fixed for a whole stage (the RL reference, the distillation base): written once to
    ``<run>/stages/<stage>/<name>.safetensors`` (atomically, main process) from ``module``, read back after."""
    path = run_dir / "stages" / stage / f"{name}.safetensors"
    if not path.is_file() and accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return load_file(str(path))


def log_stage_row(run_dir: Path, accelerator: Accelerator, row: dict, filename: str = "loss.jsonl") -> None:
    if accelerator.is_main_process:
        with open(run_dir / filename, "a") as f:
            f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------------------ loop
def stage_loss(unet, batch: dict[str, Tensor], text: Tensor, mask: Tensor, cond: Tensor, dropped: Tensor,
               stage: StageConfig, device, uncond: tuple[Tensor, Tensor] | None = None,
               anchor: Anchors | None = None) -> tuple[Tensor, tuple[Tensor, float] | None, Tensor | None]:
    """The flow-matching loss of a batch (conditions already dropped), and with ``stage.twin_weight`` the twin
    contrast of its samples that have a twin, kept their text and have t >= ``stage.twin_min_t``, with the share
    of them whose own prompt explained the image better (None when the batch has none). The twins ride in the same
    forward as the batch, so that DDP sees one forward per backward; with ``stage.twin_cap_uncond`` so do the pairs
    under ``uncond`` (the negative prompt's states [1, L0, D] and mask [1, L0]). With ``anchor`` (the frozen
    models of ``stage.anchor_weight``) the rows that are not mirror pairs regress onto their velocity instead.
    Third: with ``stage.ground_weight``, the grounded-attention loss of the batch's rows that kept their text and
    have object masks (``train.grounding``; None when none has), from the same forward's cross-attention."""
    x0, t, noise, time_ids = batch["x0"], batch["t"], batch["noise"], batch["time_ids"]
    B = x0.shape[0]
    target, weight = anchored_targets(anchor, batch, text, mask, cond, stage.anchor_weight, device)
    pair = (batch["has_twin"] & ~dropped & (t >= stage.twin_min_t) if "has_twin" in batch
            else torch.zeros(B, dtype=torch.bool))
    n = int(pair.sum())
    if n:
        rows = [(batch["twin_text"][pair], batch["twin_mask"][pair])]
        if stage.twin_cap_uncond:
            rows.append((uncond[0].expand(n, -1, -1), uncond[1].expand(n, -1)))
        L = max(text.shape[1], *(r[0].shape[1] for r in rows))
        padded = [pad_text(text, mask, L)] + [pad_text(*r, L) for r in rows]
        text, mask = torch.cat([p[0] for p in padded]), torch.cat([p[1] for p in padded])  # [B + k n, L, D]
        x0, cond, t, noise, time_ids = (torch.cat([v] + [v[pair]] * len(rows))
                                        for v in (x0, cond, t, noise, time_ids))
        if target is not None:  # a twin row is scored against its own row's target
            target = torch.cat([target] + [target[pair.to(target.device)]] * len(rows))
    probe = CrossAttentionProbe(unet) if stage.ground_weight > 0 else nullcontext()
    with probe:
        err = flow_matching_loss(unet, x0.to(device), cond.to(device), text.to(device), mask.to(device),
                                 time_ids.to(device), t.to(device), noise.to(device), reduce=False,
                                 target=target)  # [B + k n]
    ground = None
    if stage.ground_weight > 0:
        canvas = (x0.shape[-2], 2 * x0.shape[-1])  # the canvas packs (target | cond)
        maps = [m[:B] for m in probe.maps(canvas, stage.ground_min_side)]  # only the levels the loss reads
        ground = grounding_loss(maps, batch["ground_tokens"], batch["ground_masks"], ~dropped)
    loss = err[:B].mean() if weight is None else (weight * err[:B]).mean()
    if not n:
        return loss, None, ground
    own, twin = err[:B][pair.to(device)], err[B:B + n]
    capped = err[B + n:] if stage.twin_cap_uncond else None
    return loss, (twin_contrast_loss(own, twin, stage.twin_scale, capped), (own < twin).float().mean().item()), ground


@dataclass(frozen=True)
class Anchors:
    """The frozen models a stage with ``anchor_weight`` regresses its rows onto: ``main`` for every anchored row (the
    network as the stage starts, or ``stage.anchor_from``), ``start`` for the rows of ``stage.anchor_start_tags``
    (the network as the stage starts; None when those tags are unset)."""
    main: torch.nn.Module
    start: torch.nn.Module | None = None


def anchored_targets(anchor: Anchors | None, batch: dict[str, Tensor], text: Tensor, mask: Tensor,
                     cond: Tensor, anchor_weight: float, device) -> tuple[Tensor | None, Tensor | None]:
    """Velocity targets [B, C, h, w] and per-row loss weights [B] for a batch with anchors: a frozen model's
    velocity (same x_t, t, conditions as dropped) on every row but the mirror pairs (``keep_text``), which keep the
    data's; ``anchor.start``'s on the rows flagged ``anchor_start``, ``anchor.main``'s on the rest; (None, None)
    without anchors."""
    if anchor is None:
        return None, None
    x0, t, noise, time_ids = (batch[k].to(device) for k in ("x0", "t", "noise", "time_ids"))
    none = torch.zeros(x0.shape[0], dtype=torch.bool)
    rows = ~batch.get("keep_text", none).to(device)  # [B]
    on_start = batch.get("anchor_start", none).to(device) & rows  # [B]
    if on_start.any() and anchor.start is None:
        raise ValueError("the batch flags rows for the start anchor (anchor_start_tags) but no start anchor is set")
    target = velocity_target(x0, noise).float()  # [B, C, h, w]
    with torch.no_grad():
        for model, sel in ((anchor.main, rows & ~on_start), (anchor.start, on_start)):
            if not sel.any():
                continue
            x_t = interpolate(x0[sel], noise[sel], t[sel])
            target[sel] = predict_velocity(model, x_t, cond.to(device)[sel], text.to(device)[sel],
                                           mask.to(device)[sel], time_ids[sel], t[sel]).float()
    weight = torch.where(rows, anchor_weight, 1.0)  # [B]
    return target, weight


@dataclass
class StageResult:
    losses: list[tuple[int, float]]
    seconds: float
    samples_per_s: float


def train_stage(accelerator: Accelerator, unet, ema: EMA, make_sampler: Callable, stage: StageConfig,
                uncond: tuple[Tensor, Tensor], state: LoopState, run_dir: Path, seed: int,
                checkpoint_every: int, resume_from: Path | None = None,
                stop_after: int | None = None, anchor: Anchors | None = None) -> StageResult:
    """Train one stage from ``state.step`` to ``stage.steps``; resumes from ``resume_from`` when given.

    ``make_sampler(stage, generator)`` returns an object whose ``draw()`` gives a batch dict (x0, cond, text,
    mask, is_edit, time_ids, t, noise): ``BatchSampler`` over cached Shapes pools, or a streaming loader over
    real data. All randomness flows from ``generator``, whose state is checkpointed. ``anchor``: the frozen models
    that a stage with ``anchor_weight`` regresses its batch onto (``recipe.stage_anchor``).
    """
    if (stage.anchor_weight > 0) != (anchor is not None):
        raise ValueError(f"stage {stage.name!r}: anchor_weight {stage.anchor_weight} needs exactly one anchor model "
                         f"(got {'none' if anchor is None else 'one'})")
    if anchor is not None and bool(stage.anchor_start_tags) != (anchor.start is not None):
        raise ValueError(f"stage {stage.name!r}: anchor_start_tags {stage.anchor_start_tags} need a start anchor "
                         f"beside the main one, and only they do (got {'none' if anchor.start is None else 'one'})")
    model = accelerator.unwrap_model(unet)
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=stage.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(stage.warmup_steps, stage.steps,
                                                                       stage.min_lr_ratio))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + state.stage_index * 10_007 + accelerator.process_index)
    if resume_from is not None:
        state = load_checkpoint(resume_from, accelerator, unet, ema, optimizer, scheduler, generator)
    ema.decay = stage.ema_decay
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    sampler = make_sampler(stage, generator)
    log_path = run_dir / "loss.jsonl"
    losses: list[tuple[int, float]] = []
    t0, done = time.perf_counter(), 0
    bar = tqdm(total=stage.steps, initial=state.step, desc=f"stage {stage.name}",
               disable=not accelerator.is_local_main_process)
    unet.train()
    twin_log: list[tuple[float, float]] = []
    ground_log: list[float] = []
    while state.step < stage.steps:
        batch = sampler.draw()
        uncond_text, uncond_mask = uncond
        text, mask, cond, dropped = drop_conditions(batch["text"], batch["mask"], batch["cond"], batch["is_edit"],
                                                    uncond_text, uncond_mask, stage.p_drop_text, stage.p_drop_image,
                                                    generator, keep=batch.get("keep_text"))
        with accelerator.autocast():
            loss, twin, ground = stage_loss(unet, batch, text, mask, cond, dropped, stage, accelerator.device,
                                            uncond, anchor)
        total = loss if twin is None else loss + stage.twin_weight * twin[0]
        accelerator.backward(total if ground is None else total + stage.ground_weight * ground)
        if twin is not None:
            twin_log.append((twin[0].item(), twin[1]))
        if ground is not None:
            ground_log.append(ground.item())
        if stage.grad_clip:
            accelerator.clip_grad_norm_(unet.parameters(), stage.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.global_step += 1
        ema.update(model, state.global_step)
        done += 1
        value = accelerator.reduce(loss.detach(), "mean").item()
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at stage {stage.name} step {state.step}")
        losses.append((state.global_step, value))
        if accelerator.is_main_process and (state.step % 10 == 0 or state.step == stage.steps):
            row = {"stage": stage.name, "step": state.global_step, "loss": value}
            if twin_log:  # mean since the last row: the contrast, and how often the prompt beat its twin
                row.update(twin_loss=sum(c for c, _ in twin_log) / len(twin_log),
                           twin_accuracy=sum(a for _, a in twin_log) / len(twin_log))
                twin_log.clear()
            if ground_log:  # mean since the last row: 0 = every clause's attention inside its objects
                row.update(ground_loss=sum(ground_log) / len(ground_log))
                ground_log.clear()
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
        stopping = stop_after is not None and done >= stop_after  # checkpointed, so resume continues here
        if stopping or state.step % checkpoint_every == 0 or state.step == stage.steps:
            save_checkpoint(run_dir, accelerator, unet, ema, optimizer, scheduler, generator, state)
        if stopping:
            break
    bar.close()
    seconds = time.perf_counter() - t0
    return StageResult(losses, seconds, done * stage.batch_size * accelerator.num_processes / max(seconds, 1e-9))
