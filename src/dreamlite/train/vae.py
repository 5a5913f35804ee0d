"""Training of the Shapes-world VAE: an infinite stream of fresh renders, L1 + L2 + edge loss, Accelerate.

Nothing is stored on disk but the checkpoint. Batch ``k`` of a run is rendered from ``default_rng((seed, k))``,
so a resumed run sees exactly the batches an uninterrupted one would, without saving any RNG state. The
held-out set comes from a separate seed that no training stream uses.

A checkpoint folder is a diffusers ``AutoencoderTiny`` folder (config.json + safetensors, loadable with
``dreamlite.models.vae.load_vae``) plus ``vae_train.json`` (VAEConfig, VAETrainConfig, step),
``optimizer.safetensors`` (AdamW moments, for ``--resume``) and, once training ends, ``metrics.json``.
Every write is atomic (``save_vae``). At the end the latent scaling/shift factors are fitted on training
renders and stored in config.json, and reconstruction quality is measured on held-out renders.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny
from safetensors.torch import load_file, save

from dreamlite.models.vae import (VAEConfig, VAEError, decode, encode, fit_latent_scaling, load_vae, make_vae,
                                  save_vae, set_latent_scaling, to_tensor, to_uint8)
from dreamlite.shapes.render import render_batch
from dreamlite.shapes.scene import (MAX_OBJECTS, OBJECT_COLORS, Scene, layout, random_background,
                                    random_object_attrs)
from dreamlite.shapes.tasks import RESERVED_SEED_START, check_training_seed, sample_edit, sample_t2i

TRAIN_STATE = "vae_train.json"
OPTIMIZER_STATE = "optimizer.safetensors"
METRICS = "metrics.json"
HELDOUT_SEED = 0x5EED_E7A1  # held-out renders: in the benchmark seed range, apart from the shipped benchmarks'
assert HELDOUT_SEED >= RESERVED_SEED_START
STATS_STEP = -1  # the latent statistics come from the training distribution's stream at this key


@dataclass(frozen=True)
class VAETrainConfig:
    steps: int = 2000
    batch: int = 32
    lr: float = 2e-3
    size: int = 64
    seed: int = 0
    warmup: int = 50  # linear warm-up steps, then cosine decay to ``final_lr_fraction`` * lr
    final_lr_fraction: float = 0.02
    edge_weight: float = 1.0  # L1 on finite differences: anti-aliased edges carry most of the error
    save_every: int = 500
    eval_images: int = 500
    stats_images: int = 512

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "size", "save_every", "eval_images", "stats_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        check_training_seed(self.seed)
        if not self.lr > 0 or self.warmup < 0 or not 0 <= self.final_lr_fraction <= 1 or self.edge_weight < 0:
            raise ValueError(f"bad schedule/loss settings: lr={self.lr}, warmup={self.warmup}, "
                             f"final_lr_fraction={self.final_lr_fraction}, edge_weight={self.edge_weight}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VAETrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class ReconstructionMetrics:
    psnr: float  # dB over all pixels of the set (uint8 round trip), the stricter figure
    psnr_mean_per_image: float
    color_error: float  # mean RGB distance (0-255) between true and reconstructed mean colour of objects
    color_error_max: float  # worst object in the set
    images: int
    objects: int


@dataclass(frozen=True)
class VAETrainResult:
    path: Path
    steps: int
    final_loss: float
    train_seconds: float
    images_per_second: float
    scaling_factor: float
    shift_factor: float
    metrics: ReconstructionMetrics


# ------------------------------------------------------------------------------------------------- data
def sample_scenes(rng: np.random.Generator, n: int) -> list[Scene]:
    """``n`` random scenes with 0..MAX_OBJECTS objects (as many empty canvases as five-object ones)."""
    counts = rng.integers(0, MAX_OBJECTS + 1, size=n)
    return [layout(rng, random_object_attrs(rng, int(k)), random_background(rng)) for k in counts]


def sample_mix(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, list[Scene]]:
    """uint8 images [n, size, size, 3] and their scenes: a third text-to-image targets, a third edit sources
    and targets (the images the diffusion model trains on), a third random scenes of 0..5 objects (crowded
    layouts the task samplers rarely draw, so the VAE never meets them first at generation time)."""
    n_t2i = n // 3
    n_edit = (n // 3 + 1) // 2
    t2i = sample_t2i(rng, n_t2i, size)
    edit = sample_edit(rng, n_edit, size)
    crowd = sample_scenes(rng, n - n_t2i - 2 * n_edit)
    images = np.concatenate([t2i.images, edit.sources, edit.targets, render_batch(crowd, size)])
    return images, list(t2i.scenes) + list(edit.source_scenes) + list(edit.target_scenes) + crowd


def batch_images(seed: int, step: int, n: int, size: int) -> np.ndarray:
    """uint8 [n, size, size, 3] renders of training batch ``step`` of stream ``seed``."""
    rng = np.random.default_rng((seed, step) if step >= 0 else (seed, 2**32 + step))
    return sample_mix(rng, n, size)[0]


def heldout_set(n: int, size: int) -> tuple[np.ndarray, list[Scene]]:
    """The fixed held-out images and scenes (a benchmark-range seed that no training stream uses)."""
    return sample_mix(np.random.default_rng(HELDOUT_SEED), n, size)


# ------------------------------------------------------------------------------------------------- loss
def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """L1 + L2 on pixels plus ``edge_weight`` * L1 on horizontal and vertical pixel differences."""
    loss = F.l1_loss(pred, target) + F.mse_loss(pred, target)
    if edge_weight > 0:
        dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
        dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
        loss = loss + edge_weight * (F.l1_loss(dx(pred), dx(target)) + F.l1_loss(dy(pred), dy(target)))
    return loss


def lr_at(step: int, cfg: VAETrainConfig) -> float:
    """Linear warm-up then cosine decay: short CPU runs gain most from a decay to a small final rate."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    floor = cfg.final_lr_fraction
    return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


