"""The image autoencoder: a small diffusers ``AutoencoderTiny`` for the Shapes world, and the one place where
latent scaling lives.

The official pipeline uses TAESDXL (an ``AutoencoderTiny``: 8x, 4 latent channels, scaling 1.0, shift 0.0).
Ours is the same class with fewer, narrower blocks, so a paper-scale TAESDXL folder loads with the same
``load_vae`` and runs through the same ``encode``/``decode``.

Latent convention (diffusers'): ``latents = (raw - shift_factor) * scaling_factor`` and the inverse on decode,
with both factors read from the model's own config. Every caller goes through ``encode``/``decode`` so no
other module ever applies (or forgets) the factors. ``fit_latent_scaling`` measures them on renders so that
training latents are zero-mean with unit std.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from diffusers import AutoencoderTiny
from safetensors import SafetensorError
from safetensors.torch import load_file

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"


class VAEError(ValueError):
    """A VAE folder, config or input tensor is unusable; the message names the problem."""


@dataclass(frozen=True)
class VAEConfig:
    """Architecture (and latent scaling) of an ``AutoencoderTiny``.

    The class needs one width per side: its stride-2 and post-upsample convolutions keep the channel count,
    so every stage of the encoder (and of the decoder) has the same width. ``encoder_blocks`` has one entry
    per stage, ``log2(downsample) + 1`` stages; the decoder's run from the latent to full resolution.
    """

    image_size: int = 64  # training resolution; the network itself is fully convolutional
    downsample: int = 4
    latent_channels: int = 4
    encoder_width: int = 32
    decoder_width: int = 48
    encoder_blocks: tuple[int, ...] = (1, 1, 1)
    decoder_blocks: tuple[int, ...] = (2, 2, 1)
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    def __post_init__(self) -> None:
        # JSON gives lists; a frozen dataclass must hold tuples to stay hashable and comparable.
        object.__setattr__(self, "encoder_blocks", tuple(int(b) for b in self.encoder_blocks))
        object.__setattr__(self, "decoder_blocks", tuple(int(b) for b in self.decoder_blocks))
        d = self.downsample
        if d < 2 or d & (d - 1):
            raise VAEError(f"downsample must be a power of two >= 2, got {d}")
        stages = int(math.log2(d)) + 1
        for name in ("encoder_blocks", "decoder_blocks"):
            blocks = getattr(self, name)
            if len(blocks) != stages or min(blocks) < 0:
                raise VAEError(f"{name} needs {stages} non-negative entries for downsample {d}, got {blocks}")
        for name in ("image_size", "latent_channels", "encoder_width", "decoder_width"):
            if getattr(self, name) < 1:
                raise VAEError(f"{name} must be positive, got {getattr(self, name)}")
        if self.image_size % d:
            raise VAEError(f"image_size {self.image_size} is not a multiple of downsample {d}")
        if not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0 and math.isfinite(self.shift_factor)):
            raise VAEError(f"scaling_factor must be finite and > 0 and shift_factor finite, got "
                           f"{self.scaling_factor}, {self.shift_factor}")

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["encoder_blocks"], d["decoder_blocks"] = list(self.encoder_blocks), list(self.decoder_blocks)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VAEConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise VAEError(f"unknown VAEConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**d)


def make_vae(cfg: VAEConfig) -> AutoencoderTiny:
    """A freshly initialised ``AutoencoderTiny`` with ``cfg``'s architecture and latent scaling."""
    stages = len(cfg.encoder_blocks)
    return AutoencoderTiny(
        in_channels=3, out_channels=3,
        encoder_block_out_channels=(cfg.encoder_width,) * stages,
        decoder_block_out_channels=(cfg.decoder_width,) * stages,
        num_encoder_blocks=cfg.encoder_blocks, num_decoder_blocks=cfg.decoder_blocks,
        latent_channels=cfg.latent_channels, upsampling_scaling_factor=2,
        act_fn="relu", upsample_fn="nearest",
        scaling_factor=float(cfg.scaling_factor), shift_factor=float(cfg.shift_factor),
    )


def downsample_factor(vae: AutoencoderTiny) -> int:
    """Pixels per latent position along each side (8 for TAESDXL)."""
    c = vae.config
    enc = 2 ** (len(c.encoder_block_out_channels) - 1)
    dec = int(c.upsampling_scaling_factor) ** (len(c.decoder_block_out_channels) - 1)
    if enc != dec:
        raise VAEError(f"encoder downsamples {enc}x but decoder upsamples {dec}x")
    return enc


def vae_config_of(vae: AutoencoderTiny, image_size: int = 64) -> VAEConfig:
    """The ``VAEConfig`` that ``make_vae`` would turn into ``vae``'s architecture (TAESDXL included)."""
    c = vae.config
    enc, dec = tuple(c.encoder_block_out_channels), tuple(c.decoder_block_out_channels)
    if len(set(enc)) != 1 or len(set(dec)) != 1:
        raise VAEError(f"per-stage widths differ ({enc}, {dec}); VAEConfig has one width per side")
    return VAEConfig(image_size=image_size, downsample=downsample_factor(vae),
                     latent_channels=int(c.latent_channels), encoder_width=enc[0], decoder_width=dec[0],
                     encoder_blocks=tuple(c.num_encoder_blocks), decoder_blocks=tuple(c.num_decoder_blocks),
                     scaling_factor=float(c.scaling_factor), shift_factor=float(c.shift_factor))


