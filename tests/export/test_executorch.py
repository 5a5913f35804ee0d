"""ExecuTorch export (XNNPACK) and the ``--backend executorch`` runtime: same numbers as PyTorch, int8 programs
close to fp32 at every batch size, clean failures.

The tiny pipeline of ``test_onnx.py`` (32 px, 4x VAE, a shrunk ``tiny`` U-Net, MiniLM) is exported once
through the CLI with ``--int8``; the tests compare the U-Net program and whole CLI generations and edits against
the PyTorch pipeline, and the int8 programs against the fp32 ones.
"""

from __future__ import annotations


import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import executorch.runtime  # noqa: E402,F401  [dev] installs it: a missing runtime fails here, never skips

from dreamlite.export.executorch import (  # noqa: E402
    FILES, INT8_BATCHES, INT8_FILES, MAX_BATCH, TEXT_LEN, PteSession, load_executorch_pipeline, read_manifest,
)
from dreamlite.export.onnx import MANIFEST_NAME, OnnxUNet  # noqa: E402
from dreamlite.imageio import psnr  # noqa: E402
from test_onnx import (  # noqa: E402  the tiny model, inputs and helpers of the ONNX tests
    UNET, _unet_inputs, cli_images, encoder, make_model_dir, no_artefacts, one_line_error, run, torch_pipe,
)

__all__ = ["encoder", "torch_pipe"]  # module-scoped fixtures shared with test_onnx.py
ATOL = 1e-4
BATCHES = [1, 2]  # int8 programs of the fixture (the default adds 3)
# ONNX's test network with one ResNet per level and one transformer per attention level: every kind of block is
# still there, and lowering to XNNPACK (most of CI's time) takes half as long (fp32 U-Net 128 s instead of 266 s,
# each int8 program 83 s instead of 144 s, on the 2-core CI machine).
UNET_ET = {**UNET, "layers_per_block": 1, "transformer_layers_per_block": (1, 1, 1), "mid_transformer_layers": 1}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, encoder):
    return make_model_dir(tmp_path_factory.mktemp("executorch"), encoder, UNET_ET)


def _manifest(folder):
    from dreamlite.export.executorch import FORMAT, FORMAT_VERSION

    return read_manifest(folder, fmt=FORMAT, version=FORMAT_VERSION, backend="executorch")


@pytest.fixture(scope="module")
def exported(model_dir):
    out = model_dir.parent / "executorch"
    assert main_ok(["export", "executorch", "--model", str(model_dir), "--out", str(out), "--int8",
                    "--int8-batches", ",".join(map(str, BATCHES))])
    return out


def main_ok(args) -> bool:
    from dreamlite.cli import main

    return main(args) == 0


def _unet(folder):
    m = _manifest(folder)
    return OnnxUNet(PteSession(folder / m["files"]["unet"]["path"], m["io"]["unet"]), {}, m["latent"]["canvas"])


def test_export_writes_programs_and_a_manifest(exported):
    m = _manifest(exported)
    assert m["delegate"] == "xnnpack" and m["latent"]["canvas"] == [4, 8, 16]
    assert set(m["files"]) == set(FILES) | {f"{name}_int8" for name in INT8_FILES}
    for name, file in FILES.items():
        assert m["files"][name] == {"path": file, "bytes": (exported / file).stat().st_size}
    for name, folder in INT8_FILES.items():  # one fixed-batch program per size
        programs = sorted(p.name for p in (exported / folder).iterdir())
        assert programs == [f"b{n}.pte" for n in BATCHES]
        size = sum((exported / folder / p).stat().st_size for p in programs)
        assert m["files"][f"{name}_int8"] == {"path": folder, "batches": BATCHES, "bytes": size}
        assert m["io"][f"{name}_int8"]["attention_mask" if name == "text_encoder" else "sample"]["shape"][0] == {
            "name": "batch", "sizes": BATCHES}
    assert list(INT8_BATCHES) == [1, 2, 3]  # the CLI's default: the CFG rows of one image
    shape = m["io"]["unet"]["encoder_hidden_states"]["shape"]
    assert shape[0] == {"name": "batch", "min": 1, "max": MAX_BATCH}
    assert shape[1] == {"name": "text_len", "pad_to": TEXT_LEN} and shape[2] == 384  # padded, not dynamic
    assert m["text_encoder"]["max_length"] == TEXT_LEN  # the tokenizer truncates at the programs' window
    assert m["io"]["unet"]["sample"]["shape"][1:] == [4, 8, 16]
    assert (exported / "tokenizer" / "tokenizer.json").is_file()
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".executorch.")]


