"""VAE training: loss goes down, checkpoints are atomic and complete, resume continues, CLI errors are clean."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dreamlite.cli import main
from dreamlite.models.vae import VAEConfig, VAEError, encode, load_vae, make_vae, to_tensor
from dreamlite.train.vae import (VAETrainConfig, batch_images, heldout_set, lr_at, read_train_state,
                                 reconstruction_loss,
                                 reconstruction_metrics, resolve_configs, train_vae)

TINY = VAEConfig(image_size=32, downsample=8, latent_channels=4, encoder_width=8, decoder_width=8,
                 encoder_blocks=(0, 0, 1, 1), decoder_blocks=(1, 1, 0, 0))
FAST = dict(batch=8, size=32, lr=5e-3, warmup=2, eval_images=16, stats_images=32)


def _loss(vae: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(reconstruction_loss(vae.decoder(vae.encoder(x)), x, 1.0))


def test_twenty_steps_lower_the_loss_and_write_a_complete_checkpoint(tmp_path):
    out = tmp_path / "vae"
    cfg, vae_cfg = resolve_configs(out, False, TINY, steps=20, save_every=10, **FAST)
    x = to_tensor(batch_images(123, 0, 16, 32))
    torch.manual_seed(cfg.seed)
    before = _loss(make_vae(vae_cfg), x)  # the run's own initial weights (same seed)

    result = train_vae(out, cfg, vae_cfg, progress=False)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]  # no temporary folder left
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                     "metrics.json", "optimizer.safetensors", "vae_train.json"]
    vae = load_vae(out)
    after = _loss(vae, x)
    assert after < 0.7 * before, (before, after)

    saved_vae, saved_cfg, step = read_train_state(out)
    assert step == 20 and saved_cfg == cfg
    assert saved_vae.scaling_factor == pytest.approx(result.scaling_factor)
    assert vae.config.scaling_factor == pytest.approx(result.scaling_factor)
    assert vae.config.shift_factor == pytest.approx(result.shift_factor)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout"]["psnr"] == pytest.approx(result.metrics.psnr)
    assert metrics["heldout"]["images"] == 16 and 5 < result.metrics.psnr < 60
    # the fitted factors normalise the statistics renders: zero mean, unit std
    with torch.no_grad():
        z = encode(vae, to_tensor(batch_images(cfg.seed, -1, 32, 32)))
    assert abs(float(z.mean())) < 1e-3 and float(z.std()) == pytest.approx(1.0, abs=1e-3)


def test_resume_continues_from_the_saved_step(tmp_path):
    out = tmp_path / "vae"
    cfg, vae_cfg = resolve_configs(out, False, TINY, steps=6, **FAST)
    train_vae(out, cfg, vae_cfg, progress=False)
    with pytest.raises(VAEError, match="not empty"):
        train_vae(out, cfg, vae_cfg, progress=False)
    with pytest.raises(VAEError, match="already at step 6"):
        train_vae(out, *resolve_configs(out, True), resume=True, progress=False)
    cfg2, vae_cfg2 = resolve_configs(out, True, steps=9)
    assert cfg2 == VAETrainConfig(**{**cfg.__dict__, "steps": 9}) and vae_cfg2.encoder_width == 8
    result = train_vae(out, cfg2, vae_cfg2, resume=True, progress=False)
    assert read_train_state(out)[2] == 9 and result.steps == 9
    with pytest.raises(VAEError, match="different VAE architecture"):
        resolve_configs(out, True, VAEConfig(image_size=32))


def test_data_stream_is_deterministic_and_mixes_tasks():
    a, b = batch_images(0, 5, 7, 32), batch_images(0, 5, 7, 32)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, batch_images(0, 6, 7, 32))
    assert a.dtype == np.uint8 and a.shape == (7, 32, 32, 3)
    images, scenes = heldout_set(9, 32)
    assert images.shape == (9, 32, 32, 3) and len(scenes) == 9
    assert not np.array_equal(images[:7], batch_images(0, 0, 7, 32))
    with pytest.raises(ValueError, match="reserved for benchmarks"):
        VAETrainConfig(seed=2_000_000_000)


def test_lr_schedule_warms_up_then_decays():
    cfg = VAETrainConfig(steps=100, lr=1.0, warmup=10, final_lr_fraction=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(100, cfg) == pytest.approx(0.1)
    assert lr_at(55, cfg) == pytest.approx(0.55)


def test_metrics_detect_colour_errors(tmp_path):

    class Tint(torch.nn.Module):
        """A fake 'VAE' whose round trip adds a fixed offset (to check the metric's arithmetic)."""

        def __init__(self):
            super().__init__()
            self.config = make_vae(VAEConfig(image_size=32, latent_channels=3)).config  # identity "latents"
            self.w = torch.nn.Parameter(torch.zeros(1))

        def encode(self, x, return_dict=False):
            return (x,)

        def decode(self, z, return_dict=False):
            return (z + 10 / 127.5,)

    images, scenes = heldout_set(6, 32)
    m = reconstruction_metrics(Tint(), images, scenes, batch=4)
    # every pixel off by 10 (except saturated white channels) -> PSNR near 28.1 dB, colour error <= 10*sqrt(3)
    assert 28.0 < m.psnr < 29.5 and m.objects > 0
    assert 9.0 < m.color_error <= 10 * 3**0.5 + 1e-6
    assert m.color_error_max == pytest.approx(10 * 3**0.5)


def test_cli_train_vae_reports_bad_input_cleanly(tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert main(["train", "vae", "--out", str(tmp_path / "busy"), "--steps", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["train", "vae", "--out", str(tmp_path / "new"), "--steps", "0"]) == 2
    assert "steps must be positive" in capsys.readouterr().err
    assert main(["train", "vae", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "not a VAE training checkpoint" in capsys.readouterr().err