# ------------------------------------------------------------------------------------------------- metrics
def _object_colour_errors(scenes: Sequence[Scene], truth: np.ndarray, recon: np.ndarray) -> list[float]:
    """Per object: distance between its true colour and the mean reconstructed colour over its interior
    (pixels inside its box that carry exactly its colour, i.e. fully covered)."""
    errors = []
    size = truth.shape[1]
    for scene, t, r in zip(scenes, truth, recon):
        for obj in scene.objects:
            x0, y0, x1, y1 = (int(round(v * size)) for v in obj.box)
            rgb = np.array(OBJECT_COLORS[obj.color], dtype=np.float64)
            mask = np.all(t[y0:y1, x0:x1] == rgb.astype(np.uint8), axis=-1)
            if mask.any():
                mean = r[y0:y1, x0:x1][mask].astype(np.float64).mean(axis=0)
                errors.append(float(np.linalg.norm(mean - rgb)))
    return errors


@torch.no_grad()
def reconstruction_metrics(vae: AutoencoderTiny, images: np.ndarray, scenes: Sequence[Scene] | None = None,
                           batch: int = 100) -> ReconstructionMetrics:
    """PSNR of the uint8 round trip images -> encode -> decode -> uint8, and (given the images' ``scenes``)
    the object colour error."""
    device = next(vae.parameters()).device
    sq_err, per_image, colour = 0.0, [], []
    for i in range(0, len(images), batch):
        truth = images[i:i + batch]
        recon = to_uint8(decode(vae, encode(vae, to_tensor(truth).to(device))))
        err = (recon.astype(np.float64) - truth.astype(np.float64)) ** 2
        sq_err += float(err.sum())
        per_image += [10 * math.log10(255.0**2 / max(float(e.mean()), 1e-10)) for e in err]
        if scenes is not None:
            colour += _object_colour_errors(scenes[i:i + batch], truth, recon)
    mse = sq_err / max(1, images.size)
    return ReconstructionMetrics(psnr=10 * math.log10(255.0**2 / max(mse, 1e-10)),
                                 psnr_mean_per_image=float(np.mean(per_image)),
                                 color_error=float(np.mean(colour)) if colour else 0.0,
                                 color_error_max=float(np.max(colour)) if colour else 0.0,
                                 images=len(images), objects=len(colour))


