"""DiffusionNFT: online RL on the forward (noising) process of a flow model.

Zheng et al. 2025, "DiffusionNFT: Online Diffusion Reinforcement with Forward Process" (arXiv 2509.16117).
One iteration:

1. **Rollout.** The old policy ``v_old`` (frozen for the iteration) samples K clean images per prompt with any
   sampler - here ``dreamlite.sampling.sample`` (Euler, optional CFG); no trajectories or likelihoods are kept.
2. **Reward.** A ``dreamlite.train.rewards.Reward`` scores them; rewards are normalised within each prompt's
   group into advantages A and mapped to an optimality probability r = 1/2 + 1/2 clip(A / scale, -1, 1).
3. **Update.** On fresh (x0, noise, t) - x0 the rollouts, x_t and the target v = noise - x0 from
   ``dreamlite.flow`` - with the trained velocity v_theta and the implicit policies

       v+ = (1 - beta) v_old + beta v_theta        (positive: where high-reward samples lie)
       v- = (1 + beta) v_old - beta v_theta        (negative: its mirror image about v_old)

   the loss is  r ||v+ - v||^2 + (1 - r) ||v- - v||^2  on the target half of the canvas only (as
   ``dreamlite.train.flow.flow_matching_loss``: float32, mean over C, h, w), plus an optional guard
   kl_weight ||v_theta - v_ref||^2 towards a frozen reference model (a KL-like penalty against reward hacking).
   Its minimiser is v_theta = v_old + (2 / beta) * (improvement direction), so beta sets the step size.
4. **Old policy.** v_old moves towards v_theta by a soft (EMA) update, old <- eta old + (1 - eta) theta.

``NFTConfig.noise = "rollout"`` (ours) replaces the fresh noise of step 3 by each sample's own starting noise, so
x_t lies on the straight line from the noise a rollout started at to the image it ended at (rectified flow's
"reflow" coupling). With fresh noise the update only learns where good images lie; with the rollout's noise it
also learns which image *that* noise should become. A decision the ODE sampler takes from the starting noise in
its first steps - which of two shapes goes left (BENCHMARKS.md, "noise or words") - is credited only this way.

At theta = theta_old the loss equals plain flow matching whatever r is, and its gradient is
2 beta (2r - 1) (v_theta - v) dv_theta/dtheta: samples better than their group's mean (r > 1/2) are fitted,
worse ones (r < 1/2) are pushed away from, r = 1/2 teaches nothing. The method needs no CFG at training time;
guidance is optional in the rollouts only.

RL prompts keep out of the benchmarks twice: seeds pass ``shapes.tasks.check_training_seed`` (benchmarks use
the reserved range), and prompts/instructions whose text occurs in the shipped benchmarks are skipped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dreamlite.flow import interpolate, sample_t_logit_normal, velocity_target
from dreamlite.sampling import NO_GUIDANCE, Conditions, Guidance, sample, velocity
from dreamlite.shapes.tasks import EditCaseSample, check_training_seed, sample_edit_cases, sample_t2i_prompts
from dreamlite.train.flow import optimizer_step

STD_MODES = ("group", "global", "none")
NOISE_MODES = ("fresh", "rollout")


@dataclass(frozen=True)
class NFTConfig:
    """Hyper-parameters of one DiffusionNFT iteration (names follow Zheng et al. 2025)."""

    group_size: int = 8  # K images per prompt
    beta: float = 1.0  # strength of the implicit guidance between v+ and v-
    std: str = "group"  # advantage normaliser Z: per-group std, batch std, or none (raw centred rewards)
    adv_scale: float = 1.0  # r = 1/2 + 1/2 clip(A / adv_scale, -1, 1)
    kl_weight: float = 0.0  # weight of ||v_theta - v_ref||^2 (needs a reference model)
    old_decay: float = 0.5  # eta of the soft update old <- eta old + (1 - eta) theta after each iteration
    epochs: int = 1  # passes over the rollouts per iteration
    minibatch: int = 8
    grad_clip: float = 1.0
    t_mean: float = 0.0  # fresh t per update: logit-normal, as the pre-training loop
    t_std: float = 1.0
    noise: str = "fresh"  # noise of the update: "fresh" (DiffusionNFT) or "rollout" (each sample's starting noise)
    guidance: Guidance = field(default_factory=Guidance)  # rollout guidance only (NFT itself is CFG-free)
    # the rollout sampler's stochasticity (``flow.ddim_step``; 0 = Euler) for generation and for edits, as a pipeline
    # variant's ``eta`` / ``edit_eta`` (not the soft update's decay, which DiffusionNFT also calls eta)
    rollout_eta: float = 0.0
    rollout_edit_eta: float = 0.0

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 to compare samples of a prompt, got {self.group_size}")
        if self.std not in STD_MODES:
            raise ValueError(f"unknown std mode {self.std!r}; known: {', '.join(STD_MODES)}")
        if not self.beta > 0 or not self.adv_scale > 0 or self.kl_weight < 0 or not 0 <= self.old_decay <= 1:
            raise ValueError("need beta > 0, adv_scale > 0, kl_weight >= 0 and old_decay in [0, 1]")
        if self.epochs < 1 or self.minibatch < 1:
            raise ValueError("epochs and minibatch must be >= 1")
        if self.noise not in NOISE_MODES:
            raise ValueError(f"unknown noise mode {self.noise!r}; known: {', '.join(NOISE_MODES)}")
        if not (0 <= self.rollout_eta <= 1 and 0 <= self.rollout_edit_eta <= 1):
            raise ValueError(f"rollout_eta and rollout_edit_eta must be in [0, 1], got {self.rollout_eta}, "
                             f"{self.rollout_edit_eta}")


# ------------------------------------------------------------------------------------------ rewards -> r
def group_advantages(rewards: Tensor, group_size: int, std: str = "group", eps: float = 1e-6) -> Tensor:
    """Rewards [P*K] (prompt-major: sample k of prompt p at p*K + k, as ``Conditions.repeat``) -> advantages [P*K].

    A = (R - mean of R's group) / Z, with Z the group's population std (``"group"``, GRPO's rule; Shao et al.
    2024), the whole batch's (``"global"``), or 1 (``"none"``); eps keeps constant groups at A = 0.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of {group_size} entries, got {tuple(rewards.shape)}")
    if std not in STD_MODES:
        raise ValueError(f"unknown std mode {std!r}; known: {', '.join(STD_MODES)}")
    g = rewards.float().reshape(-1, group_size)  # [P, K]
    centred = g - g.mean(dim=1, keepdim=True)
    if std == "group":
        centred = centred / (g.std(dim=1, unbiased=False, keepdim=True) + eps)
    elif std == "global":
        centred = centred / (rewards.float().std(unbiased=False) + eps)
    return centred.reshape(-1)


def optimality_probability(advantages: Tensor, scale: float = 1.0) -> Tensor:
    """DiffusionNFT's r = 1/2 + 1/2 clip(A / scale, -1, 1) in [0, 1]; A = 0 gives 1/2 (no signal)."""
    return 0.5 + 0.5 * (advantages.float() / scale).clamp(-1.0, 1.0)


def reward_weights(rewards: Tensor, cfg: NFTConfig) -> Tensor:
    """Raw rewards [P*K] -> r [P*K] by the config's normalisation."""
    return optimality_probability(group_advantages(rewards, cfg.group_size, cfg.std), cfg.adv_scale)


# ------------------------------------------------------------------------------------------------- loss
@dataclass(frozen=True)
class NFTLoss:
    loss: Tensor  # scalar: mean over the batch of policy + kl_weight * guard
    policy: Tensor  # scalar: mean of r ||v+ - v||^2 + (1 - r) ||v- - v||^2
    guard: Tensor  # scalar: mean ||v_theta - v_ref||^2 (0 without a reference)
    per_sample: Tensor  # [B]


def _sq_err(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error per sample, float32: [B, ...] x 2 -> [B] (the loss convention of train/flow.py)."""
    return F.mse_loss(a.float(), b.float(), reduction="none").flatten(1).mean(dim=1)


def nft_loss(v_theta: Tensor, v_old: Tensor, v_target: Tensor, r: Tensor, beta: float,
             v_ref: Tensor | None = None, kl_weight: float = 0.0) -> NFTLoss:
    """DiffusionNFT's negative-aware loss on target-half velocities [B, C, h, w]; r [B] in [0, 1].

    v+ = (1 - beta) v_old + beta v_theta, v- = (1 + beta) v_old - beta v_theta,
    loss_b = r_b ||v+ - v||^2 + (1 - r_b) ||v- - v||^2 (+ kl_weight ||v_theta - v_ref||^2), each norm a mean
    over C, h, w. ``v_old``, ``v_target`` and ``v_ref`` carry no gradient.
    """
    if r.shape != v_theta.shape[:1]:
        raise ValueError(f"r must be [B] = [{v_theta.shape[0]}], got {tuple(r.shape)}")
    v_old, v_target = v_old.detach().float(), v_target.detach().float()
    v_pos = (1.0 - beta) * v_old + beta * v_theta.float()  # [B, C, h, w]
    v_neg = (1.0 + beta) * v_old - beta * v_theta.float()
    r = r.to(v_old.device).float()
    policy = r * _sq_err(v_pos, v_target) + (1.0 - r) * _sq_err(v_neg, v_target)  # [B]
    if v_ref is not None and kl_weight > 0:
        guard = _sq_err(v_theta, v_ref.detach())
    else:
        guard = torch.zeros_like(policy)
    total = policy + kl_weight * guard
    return NFTLoss(total.mean(), policy.mean(), guard.mean(), total)


def nft_step_loss(policy: Callable, old: Callable, x0: Tensor, cond: Conditions, r: Tensor, t: Tensor,
                  noise: Tensor, beta: float, reference: Callable | None = None,
                  kl_weight: float = 0.0) -> NFTLoss:
    """``nft_loss`` for U-Nets: x0, noise [B, C, h, w] (target latents), t [B], ``cond`` B rows, no guidance.

    x_t = (1 - t) x0 + t noise and v = noise - x0 (``dreamlite.flow``); each model sees the packed canvas
    ``(x_t | source-or-blank)`` through ``sampling.velocity`` and only the target half is compared.
    """
    x_t = interpolate(x0, noise, t)  # [B, C, h, w]
    v_theta = velocity(policy, x_t, t, cond)
    with torch.no_grad():
        v_old = velocity(old, x_t, t, cond)
        v_ref = velocity(reference, x_t, t, cond) if reference is not None and kl_weight > 0 else None
    return nft_loss(v_theta, v_old, velocity_target(x0, noise), r, beta, v_ref, kl_weight)


# ------------------------------------------------------------------------------------------ the iteration
def select(cond: Conditions, index: Tensor) -> Conditions:
    """The rows ``index`` of every per-sample field of ``cond``."""
    pick = lambda x: None if x is None else x[index.to(x.device)]  # noqa: E731
    return replace(cond, text=pick(cond.text), mask=pick(cond.mask), time_ids=pick(cond.time_ids),
                   source=pick(cond.source), uncond_text=pick(cond.uncond_text), uncond_mask=pick(cond.uncond_mask))


@torch.no_grad()
def collect_rollouts(old: Callable, cond: Conditions, sigmas: Tensor, group_size: int,
                     latent_shape: tuple[int, int, int], generator: torch.Generator,
                     guidance: Guidance = NO_GUIDANCE, device: torch.device | str = "cpu", eta: float = 0.0
                     ) -> tuple[Tensor, Conditions, Tensor]:
    """K = ``group_size`` samples per prompt from the old policy: (latents [P*K, C, h, w], conditions [P*K],
    the noise each started from [P*K, C, h, w]).

    ``cond`` holds P prompts; rows are prompt-major (``Conditions.repeat``). Noise (the start, and with ``eta`` > 0
    each step's fresh noise) is drawn on the CPU from ``generator`` so a rollout is reproducible on any device.
    """
    rep = cond.repeat(group_size)
    n = rep.text.shape[0]
    noise = torch.randn(n, *latent_shape, generator=generator).to(device)
    fresh = lambda x: torch.randn(x.shape, generator=generator).to(x.device, x.dtype)  # noqa: E731
    return sample(old, noise, sigmas, rep, guidance, eta=eta, noise_sampler=fresh), rep, noise


def soft_update(old: torch.nn.Module, policy: torch.nn.Module, decay: float) -> None:
    """old <- decay * old + (1 - decay) * policy, in place (DiffusionNFT's soft update of the sampling policy;
    decay 0 copies the policy, 1 freezes the old one)."""
    with torch.no_grad():
        new = dict(policy.named_parameters())
        for name, p in old.named_parameters():
            p.lerp_(new[name].detach().to(p.dtype), 1.0 - decay)


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A detached copy in eval mode with gradients off (the old policy or the reference model)."""
    twin = copy.deepcopy(model).eval()
    twin.requires_grad_(False)
    return twin


def nft_update(policy: torch.nn.Module, old: Callable, optimizer: torch.optim.Optimizer, x0: Tensor,
               cond: Conditions, r: Tensor, cfg: NFTConfig, generator: torch.Generator,
               reference: Callable | None = None, backward: Callable[[Tensor], None] | None = None,
               start_noise: Tensor | None = None) -> list[float]:
    """``cfg.epochs`` passes of minibatch steps of ``nft_step_loss`` over rollouts x0 [N, C, h, w] with
    weights r [N]; fresh t every step, drawn from ``generator``, and fresh noise, or with ``cfg.noise ==
    "rollout"`` each sample's ``start_noise`` [N, C, h, w]. Returns the loss of each step.
    ``backward`` (e.g. ``accelerator.backward``) defaults to ``loss.backward()``."""
    n, device, losses = x0.shape[0], x0.device, []
    if cfg.noise == "rollout" and (start_noise is None or start_noise.shape != x0.shape):
        raise ValueError(f"noise='rollout' needs the rollouts' start noise of shape {tuple(x0.shape)}, got "
                         f"{None if start_noise is None else tuple(start_noise.shape)}")
    policy.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.minibatch):
            idx = order[start:start + cfg.minibatch]
            t = sample_t_logit_normal(len(idx), cfg.t_mean, cfg.t_std, generator=generator).to(device)
            if cfg.noise == "rollout":
                noise = start_noise[idx.to(start_noise.device)].to(device, x0.dtype)  # [b, C, h, w]
            else:
                noise = torch.randn(len(idx), *x0.shape[1:], generator=generator).to(device, x0.dtype)
            out = nft_step_loss(policy, old, x0[idx.to(device)], select(cond, idx), r[idx].to(device), t, noise,
                                cfg.beta, reference, cfg.kl_weight)
            losses.append(optimizer_step(policy, optimizer, out.loss, cfg.grad_clip, backward, "DiffusionNFT loss"))
    return losses


@dataclass(frozen=True)
class NFTStats:
    reward_mean: float
    reward_std: float
    r_mean: float  # 1/2 up to clipping
    signal: float  # share of samples with r != 1/2 (groups whose samples all scored alike teach nothing)
    losses: tuple[float, ...]
    prompt_rewards: tuple[float, ...] = ()  # [P] mean raw reward of each prompt's K rollouts


def nft_iteration(policy: torch.nn.Module, old: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  cond: Conditions, sigmas: Tensor, latent_shape: tuple[int, int, int],
                  reward_fn: Callable[[Tensor, Conditions], Tensor], cfg: NFTConfig, generator: torch.Generator,
                  reference: Callable | None = None, backward: Callable[[Tensor], None] | None = None) -> NFTStats:
    """One DiffusionNFT iteration for P prompts (``cond``): rollout K each with ``old``, reward, update
    ``policy``, then soft-update ``old``. ``reward_fn(latents [P*K, C, h, w], conditions) -> [P*K]`` (see
    ``latent_reward`` to decode and score with a ``Reward``)."""
    device = next(policy.parameters()).device
    eta = cfg.rollout_eta if cond.source is None else cfg.rollout_edit_eta
    x0, rep, start = collect_rollouts(old, cond, sigmas, cfg.group_size, latent_shape, generator, cfg.guidance,
                                      device, eta)
    raw = reward_fn(x0, rep).float().cpu()  # [P*K]
    if raw.shape != (x0.shape[0],):
        raise ValueError(f"reward_fn returned shape {tuple(raw.shape)} for {x0.shape[0]} samples")
    r = reward_weights(raw, cfg)
    rep = replace(rep, uncond_text=None, uncond_mask=None)  # the update is CFG-free
    losses = nft_update(policy, old, optimizer, x0, rep, r, cfg, generator, reference, backward, start)
    soft_update(old, getattr(policy, "module", policy), cfg.old_decay)  # DDP-wrapped or not
    return NFTStats(raw.mean().item(), raw.std(unbiased=False).item(), r.mean().item(),
                    (r != 0.5).float().mean().item(), tuple(losses),
                    tuple(raw.view(-1, cfg.group_size).mean(1).tolist()))  # rows are prompt-major


def latent_reward(reward: Callable, decode: Callable[[Tensor], np.ndarray], prompts: Sequence[str],
                  metadata: Sequence[Mapping], group_size: int,
                  sources: np.ndarray | None = None) -> Callable[[Tensor, Conditions], Tensor]:
    """A ``reward_fn`` for ``nft_iteration``: decode latents to uint8 images [N, H, W, 3] (e.g.
    ``lambda z: to_uint8(decode(vae, z))``) and score them with a ``Reward`` against the P prompts,
    metadata rows and optional sources, each repeated K times (prompt-major)."""
    rep = lambda xs: [x for x in xs for _ in range(group_size)]  # noqa: E731
    src = None if sources is None else np.repeat(np.asarray(sources), group_size, axis=0)

    def reward_fn(latents: Tensor, cond: Conditions) -> Tensor:
        with torch.no_grad():
            images = decode(latents)
        return reward(images, rep(prompts), rep(metadata), src)

    return reward_fn


# ---------------------------------------------------------------------------------------- prompt pools
@lru_cache(maxsize=1)
def benchmark_texts() -> frozenset[str]:
    """Every prompt and edit instruction of the shipped GenEval-Shapes and ImgEdit-Shapes benchmarks."""
    from dreamlite.bench import geneval, imgedit  # lazy: the bench loads its data files

    rows = geneval.load_metadata(geneval.default_metadata_path())
    items = imgedit.load_bench(imgedit.default_bench_path())
    return frozenset([r["prompt"] for r in rows] + [it.prompt for it in items])


def rl_rng(seed: int, iteration: int = 0) -> np.random.Generator:
    """The RL data stream of ``iteration`` for a training ``seed`` (refused in the benchmarks' range)."""
    return np.random.default_rng([check_training_seed(seed), int(iteration)])


def rl_t2i_prompts(rng: np.random.Generator, n: int, tag_weights: Mapping[str, float] | None = None,
                   phrasings: str = "train", exclude_benchmark: bool = True) -> list[tuple[str, dict]]:
    """n (prompt, GenEval metadata row) pairs for RL rollouts, none of whose text is a benchmark prompt."""
    banned = benchmark_texts() if exclude_benchmark else frozenset()
    out: list[tuple[str, dict]] = []
    for _ in range(50):
        out += [p for p in sample_t2i_prompts(rng, 2 * n, phrasings, tag_weights) if p[0] not in banned]
        if len(out) >= n:
            return out[:n]
    raise RuntimeError(f"could not draw {n} RL prompts outside the benchmark (phrasings {phrasings!r})")


def rl_edit_cases(rng: np.random.Generator, n: int, size: int = 64, type_weights: Mapping[str, float] | None = None,
                  phrasings: str = "train", exclude_benchmark: bool = True) -> list[EditCaseSample]:
    """n edit cases (source scene and image, instruction, target scene) whose instruction is not a benchmark
    instruction; score outputs with ``rewards.EditReward`` and ``rewards.edit_metadata``."""
    banned = benchmark_texts() if exclude_benchmark else frozenset()
    out: list[EditCaseSample] = []
    for _ in range(50):
        out += [c for c in sample_edit_cases(rng, 2 * n, size, phrasings, type_weights) if c.instruction not in banned]
        if len(out) >= n:
            return out[:n]
    raise RuntimeError(f"could not draw {n} RL edits outside the benchmark (phrasings {phrasings!r})")


__all__ = ["NFTConfig", "NFTLoss", "NFTStats", "NOISE_MODES", "STD_MODES", "benchmark_texts", "collect_rollouts", "frozen_copy",
           "group_advantages", "latent_reward", "nft_iteration", "nft_loss", "nft_step_loss", "nft_update",
           "optimality_probability", "reward_weights", "rl_edit_cases", "rl_rng", "rl_t2i_prompts", "select",
           "soft_update"]
