import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dreamlite import MobileUNet
from dreamlite.cli import main
from dreamlite.models.official import ConversionError, convert_official, load_official, translate_config


@pytest.fixture()
def official_folder(tmp_path, official_dir):
    """The tiny official model laid out as a diffusers folder."""
    folder = tmp_path / "official" / "unet"
    folder.mkdir(parents=True)
    shutil.copy(official_dir / "tiny_config.json", folder / "config.json")
    shutil.copy(official_dir / "tiny_weights.safetensors", folder / "diffusion_pytorch_model.safetensors")
    return folder


def run_cases(model, vectors):
    for case in "abc":
        args = [vectors[f"{case}.{k}"] for k in
                ("sample", "timestep", "encoder_hidden_states", "encoder_attention_mask", "time_ids")]
        with torch.no_grad():
            out = model(*args)
        yield case, out, vectors[f"{case}.out"]  # outside no_grad: a suspended generator must not hold it


def test_converted_tiny_official_reproduces_reference(tmp_path, official_folder, official_dir):
    dst = tmp_path / "ours"
    assert main(["convert-official", str(official_folder.parent), str(dst)]) == 0
    model = MobileUNet.from_pretrained(dst).eval()
    vectors = load_file(str(official_dir / "tiny_vectors.safetensors"))
    for case, out, ref in run_cases(model, vectors):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg=f"case {case}")
    # save_pretrained -> from_pretrained leaves every output unchanged
    model.save_pretrained(tmp_path / "again")
    again = MobileUNet.from_pretrained(tmp_path / "again").eval()
    for (_, a, _), (_, b, _) in zip(run_cases(model, vectors), run_cases(again, vectors)):
        assert torch.equal(a, b)


def test_intermediates_match(official_dir):
    model = load_official(official_dir / "tiny_weights.safetensors", official_dir / "tiny_config.json")
    v = load_file(str(official_dir / "tiny_vectors.safetensors"))
    seen = {}
    for name in ("conv_in", "time_embedding", "add_embedding", "encoder_hid_proj", "mid_block",
                 "down_blocks.0.resnets.0", "down_blocks.0.attentions.0"):
        model.get_submodule(name).register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o))
    with torch.no_grad():
        model(v["a.sample"], v["a.timestep"], v["a.encoder_hidden_states"], v["a.encoder_attention_mask"],
              v["a.time_ids"])
    for name, out in seen.items():
        torch.testing.assert_close(out, v[f"a.inter.{name}"], atol=1e-5, rtol=1e-5, msg=name)


def test_paper_config_translates_to_paper_preset(official_dir):
    official = json.loads((official_dir / "tiny_config.json").read_text())
    official.update(block_out_channels=[256, 512, 896], attention_head_dim=[4, 8, 14],
                    transformer_layers_per_block=[1, 2, 4], norm_num_groups=32, encoder_hid_dim=2048,
                    cross_attention_dim=2304, addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=512)
    from dreamlite.presets import PRESETS
    assert translate_config(official) == dict(PRESETS["dreamlite-0.39b"])


def _expect_failure(tmp_path, folder, message, capsys):
    dst = tmp_path / "out"
    assert main(["convert-official", str(folder), str(dst)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert not dst.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def _rewrite(folder, edit):
    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_missing_key_is_named(tmp_path, official_folder, capsys):
    _rewrite(official_folder, lambda s: s.pop("conv_out.bias"))
    _expect_failure(tmp_path, official_folder, "missing key(s), e.g. ['conv_out.bias']", capsys)


def test_extra_key_is_named(tmp_path, official_folder, capsys):
    _rewrite(official_folder, lambda s: s.__setitem__("bogus.weight", torch.zeros(3)))
    _expect_failure(tmp_path, official_folder, "unexpected key(s), e.g. ['bogus.weight']", capsys)


def test_wrong_shape_is_named(tmp_path, official_folder, capsys):
    _rewrite(official_folder, lambda s: s.__setitem__("conv_in.bias", torch.zeros(17, dtype=torch.float16)))
    _expect_failure(tmp_path, official_folder, "conv_in.bias: checkpoint (17,) vs model (16,)", capsys)


def test_corrupt_safetensors(tmp_path, official_folder, capsys):
    path = official_folder / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    _expect_failure(tmp_path, official_folder, "not a readable safetensors file", capsys)


def test_unsupported_config_is_named(tmp_path, official_folder, capsys):
    cfg = json.loads((official_folder / "config.json").read_text())
    cfg["down_block_types"][0] = "SimpleCrossAttnDownBlock2D"
    (official_folder / "config.json").write_text(json.dumps(cfg))
    _expect_failure(tmp_path, official_folder, "SimpleCrossAttnDownBlock2D", capsys)
    cfg["down_block_types"][0] = "CrossAttnDownRemoveSelfAttnBlock2D"
    cfg["resnet_time_scale_shift"] = "scale_shift"
    (official_folder / "config.json").write_text(json.dumps(cfg))
    _expect_failure(tmp_path, official_folder, "resnet_time_scale_shift", capsys)


def test_file_plus_config_and_deepspeed_prefix(tmp_path, official_dir):
    state = load_file(str(official_dir / "tiny_weights.safetensors"))
    save_file({f"module.{k}": v for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    model = convert_official(tmp_path / "w.safetensors", tmp_path / "out", config=official_dir / "tiny_config.json")
    assert (tmp_path / "out" / "config.json").is_file()
    assert model.conv_in.weight.dtype == torch.float32


def test_pickle_weights_refused(tmp_path, official_dir):
    (tmp_path / "w.bin").write_bytes(b"not allowed")
    with pytest.raises(ConversionError, match="only .safetensors"):
        convert_official(tmp_path / "w.bin", tmp_path / "out", config=official_dir / "tiny_config.json")
