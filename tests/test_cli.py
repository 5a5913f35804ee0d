import struct
import zlib

import pytest
import torch
from PIL import Image

from dreamlite import MobileUNet
from dreamlite.cli import main
from dreamlite.models.text import MiniLMTextEncoder
from dreamlite.models.vae import VAEConfig, make_vae
from dreamlite.pipeline import DreamLitePipeline, PipelineDefaults, VariantDefaults

UNET = dict(block_out_channels=(32, 64, 64), num_attention_heads=(1, 2, 2), cross_attention_dim=64,
            time_embed_dim=64, size_embed_dim=8, norm_num_groups=16, transformer_layers_per_block=(1, 1, 1),
            mid_transformer_layers=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = make_vae(VAEConfig(image_size=32)).eval()
    c = vae.config.latent_channels
    unet = MobileUNet.from_preset("tiny", in_channels=c, out_channels=c, **UNET).eval()
    defaults = PipelineDefaults(resolution=(32, 32), variants={"base": VariantDefaults("unet", 2, 2.0, 1.5)})
    pipe = DreamLitePipeline(unet=unet, vae=vae, text_encoder=MiniLMTextEncoder.from_pretrained(), defaults=defaults)
    return pipe.save_pretrained(tmp_path_factory.mktemp("cli") / "model")


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def test_help_and_info(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    code, out, _ = run(["info"], capsys)
    assert code == 0 and "389,968,388" in out and "tiny" in out


def test_generate_and_edit_write_images(model_dir, tmp_path, capsys):
    out = tmp_path / "g.png"
    code, _, err = run(["generate", "a red circle", "-o", str(out), "--model", str(model_dir), "--seed", "1"], capsys)
    assert code == 0, err
    assert Image.open(out).size == (32, 32)
    src = tmp_path / "src.png"
    Image.new("RGBA", (40, 24), (0, 0, 255, 255)).save(src)
    edited = tmp_path / "e.png"
    code, _, err = run(["edit", str(src), "make it red", "-o", str(edited), "--model", str(model_dir)], capsys)
    assert code == 0, err
    assert Image.open(edited).size == (40, 24)
    code, _, err = run(["generate", "a red circle", "-o", str(out), "--model", str(model_dir), "--width", "48"],
                       capsys)
    assert code == 0, err
    assert Image.open(out).size == (48, 32)
    code, _, err = run(["edit", str(src), "make it red", "-o", str(edited), "--model", str(model_dir),
                        "--buckets", "v765"], capsys)
    assert code == 0, err
    assert Image.open(edited).size == (40, 24)  # ran at the nearest bucket, resized back to the source
    code, _, err = run(["edit", str(src), "make it red", "-o", str(tmp_path / "x.png"), "--model", str(model_dir),
                        "--buckets", "v99"], capsys)
    assert code == 2 and "unknown bucket table 'v99'" in err and not (tmp_path / "x.png").exists()


def _png_header_only(path, width, height):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.mark.parametrize("case, message", [
    ("missing", "image not found"),
    ("not_image", "is not a readable image"),
    ("bomb", "decompression bomb"),
])
def test_bad_source_images(case, message, model_dir, tmp_path, capsys):
    src = tmp_path / "src.png"
    if case == "not_image":
        src.write_text("hello")
    elif case == "bomb":
        _png_header_only(src, 50_000, 50_000)
    out = tmp_path / "o.png"
    code, _, err = run(["edit", str(src), "make it red", "-o", str(out), "--model", str(model_dir)], capsys)
    assert code == 2 and message in err
    assert not out.exists() and not list(tmp_path.glob(".o.png*"))


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--guidance", "-1"], "--guidance must be >= 0"),
    (["--guidance-max-sigma", "1.5"], "--guidance-max-sigma must be in (0, 1]"),
    (["--eta", "2"], "--eta must be in [0, 1], got 2.0"),
    (["--width", "40"], "multiples of 16"),
    (["--int8"], "--int8 selects the quantised files of an exported folder; use it with --backend onnx or executorch"),
    (["--int4"], "use it with --backend onnx"),
])
def test_bad_sampling_arguments(extra, message, model_dir, tmp_path, capsys):
    out = tmp_path / "o.png"
    code, _, err = run(["generate", "a star", "-o", str(out), "--model", str(model_dir), *extra], capsys)
    assert code == 2 and message in err and not out.exists()


def test_empty_prompt_and_missing_model(model_dir, tmp_path, capsys):
    code, _, err = run(["generate", "  ", "-o", str(tmp_path / "o.png"), "--model", str(model_dir)], capsys)
    assert code == 2 and "prompt is empty" in err
    code, _, err = run(["generate", "a star", "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "nope")],
                       capsys)
    assert code == 2 and "model folder not found" in err
    code, _, err = run(["generate", "a star", "-o", str(tmp_path / "no" / "o.png"), "--model", str(model_dir)],
                       capsys)
    assert code == 2 and "output folder does not exist" in err


def test_long_prompt_is_truncated_with_a_warning(model_dir, tmp_path, capsys):
    out = tmp_path / "o.png"
    with pytest.warns(UserWarning, match="truncated"):
        code, _, err = run(["generate", "red circle " * 1000, "-o", str(out), "--model", str(model_dir)], capsys)
    assert code == 0 and out.exists()