# ------------------------------------------------------------------------------------------------- state
def _optimizer_bytes(opt: torch.optim.Optimizer) -> bytes:
    """AdamW moments as safetensors (key ``<param index>.<name>``): resume without pickles."""
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous().reshape(v.shape)
               for i, st in opt.state_dict()["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    return save(tensors)


def _load_optimizer(opt: torch.optim.Optimizer, path: Path) -> None:
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise VAEError(f"{path} is not a readable safetensors file ({e})") from None
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def _save(vae: AutoencoderTiny, opt: torch.optim.Optimizer, out: Path, vae_cfg: VAEConfig,
          cfg: VAETrainConfig, step: int, metrics: dict[str, Any] | None = None) -> None:
    info = {"vae_config": vae_cfg.to_dict(), "train_config": asdict(cfg), "step": step}
    extra = {TRAIN_STATE: json.dumps(info, indent=2).encode(), OPTIMIZER_STATE: _optimizer_bytes(opt)}
    if metrics is not None:
        extra[METRICS] = json.dumps(metrics, indent=2).encode()
    save_vae(vae, out, overwrite=True, extra_files=extra)


def read_train_state(out: Path) -> tuple[VAEConfig, VAETrainConfig, int]:
    """(VAEConfig, VAETrainConfig, step) of a training checkpoint folder."""
    path = out / TRAIN_STATE
    if not path.is_file():
        raise VAEError(f"{out} is not a VAE training checkpoint (no {TRAIN_STATE})")
    try:
        info = json.loads(path.read_text())
        return (VAEConfig.from_dict(info["vae_config"]), VAETrainConfig.from_dict(info["train_config"]),
                int(info["step"]))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise VAEError(f"{path} is damaged ({e})") from None


def resolve_configs(out: str | Path, resume: bool, vae_cfg: VAEConfig | None = None,
                    **overrides: Any) -> tuple[VAETrainConfig, VAEConfig]:
    """The configs a run uses: on ``resume`` the checkpoint's own, else defaults; then ``overrides`` (the
    options a user gave explicitly; None values are ignored)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if resume:
        saved_vae, saved_cfg, _ = read_train_state(Path(out))
        if vae_cfg is not None and replace(vae_cfg, scaling_factor=1.0, shift_factor=0.0) != replace(
                saved_vae, scaling_factor=1.0, shift_factor=0.0):
            raise VAEError(f"{out} was trained with a different VAE architecture ({saved_vae})")
        return replace(saved_cfg, **given), saved_vae
    cfg = VAETrainConfig(**given)
    return cfg, replace(vae_cfg or VAEConfig(), image_size=cfg.size, scaling_factor=1.0, shift_factor=0.0)


class _RoundTrip(torch.nn.Module):
    """encoder -> decoder on raw latents. AutoencoderTiny.forward would quantise the latents to uint8 (a TAESD
    preview trick) and block gradients; this wrapper is what Accelerate (and DDP) sees."""

    def __init__(self, vae: AutoencoderTiny):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.decoder(self.vae.encoder(x))


def _start(out: Path, cfg: VAETrainConfig, vae_cfg: VAEConfig, resume: bool
           ) -> tuple[AutoencoderTiny, torch.optim.Optimizer, int]:
    """Model, optimizer and first step: fresh, or restored from ``out`` on ``resume``."""
    if resume:
        _, _, step = read_train_state(out)
        vae = load_vae(out).train()
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
        _load_optimizer(opt, out / OPTIMIZER_STATE)
        return vae, opt, step
    if out.exists() and any(out.iterdir()):
        raise VAEError(f"{out} already exists and is not empty (pass --resume to continue its run)")
    torch.manual_seed(cfg.seed)
    vae = make_vae(vae_cfg).train()
    return vae, torch.optim.AdamW(vae.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0), 0


def train_vae(out: str | Path, cfg: VAETrainConfig, vae_cfg: VAEConfig, *, resume: bool = False,
              progress: bool = True) -> VAETrainResult:
    """Train (or, with ``resume``, continue) a Shapes VAE into folder ``out``; returns timings, the fitted
    latent factors and held-out metrics (also written to ``out/metrics.json``)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    out = Path(out)
    if vae_cfg.image_size != cfg.size:
        raise VAEError(f"VAEConfig.image_size {vae_cfg.image_size} differs from training size {cfg.size}")
    accelerator = Accelerator()
    vae, opt, start = _start(out, cfg, vae_cfg, resume)
    if start >= cfg.steps:
        raise VAEError(f"{out} is already at step {start}; pass --steps above it to train further")
    model, opt = accelerator.prepare(_RoundTrip(vae), opt)
    rank, world = accelerator.process_index, accelerator.num_processes
    loss_value, t0 = float("nan"), time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="vae",
               disable=not (progress and accelerator.is_main_process))
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x = to_tensor(batch_images(cfg.seed, step * world + rank, cfg.batch, cfg.size)).to(accelerator.device)
        pred = model(x)
        loss = reconstruction_loss(pred, x, cfg.edge_weight)
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        opt.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise RuntimeError(f"loss became {loss_value} at step {step}; lower --lr")
        bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
        if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps and accelerator.is_main_process:
            _save(accelerator.unwrap_model(model).vae, opt, out, vae_cfg, cfg, step + 1)
    bar.close()
    seconds = time.perf_counter() - t0
    accelerator.wait_for_everyone()
    vae = accelerator.unwrap_model(model).vae.eval()
    return _finish(vae, opt, out, vae_cfg, cfg, start, loss_value, seconds, accelerator.is_main_process)


def _finish(vae: AutoencoderTiny, opt: torch.optim.Optimizer, out: Path, vae_cfg: VAEConfig,
            cfg: VAETrainConfig, start: int, loss: float, seconds: float, main: bool) -> VAETrainResult:
    """Fit the latent factors on training renders, measure held-out quality, write the final checkpoint."""
    device = next(vae.parameters()).device
    stats = to_tensor(batch_images(cfg.seed, STATS_STEP, cfg.stats_images, cfg.size)).to(device)
    scale, shift = fit_latent_scaling(vae, stats)
    set_latent_scaling(vae, scale, shift)
    vae_cfg = replace(vae_cfg, scaling_factor=scale, shift_factor=shift)
    metrics = reconstruction_metrics(vae, *heldout_set(cfg.eval_images, cfg.size))
    ips = (cfg.steps - start) * cfg.batch / max(seconds, 1e-9)
    record = {"step": cfg.steps, "final_loss": loss, "train_seconds": round(seconds, 1),
              "train_images_per_second": round(ips, 2), "scaling_factor": scale, "shift_factor": shift,
              "heldout": asdict(metrics), "heldout_seed": HELDOUT_SEED}
    if main:
        _save(vae, opt, out, vae_cfg, cfg, cfg.steps, metrics=record)
    return VAETrainResult(path=out, steps=cfg.steps, final_loss=loss, train_seconds=seconds,
                          images_per_second=ips, scaling_factor=scale, shift_factor=shift, metrics=metrics)