@pytest.mark.parametrize("B,L", [(3, 5), (8, 12)])  # 8 > MAX_BATCH: run in chunks
def test_unet_program_matches_pytorch(exported, torch_pipe, B, L):
    unet = _unet(exported)
    x, t, text, mask, ids = _unet_inputs(B, L, seed=L)
    with torch.no_grad():
        ref = torch_pipe.unet(x, t, text, mask, ids)
    out = unet(x, t, text, mask, ids)
    diff = (out - ref).abs().max().item()
    print(f"ExecuTorch U-Net B={B} L={L}: max abs diff {diff:.2e} (mean |v| {ref.abs().mean():.3f})")
    assert out.shape == ref.shape == (B, 4, 8, 16) and diff < ATOL and ref.abs().mean() > 1e-2
    with pytest.raises(ValueError, match="exported for canvas"):
        unet(x[..., :8], t, text, mask, ids)


# --------------------------------------------------------------------------------------------- int8
@pytest.mark.parametrize("B", [1, 2, 5])  # one program each; 2 + 2 + 1 chunks
def test_int8_unet_programs_are_smaller_and_close(exported, B):
    fp32, int8 = load_executorch_pipeline(exported), load_executorch_pipeline(exported, int8=["unet"])
    x, t, text, mask, ids = _unet_inputs(B, 6, seed=B)
    ref, out = fp32.unet(x, t, text, mask, ids), int8.unet(x, t, text, mask, ids)
    rel = ((out - ref).norm() / ref.norm()).item()
    m = _manifest(exported)["files"]
    one = (exported / INT8_FILES["unet"] / "b1.pte").stat().st_size
    print(f"int8 U-Net B={B}: relative error {rel:.4f}; one program {one / 1e6:.2f} MB vs fp32 "
          f"{m['unet']['bytes'] / 1e6:.2f} MB")
    assert out.shape == ref.shape and 1e-5 < rel < 0.03  # quantized, and close
    assert one < 0.8 * m["unet"]["bytes"]
    assert [rows for _, rows, _ in int8.unet.session.chunks(B)] == {1: [1], 2: [2], 5: [2, 2, 1]}[B]
    assert torch.equal(int8.text_encoder.encode(["a star"])[0], fp32.text_encoder.encode(["a star"])[0])


def test_int8_text_encoder_programs_are_smaller_and_close(exported):
    fp32, int8 = load_executorch_pipeline(exported), load_executorch_pipeline(exported, int8=True)
    prompts = ["a red circle to the left of a blue star", "[x] three yellow triangles", "", "a heart", "two stars"]
    h_ref, mask = fp32.text_encoder.encode(prompts)
    h, mask_q = int8.text_encoder.encode(prompts)  # 5 prompts: chunks of 2, 2 and 1
    keep = mask.bool()
    rel = ((h - h_ref).norm() / h_ref.norm()).item()
    cos = torch.nn.functional.cosine_similarity(h[keep], h_ref[keep], dim=-1).min().item()
    m = _manifest(exported)["files"]
    one = (exported / INT8_FILES["text_encoder"] / "b1.pte").stat().st_size
    print(f"int8 MiniLM: relative error {rel:.4f}, min token cosine {cos:.4f}; one program {one / 1e6:.2f} MB vs "
          f"fp32 {m['text_encoder']['bytes'] / 1e6:.2f} MB")
    assert torch.equal(mask, mask_q) and 1e-5 < rel < 0.25 and cos > 0.9
    assert one < 0.8 * m["text_encoder"]["bytes"]


