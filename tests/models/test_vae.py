"""The Shapes VAE factory, latent scaling, pixel conversion and safetensors folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamlite.models.vae import (VAEConfig, VAEError, decode, downsample_factor, encode, fit_latent_scaling,
                                  load_vae, make_vae, save_vae, set_latent_scaling, to_tensor, to_uint8,
                                  vae_config_of)

TINY = VAEConfig(image_size=32, downsample=8, latent_channels=4, encoder_width=8, decoder_width=8,
                 encoder_blocks=(0, 0, 1, 1), decoder_blocks=(1, 1, 0, 0))


@pytest.fixture()
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_vae(TINY).eval()


def _images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_default_config_shapes_and_dtypes():
    cfg = VAEConfig()  # the shipped architecture
    vae = make_vae(cfg).eval()
    assert downsample_factor(vae) == cfg.downsample
    with torch.no_grad():
        z = encode(vae, _images(2, 64))
        x = decode(vae, z)
    side = 64 // cfg.downsample
    assert z.shape == (2, cfg.latent_channels, side, side) and z.dtype == torch.float32
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert cfg.latent_size == side


def test_config_round_trips_through_the_model_and_json():
    cfg = VAEConfig(image_size=64, downsample=4, latent_channels=8, encoder_width=16, decoder_width=24,
                    encoder_blocks=(0, 1, 2), decoder_blocks=(2, 1, 0), scaling_factor=0.5, shift_factor=0.25)
    assert vae_config_of(make_vae(cfg), image_size=64) == cfg
    assert VAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("kwargs, word", [
    (dict(downsample=6), "power of two"),
    (dict(downsample=8, encoder_blocks=(1, 1, 1)), "encoder_blocks"),
    (dict(image_size=62), "multiple"),
    (dict(latent_channels=0), "latent_channels"),
    (dict(scaling_factor=0.0), "scaling_factor"),
])
def test_config_rejects_bad_values(kwargs, word):
    with pytest.raises(VAEError, match=word):
        VAEConfig(**kwargs)
    with pytest.raises(VAEError, match="unknown"):
        VAEConfig.from_dict({"widht": 3})


def test_pixels_round_trip_exactly():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    t = to_tensor(u8)
    assert t.shape == (2, 3, 8, 8) and t.dtype == torch.float32
    assert t.min() >= -1 and t.max() <= 1
    assert float(t[0, 0, 0, 0]) == pytest.approx(u8[0, 0, 0, 0] / 127.5 - 1)
    np.testing.assert_array_equal(to_uint8(t), u8)
    np.testing.assert_array_equal(to_uint8(torch.full((1, 3, 2, 2), 5.0)), np.full((1, 2, 2, 3), 255))
    with pytest.raises(VAEError, match="uint8"):
        to_tensor(u8.astype(np.float32))
    with pytest.raises(VAEError, match="shape"):
        to_tensor(u8[0])


def test_scaling_and_shift_are_applied_consistently(tiny):
    set_latent_scaling(tiny, 2.5, 0.3)
    x = _images()
    with torch.no_grad():
        raw = tiny.encode(x).latents
        z = encode(tiny, x)
        torch.testing.assert_close(z, (raw - 0.3) * 2.5)
        # decode(z) must equal the model's own decoder run on the unscaled latents
        torch.testing.assert_close(decode(tiny, z), tiny.decode(raw).sample.clamp(-1, 1))


def test_fitted_scaling_gives_zero_mean_unit_std_latents(tiny):
    x = _images(16)
    scale, shift = fit_latent_scaling(tiny, x, batch=5)
    set_latent_scaling(tiny, scale, shift)
    with torch.no_grad():
        z = encode(tiny, x)
    assert abs(float(z.mean())) < 1e-4
    assert float(z.std()) == pytest.approx(1.0, abs=1e-4)
    assert tiny.config.scaling_factor == pytest.approx(scale) and tiny.config.shift_factor == pytest.approx(shift)


def test_encode_and_decode_check_their_inputs(tiny):
    with pytest.raises(VAEError, match="multiple"):
        encode(tiny, torch.zeros(1, 3, 36, 32))
    with pytest.raises(VAEError, match=r"\[B, 3, H, W\]"):
        encode(tiny, torch.zeros(3, 32, 32))
    with pytest.raises(VAEError, match="float"):
        encode(tiny, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(VAEError, match=r"\[B, 4, h, w\]"):
        decode(tiny, torch.zeros(1, 3, 4, 4))


def test_save_load_round_trip(tiny, tmp_path):
    set_latent_scaling(tiny, 1.7, -0.2)
    out = save_vae(tiny, tmp_path / "vae", extra_files={"note.txt": b"hi"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                     "note.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["vae"]  # no temporary folder left behind
    loaded = load_vae(out)
    assert not loaded.training
    assert loaded.config.scaling_factor == pytest.approx(1.7) and loaded.config.shift_factor == pytest.approx(-0.2)
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(encode(loaded, x), encode(tiny, x), rtol=0, atol=0)
        z = encode(tiny, x)
        torch.testing.assert_close(decode(loaded, z), decode(tiny, z), rtol=0, atol=0)
    with pytest.raises(VAEError, match="already exists"):
        save_vae(tiny, out)
    set_latent_scaling(tiny, 3.0, 0.0)
    save_vae(tiny, out, overwrite=True)
    assert load_vae(out).config.scaling_factor == pytest.approx(3.0)
    assert not (out / "note.txt").exists()  # replaced as a whole, not merged


def _saved(tiny, tmp_path: Path) -> Path:
    return save_vae(tiny, tmp_path / "vae")


def test_missing_or_corrupt_folders_give_clear_errors(tiny, tmp_path):
    with pytest.raises(VAEError, match="no VAE folder"):
        load_vae(tmp_path / "nowhere")
    path = _saved(tiny, tmp_path)
    weights = path / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(VAEError, match="not a readable safetensors"):
        load_vae(path)
    weights.unlink()
    with pytest.raises(VAEError, match="no diffusion_pytorch_model.safetensors"):
        load_vae(path)
    weights.write_bytes(good)

    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    with pytest.raises(VAEError, match="does not match"):
        load_vae(path)
    (path / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKL"}))
    with pytest.raises(VAEError, match="AutoencoderKL"):
        load_vae(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(VAEError, match="not valid JSON"):
        load_vae(path)
    (path / "config.json").unlink()
    with pytest.raises(VAEError, match="no config.json"):
        load_vae(path)


def test_taesdxl_shaped_folder_loads_the_same_way(tmp_path):
    """A paper-scale folder (TAESDXL's config: 64 wide, 8x, 4 channels, unit scale) loads by path."""
    taesdxl = VAEConfig(image_size=64, downsample=8, latent_channels=4, encoder_width=64, decoder_width=64,
                        encoder_blocks=(1, 3, 3, 3), decoder_blocks=(3, 3, 3, 1))
    path = save_vae(make_vae(taesdxl), tmp_path / "taesdxl")
    vae = load_vae(path)
    assert downsample_factor(vae) == 8 and vae_config_of(vae) == taesdxl
    with torch.no_grad():
        assert encode(vae, _images(1, 64)).shape == (1, 4, 8, 8)
