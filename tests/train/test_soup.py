"""Model soups: the weighted mean is exact, a one-hot soup is its ingredient, mismatched ingredients and bad
arguments fail with a message naming the problem and leave no output behind."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from dreamlite import MobileUNet
from dreamlite.cli import main
from dreamlite.models.text import TextEncoderSpec
from dreamlite.models.vae import VAEConfig, make_vae
from dreamlite.pipeline import CONFIG_NAME, PipelineDefaults, VariantDefaults, load_unet
from dreamlite.train.soup import SOUP_FILE, WEIGHTS_FILE, average_states, make_soup, normalised_weights

UNET = dict(block_out_channels=(32, 64, 96), num_attention_heads=(1, 2, 3), cross_attention_dim=64,
            time_embed_dim=64, size_embed_dim=8, norm_num_groups=16, in_channels=4, out_channels=4)


def _folder(root, name, seed, vae_seed=0, variants=None, **unet_overrides):
    """A pipeline folder (unet/, vae/, text_encoder/spec.json, dreamlite.json) with a seeded random U-Net."""
    torch.manual_seed(vae_seed)
    folder = root / name
    make_vae(VAEConfig(image_size=32)).save_pretrained(folder / "vae", safe_serialization=True)
    torch.manual_seed(seed)
    MobileUNet.from_preset("tiny", **{**UNET, **unet_overrides}).save_pretrained(folder / "unet",
                                                                                 safe_serialization=True)
    (folder / "text_encoder").mkdir()
    (folder / "text_encoder" / "spec.json").write_text(json.dumps(TextEncoderSpec(type="minilm").to_dict()))
    defaults = PipelineDefaults(resolution=(32, 32),
                                variants=variants or {"base": VariantDefaults("unet", 2, 2.0, 1.5)})
    (folder / CONFIG_NAME).write_text(json.dumps(defaults.to_dict()))
    return folder


def _state(folder):
    return load_unet(folder / "unet").state_dict()


def test_weights_are_normalised_and_checked():
    assert normalised_weights(3) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert normalised_weights(2, [3, 1]) == (0.75, 0.25)
    for bad, needle in [([1, 2, 3], "3 weights for 2"), ([1, -1], ">= 0"), ([0, 0], "positive sum"),
                        ([float("nan"), 1], "finite"), ([float("inf"), 1], "finite")]:
        with pytest.raises(ValueError, match=needle):
            normalised_weights(2, bad)


def test_average_states_is_the_weighted_mean():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, -2.0]), "n": torch.tensor(3)}
    out = average_states([a, b], (0.25, 0.75))
    assert torch.equal(out["w"], torch.tensor([2.5, -1.0])) and out["w"].dtype == torch.float32
    assert out["n"].item() == 3
    with pytest.raises(ValueError, match="integer buffer n"):
        average_states([a, {**b, "n": torch.tensor(4)}], (0.5, 0.5))
    with pytest.raises(ValueError, match="extra"):
        average_states([a, {**b, "x": torch.zeros(1)}], (0.5, 0.5))
    with pytest.raises(ValueError, match="shape of w"):
        average_states([a, {**b, "w": torch.zeros(3)}], (0.5, 0.5))


def test_soup_folder_holds_the_mean_and_its_provenance(tmp_path):
    a, b, c = (_folder(tmp_path, n, seed) for n, seed in (("a", 1), ("b", 2), ("c", 3)))
    out = make_soup([a, b, c], tmp_path / "soup", weights=[2, 1, 1])
    sa, sb, sc, soup = _state(a), _state(b), _state(c), _state(out)
    for k in sa:
        torch.testing.assert_close(soup[k], 0.5 * sa[k] + 0.25 * sb[k] + 0.25 * sc[k], rtol=0, atol=1e-6)
    config = json.loads((out / SOUP_FILE).read_text())
    assert config["weights"] == [0.5, 0.25, 0.25] and config["variant"] == "base"
    assert config["ingredients"] == [str(a), str(b), str(c)]
    assert config["sha256"] == [hashlib.sha256((f / "unet" / WEIGHTS_FILE).read_bytes()).hexdigest() for f in (a, b, c)]
    assert (out / "vae" / "config.json").read_text() == (a / "vae" / "config.json").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".soup.")]


def test_the_soup_is_a_model_folder_with_the_first_folders_other_variants(tmp_path):
    two = {"base": VariantDefaults("unet", 2, 2.0, 1.5), "mobile": VariantDefaults("unet_mobile", 4, 1.0, 1.0)}
    a, b = _folder(tmp_path, "a", 1, variants=two), _folder(tmp_path, "b", 2, variants=two)
    for f, seed in ((a, 3), (b, 4)):
        torch.manual_seed(seed)
        MobileUNet.from_preset("tiny", **UNET).save_pretrained(f / "unet_mobile", safe_serialization=True)
    (a / "stages.md").write_text("training records of a")
    out = make_soup([a, b], tmp_path / "soup", variant="mobile")
    sa, sb, soup = (load_unet(f / "unet_mobile").state_dict() for f in (a, b, out))
    for k in sa:
        torch.testing.assert_close(soup[k], 0.5 * sa[k] + 0.5 * sb[k], rtol=0, atol=1e-6)
    assert (out / "unet" / WEIGHTS_FILE).read_bytes() == (a / "unet" / WEIGHTS_FILE).read_bytes()  # a's base kept
    assert not (out / "stages.md").exists() and json.loads((out / SOUP_FILE).read_text())["variant"] == "mobile"


def test_every_ingredient_gives_the_first_ones_variant(tmp_path):
    a = _folder(tmp_path, "a", 1)
    student = _folder(tmp_path, "s", 2, variants={"mobile": VariantDefaults("unet", 4, 1.0, 1.0)})
    student_json = json.loads((student / CONFIG_NAME).read_text())
    student_json["default_variant"] = "mobile"
    (student / CONFIG_NAME).write_text(json.dumps(student_json))
    with pytest.raises(ValueError, match="has no variant 'base'"):  # never a base averaged with a student
        make_soup([a, student], tmp_path / "soup")


def test_ingredients_must_read_the_same_text_states(tmp_path):
    a = _folder(tmp_path, "a", 1)
    layer3 = _folder(tmp_path, "l3", 2, variants={"base": VariantDefaults("unet", 2, 2.0, 1.5, text_layer=3)})
    with pytest.raises(ValueError, match="read other text states"):
        make_soup([a, layer3], tmp_path / "soup")


def test_a_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import dreamlite.train.soup as soup_module

    a, b = _folder(tmp_path, "a", 1), _folder(tmp_path, "b", 2)
    (tmp_path / "empty").mkdir()  # an existing empty folder is a fine destination

    def disk_full(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(soup_module, "save_file", disk_full)
    with pytest.raises(OSError, match="no space"):
        make_soup([a, b], tmp_path / "empty")
    assert not any((tmp_path / "empty").iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".empty.")]
    monkeypatch.undo()
    assert (make_soup([a, b], tmp_path / "empty") / SOUP_FILE).is_file()


def test_a_one_hot_soup_computes_its_ingredient(tmp_path):
    a, b = _folder(tmp_path, "a", 1), _folder(tmp_path, "b", 2)
    soup = load_unet(make_soup([b, a], tmp_path / "soup", weights=[0, 1]) / "unet")
    ref = load_unet(a / "unet")
    x = torch.randn(1, 4, 8, 16)  # (B, C, H, 2W): the packed canvas
    text = torch.randn(1, 5, ref.config.text_embed_dim)  # (B, L, D)
    t, size = torch.tensor([0.3]), torch.tensor([[32.0, 32.0]])  # (B,), (B, 2): time, (width, height)
    with torch.no_grad():
        assert torch.equal(soup(x, t, text, time_ids=size), ref(x, t, text, time_ids=size))


def test_mismatched_ingredients_fail_and_write_nothing(tmp_path):
    a = _folder(tmp_path, "a", 1)
    other_net = _folder(tmp_path, "wide", 2, block_out_channels=(32, 64, 192))
    other_vae = _folder(tmp_path, "vae", 2, vae_seed=5)
    with pytest.raises(ValueError, match="block_out_channels"):
        make_soup([a, other_net], tmp_path / "s1")
    with pytest.raises(ValueError, match="different VAE weights"):
        make_soup([a, other_vae], tmp_path / "s2")
    with pytest.raises(ValueError, match="at least two"):
        make_soup([a], tmp_path / "s3")
    with pytest.raises(FileNotFoundError, match="not found"):
        make_soup([a, tmp_path / "missing"], tmp_path / "s4")
    with pytest.raises(ValueError, match="no variant 'mobile'"):
        make_soup([a, a], tmp_path / "s5", variant="mobile")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "vae", "wide"]


def test_cli_soup_and_its_errors(tmp_path, capsys):
    a, b = _folder(tmp_path, "a", 1), _folder(tmp_path, "b", 2)
    assert main(["soup", str(a), str(b), "--out", str(tmp_path / "soup"), "--weights", "1,3"]) == 0
    assert "0.750" in capsys.readouterr().out
    assert json.loads((tmp_path / "soup" / SOUP_FILE).read_text())["weights"] == [0.25, 0.75]
    assert main(["soup", str(a), str(b), "--out", str(tmp_path / "soup")]) == 2  # exists: refused
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["soup", str(a), str(b), "--out", str(tmp_path / "s2"), "--weights", "1,x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --weights") and not (tmp_path / "s2").exists()