def test_cli_int8_generation_draws_the_same_image(model_dir, exported, tmp_path, capsys):
    images = {}
    for name, extra in (("torch", ["--model", model_dir]), ("other", ["--model", model_dir, "--seed", 6]),
                        ("int8", ["--model", exported, "--backend", "executorch", "--int8"])):
        out = tmp_path / f"{name}.png"
        code, _, err = run(["generate", "a green square", "-o", out, "--seed", 5, *extra], capsys)
        assert code == 0, err
        images[name] = np.asarray(Image.open(out))
    control = psnr(images["torch"], images["other"])
    assert psnr(images["torch"], images["int8"]) > control + 5  # the same image up to quantisation


def test_int8_needs_its_programs(model_dir, exported, tmp_path, capsys):
    fp32_only = tmp_path / "fp32"  # as written without --int8 (a second export would take minutes)
    shutil.copytree(exported, fp32_only)
    manifest = json.loads((fp32_only / MANIFEST_NAME).read_text())
    for name, folder in INT8_FILES.items():
        shutil.rmtree(fp32_only / folder)
        del manifest["files"][f"{name}_int8"], manifest["io"][f"{name}_int8"]
    (fp32_only / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert load_executorch_pipeline(fp32_only).unet.session.path.name == "unet.pte"
    with pytest.raises(ValueError, match="has no int8 files; export with --int8"):
        load_executorch_pipeline(fp32_only, int8=["unet"])
    with pytest.raises(ValueError, match="int8 components must be among"):
        load_executorch_pipeline(exported, int8=["vae_decoder"])
    broken = tmp_path / "broken"
    shutil.copytree(exported, broken)
    (broken / INT8_FILES["unet"] / "b2.pte").unlink()
    with pytest.raises(ValueError, match=r"lacks the programs for batch \[2\]"):
        load_executorch_pipeline(broken, int8=True)
    for flags, needle in ((["--int4"], "--int4 is not available for ExecuTorch"),
                          (["--int8", "--int8-batches", "2,3"], "must be positive and include 1"),
                          (["--int8", "--int8-batches", "1,x"], "--int8-batches must be comma-separated integers")):
        code, _, err = run(["export", "executorch", "--model", model_dir, "--out", tmp_path / "et4", *flags], capsys)
        assert code == 2
        one_line_error(err, needle)
        no_artefacts(tmp_path, "et4")


def test_cli_backend_executorch_images_match_pytorch(model_dir, exported, tmp_path, capsys):
    src = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(src)
    cli_images(model_dir, exported, "executorch", src, tmp_path, capsys)  # >= 40 dB for a generation and an edit


# --------------------------------------------------------------------------------------------- errors
def test_failure_mid_export_leaves_nothing(model_dir, tmp_path, capsys, monkeypatch):
    import dreamlite.export.executorch as mod

    def fail(unet, folder, *_args, **_kw):
        (folder / mod.FILES["unet"]).write_bytes(b"half a program")  # something written, then the failure
        raise PermissionError("disk went read-only")

    monkeypatch.setattr(mod, "export_unet", fail)
    code, _, err = run(["export", "executorch", "--model", model_dir, "--out", tmp_path / "new" / "et"], capsys)
    assert code == 2
    one_line_error(err, "disk went read-only")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_one_line_errors(model_dir, exported, tmp_path, capsys):
    cases = [
        (["generate", "a", "-o", tmp_path / "a.png", "--backend", "executorch"], "needs --model"),
        (["generate", "a", "-o", tmp_path / "a.png", "--model", model_dir, "--backend", "executorch"],
         MANIFEST_NAME),
        (["export", "executorch", "--model", model_dir, "--out", exported], "refusing to overwrite"),
        (["generate", "a", "-o", tmp_path / "a.png", "--model", exported, "--backend", "executorch", "--variant",
          "mobile"], "holds the 'base' U-Net"),
    ]
    for args, needle in cases:
        code, _, err = run(args, capsys)
        assert code == 2, (args, err)
        one_line_error(err, needle)
    assert not (tmp_path / "a.png").exists()


def test_pipeline_loads_by_function(exported):
    pipe = load_executorch_pipeline(exported)
    assert isinstance(pipe.unet, OnnxUNet) and pipe.unet.session.path.name == "unet.pte"
    assert pipe.text_encoder.session.path.name == "text_encoder.pte"
