"""ExecuTorch export (XNNPACK) and the ``--backend executorch`` runtime: same numbers as PyTorch, clean
failures, and ``--int8`` refused with its reason.

The tiny pipeline of ``test_onnx.py`` (32 px, 4x VAE, a shrunk ``tiny`` U-Net, MiniLM) is exported once
through the CLI; the tests compare the U-Net program and whole CLI generations and edits against the
PyTorch pipeline.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

import executorch.runtime  # noqa: E402,F401  [dev] installs it: a missing runtime fails here, never skips

from dreamlite.export.executorch import (  # noqa: E402
    FILES, INT8_UNAVAILABLE, MAX_BATCH, TEXT_LEN, PteSession, load_executorch_pipeline, read_manifest,
)
from dreamlite.export.onnx import MANIFEST_NAME, OnnxUNet  # noqa: E402
from test_onnx import (  # noqa: E402  the tiny model, inputs and helpers of the ONNX tests
    _unet_inputs, cli_images, encoder, model_dir, no_artefacts, one_line_error, run, torch_pipe,
)

__all__ = ["encoder", "model_dir", "torch_pipe"]  # module-scoped fixtures shared with test_onnx.py
ATOL = 1e-4


def _manifest(folder):
    from dreamlite.export.executorch import FORMAT, FORMAT_VERSION

    return read_manifest(folder, fmt=FORMAT, version=FORMAT_VERSION, backend="executorch")


@pytest.fixture(scope="module")
def exported(model_dir):
    out = model_dir.parent / "executorch"
    assert main_ok(["export", "executorch", "--model", str(model_dir), "--out", str(out)])
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
    assert set(m["files"]) == set(FILES)
    for name, file in FILES.items():
        assert m["files"][name] == {"path": file, "bytes": (exported / file).stat().st_size}
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


def test_int8_is_refused_with_its_reason(model_dir, exported, tmp_path, capsys):
    code, _, err = run(["export", "executorch", "--model", model_dir, "--out", tmp_path / "et", "--int8"], capsys)
    assert code == 2
    one_line_error(err, "dependency cycles", "export onnx --int8")
    no_artefacts(tmp_path, "et")
    code, _, err = run(["generate", "a", "-o", tmp_path / "a.png", "--model", exported, "--backend", "executorch",
                        "--int8"], capsys)
    assert code == 2 and not (tmp_path / "a.png").exists()
    one_line_error(err, INT8_UNAVAILABLE.split(":")[0])


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
