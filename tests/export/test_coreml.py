"""Core ML export of the U-Net: package structure and I/O spec (read with coremltools; predicting needs macOS).

Uses the tiny pipeline of ``test_onnx.py`` (32 px, 4x VAE, so the packed canvas is [4, 8, 16]).
"""

from __future__ import annotations

import json

import pytest

import coremltools as ct  # noqa: E402  [dev] installs it: a missing converter fails here, never skips

from dreamlite.export.coreml import MAX_BATCH, PACKAGE, package_io  # noqa: E402
from test_onnx import encoder, model_dir, no_artefacts, one_line_error, run  # noqa: E402

__all__ = ["encoder", "model_dir"]  # module-scoped fixtures shared with test_onnx.py


@pytest.fixture(scope="module")
def exported(model_dir):
    from dreamlite.cli import main

    out = model_dir.parent / "coreml"
    assert main(["export", "coreml", "--model", str(model_dir), "--out", str(out)]) == 0
    return out


def test_package_structure(exported):
    pkg = exported / PACKAGE
    assert json.loads((pkg / "Manifest.json").read_text())["itemInfoEntries"]
    assert (pkg / "Data" / "com.apple.CoreML" / "model.mlmodel").is_file()
    weights = pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    assert weights.stat().st_size > 1e5  # the test U-Net's fp16 weights are there
    m = json.loads((exported / "manifest.json").read_text())
    assert m["format"] == "dreamlite-coreml" and m["latent"]["canvas"] == [4, 8, 16]
    assert m["files"]["unet"]["path"] == PACKAGE
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".coreml.")]


def test_io_spec_has_flexible_batch_and_text_length(exported):
    io = package_io(exported / PACKAGE)
    print(json.dumps(io))
    inputs = io["inputs"]
    assert list(inputs) == ["sample", "timestep", "encoder_hidden_states", "encoder_attention_mask", "time_ids"]
    batch = {"min": 1, "max": MAX_BATCH}
    assert inputs["sample"]["shape"] == [batch, 4, 8, 16]  # the canvas is fixed
    assert inputs["timestep"]["shape"] == [batch]
    text = inputs["encoder_hidden_states"]["shape"]
    assert text[0] == batch and text[2] == 384
    assert text[1]["min"] == 1 and text[1]["max"] >= 77  # flexible text length (RangeDim), up to MiniLM's window
    assert inputs["encoder_attention_mask"]["shape"] == [batch, text[1]]
    assert inputs["time_ids"]["shape"] == [batch, 2]
    assert {v["dtype"] for v in inputs.values()} == {"float32"}
    assert list(io["outputs"]) == ["velocity"]
    assert io["outputs"]["velocity"]["dtype"] == "float32"
    spec = ct.utils.load_spec(str(exported / PACKAGE))
    assert spec.WhichOneof("Type") == "mlProgram"
    assert "FLOAT16" in str(spec.mlProgram)  # fp16 compute: weights and activations are half inside the program


def test_int8_is_refused(model_dir, tmp_path, capsys):
    code, _, err = run(["export", "coreml", "--model", model_dir, "--out", tmp_path / "c", "--int8"], capsys)
    assert code == 2
    one_line_error(err, "--int8")
    no_artefacts(tmp_path, "c")


def test_unusable_converter_is_a_one_line_error(model_dir, tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("coremltools"):
            raise ImportError("libcoremlpython.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    code, _, err = run(["export", "coreml", "--model", model_dir, "--out", tmp_path / "c"], capsys)
    assert code == 2
    one_line_error(err, "Core ML converter cannot run here", "libcoremlpython.so")
    no_artefacts(tmp_path, "c")


def test_converter_failure_leaves_nothing(model_dir, tmp_path, capsys, monkeypatch):
    import dreamlite.export.coreml as mod

    def fail(*_args, **_kw):
        raise RuntimeError("unsupported op 'int'\nlong traceback text")

    monkeypatch.setattr(mod, "_unet_program", lambda *_a, **_k: None)  # skip torch.export: only convert fails
    monkeypatch.setattr(ct, "convert", fail)
    code, _, err = run(["export", "coreml", "--model", model_dir, "--out", tmp_path / "new" / "c"], capsys)
    assert code == 2
    one_line_error(err, "Core ML converter failed", "unsupported op 'int'")
    assert list(tmp_path.iterdir()) == [] and mod.PACKAGE == "unet.mlpackage"