# ------------------------------------------------------------------------------------------- pixels
def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1]."""
    t = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if t.dtype != torch.uint8:
        raise VAEError(f"expected uint8 images, got {t.dtype}")
    if t.ndim != 4 or t.shape[-1] != 3:
        raise VAEError(f"expected images [B, H, W, 3], got shape {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float images [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] (clamped and rounded)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise VAEError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
    x = images.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


# ------------------------------------------------------------------------------------------- latents
def _factors(vae: AutoencoderTiny) -> tuple[float, float]:
    return float(vae.config.scaling_factor), float(vae.config.shift_factor)


def encode(vae: AutoencoderTiny, images: torch.Tensor) -> torch.Tensor:
    """Images [B, 3, H, W] in [-1, 1] -> scaled latents [B, C, H/f, W/f]; gradients flow if enabled."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise VAEError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
    f = downsample_factor(vae)
    if images.shape[2] % f or images.shape[3] % f:
        raise VAEError(f"image size {images.shape[3]}x{images.shape[2]} is not a multiple of the VAE's {f}x")
    if not images.is_floating_point():
        raise VAEError(f"expected float images in [-1, 1], got {images.dtype} (use to_tensor)")
    scale, shift = _factors(vae)
    raw = vae.encode(images, return_dict=False)[0]
    return (raw - shift) * scale


def decode(vae: AutoencoderTiny, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents [B, C, h, w] -> images [B, 3, h*f, w*f] clamped to [-1, 1]."""
    c = int(vae.config.latent_channels)
    if latents.ndim != 4 or latents.shape[1] != c:
        raise VAEError(f"expected latents [B, {c}, h, w], got shape {tuple(latents.shape)}")
    scale, shift = _factors(vae)
    raw = latents / scale + shift
    return vae.decode(raw, return_dict=False)[0].clamp(-1.0, 1.0)


@torch.no_grad()
def fit_latent_scaling(vae: AutoencoderTiny, images: torch.Tensor, batch: int = 64) -> tuple[float, float]:
    """(scaling_factor, shift_factor) that make ``images``' latents zero-mean with unit std (one scalar
    each, as the diffusers config holds). ``images`` [N, 3, H, W] in [-1, 1] should be training renders."""
    raws = [vae.encode(images[i:i + batch], return_dict=False)[0].double() for i in range(0, len(images), batch)]
    raw = torch.cat(raws)
    shift, std = raw.mean().item(), raw.std().item()
    if not std > 0:
        raise VAEError("latents have zero variance; cannot fit a scaling factor")
    return 1.0 / std, shift


def set_latent_scaling(vae: AutoencoderTiny, scaling_factor: float, shift_factor: float) -> None:
    """Store the factors in the model's config (saved with it by ``save_vae``)."""
    vae.register_to_config(scaling_factor=float(scaling_factor), shift_factor=float(shift_factor))


# ------------------------------------------------------------------------------------------- files
def _read_config(path: Path) -> dict[str, Any]:
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise VAEError(f"VAE folder {path} has no {CONFIG_NAME}")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VAEError(f"{cfg_path} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise VAEError(f"{cfg_path} must hold a JSON object")
    name = config.get("_class_name", "AutoencoderTiny")
    if name != "AutoencoderTiny":
        raise VAEError(f"{cfg_path} describes a {name}; dreamlite's VAE is an AutoencoderTiny")
    # AutoencoderTiny records ``block_out_channels`` (an alias of the decoder's) in the config it saves but
    # warns when given it back; drop the alias so loading our own folders is quiet.
    if config.get("block_out_channels") == config.get("decoder_block_out_channels"):
        config.pop("block_out_channels", None)
    return config


def load_vae(path: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> AutoencoderTiny:
    """An ``AutoencoderTiny`` from a diffusers folder (config.json + diffusion_pytorch_model.safetensors),
    in eval mode. Works for our Shapes VAE and for TAESDXL-style folders alike; only safetensors is read."""
    path = Path(path)
    if not path.is_dir():
        raise VAEError(f"no VAE folder at {path}")
    config = _read_config(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise VAEError(f"VAE folder {path} has no {WEIGHTS_NAME} (only safetensors weights are loaded)")
    try:
        vae = AutoencoderTiny.from_config(config)
    except (TypeError, ValueError) as e:
        raise VAEError(f"{path / CONFIG_NAME} is not a valid AutoencoderTiny config ({e})") from None
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise VAEError(f"{weights} is not a readable safetensors file ({e})") from None
    try:
        vae.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VAEError(f"{weights} does not match {path / CONFIG_NAME}: {first}") from None
    # nn.Module.to, not ModelMixin.to: the latter warns about fp32-pinned modules on every dtype argument,
    # even when (as here) there are none.
    return torch.nn.Module.to(vae, device=device, dtype=dtype).eval()


def save_vae(vae: AutoencoderTiny, path: str | Path, *, overwrite: bool = False,
             extra_files: Mapping[str, bytes] | None = None) -> Path:
    """Write ``vae`` (config.json + safetensors) and ``extra_files`` (name -> bytes) to folder ``path``
    atomically: everything goes to a temporary sibling that is renamed into place, so a crash never leaves
    a half-written folder. An existing ``path`` is replaced only with ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise VAEError(f"{path} already exists (pass overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp.", dir=path.parent))
    old = path.parent / f".{path.name}.old"
    try:
        vae.save_pretrained(tmp, safe_serialization=True)
        for name, data in (extra_files or {}).items():
            if Path(name).name != name:
                raise VAEError(f"extra file name {name!r} must be a plain file name")
            (tmp / name).write_bytes(data)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)  # two renames: the old folder stays intact until the new one is complete
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path
