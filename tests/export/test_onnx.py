"""ONNX export and the onnxruntime backend: same numbers as PyTorch, int8 and int4 files, clean failures.

One tiny pipeline (32 px, 4x VAE, a shrunk ``tiny`` U-Net, MiniLM) is exported once with ``--int8 --int4`` through the
CLI; the tests compare each graph, and whole generations and edits, against the PyTorch pipeline.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from dreamlite import MobileUNet
from dreamlite.cli import main
from dreamlite.export.onnx import (
    FILES, MANIFEST_NAME, QUANT_FILES, OnnxUNet, export_onnx, load_onnx_pipeline, make_session, read_manifest,
)
from dreamlite.imageio import psnr
from dreamlite.models.text import MiniLMTextEncoder
from dreamlite.models.vae import VAEConfig, decode, encode, make_vae
from dreamlite.pipeline import DreamLitePipeline, PipelineDefaults, VariantDefaults
from dreamlite.prompts import MINILM_FORMAT

UNET = dict(block_out_channels=(32, 64, 96), num_attention_heads=(1, 2, 3), cross_attention_dim=64,
            time_embed_dim=64, size_embed_dim=8, norm_num_groups=16)
ATOL = 1e-4


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


def one_line_error(err: str, *needles: str) -> None:
    """The message is one ``error: ...`` line, the last one (loading MiniLM may draw a progress bar first)."""
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert sum("error" in line.lower() for line in lines) == 1, err
    for needle in needles:
        assert needle in lines[-1], err


def no_artefacts(parent, name) -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")], list(parent.iterdir())


@pytest.fixture(scope="module")
def encoder():
    return MiniLMTextEncoder.from_pretrained()


def make_model_dir(root, encoder, unet_config=UNET):
    """The tiny pipeline folder the export tests share, with ``unet_config`` over the ``tiny`` preset."""
    torch.manual_seed(0)
    vae = make_vae(VAEConfig(image_size=32)).eval()
    with torch.no_grad():  # a random decoder is nearly flat (pixel std ~5); gain makes pixel errors visible
        vae.decoder.layers[-1].weight.mul_(10.0)
    c = vae.config.latent_channels
    unet = MobileUNet.from_preset("tiny", in_channels=c, out_channels=c, **unet_config).eval()
    defaults = PipelineDefaults(resolution=(32, 32), variants={"base": VariantDefaults("unet", 2, 2.0, 1.5)})
    pipe = DreamLitePipeline(unet=unet, vae=vae, text_encoder=encoder, defaults=defaults)
    return pipe.save_pretrained(root / "model")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, encoder):
    return make_model_dir(tmp_path_factory.mktemp("onnx"), encoder)


@pytest.fixture(scope="module")
def torch_pipe(model_dir, encoder):
    return DreamLitePipeline.from_pretrained(model_dir, text_encoder=encoder)


@pytest.fixture(scope="module")
def exported(model_dir):
    out = model_dir.parent / "exported"
    assert main(["export", "onnx", "--model", str(model_dir), "--out", str(out), "--int8", "--int4"]) == 0
    return out


@pytest.fixture(scope="module")
def onnx_pipe(exported):
    return load_onnx_pipeline(exported)


# --------------------------------------------------------------------------------------------- layout
def test_export_writes_graphs_and_a_manifest(exported, model_dir, torch_pipe):
    m = read_manifest(exported)
    assert m["resolution"] == [32, 32]
    assert m["latent"] == {"channels": 4, "height": 8, "width": 8, "downsample": 4, "canvas": [4, 8, 16]}
    assert m["vae"]["scaling_factor"] == torch_pipe.vae.config.scaling_factor
    assert m["vae"]["shift_factor"] == torch_pipe.vae.config.shift_factor
    assert m["prompts"]["family"] == "minilm"
    assert (m["prompts"]["generate_prefix"], m["prompts"]["edit_prefix"]) == (MINILM_FORMAT.generate_prefix,
                                                                              MINILM_FORMAT.edit_prefix)
    assert m["defaults"] == json.loads((model_dir / "dreamlite.json").read_text())  # copied as is
    assert m["defaults"]["variants"]["base"]["num_inference_steps"] == 2
    assert m["scheduler"]["base_shift"] == 0.5 and m["scheduler"]["max_shift"] == 1.16
    io = m["io"]["unet"]["inputs"]
    assert io["sample"] == ["batch", 4, 8, 16]  # canvas fixed, batch dynamic
    assert io["encoder_hidden_states"] == ["batch", "text_len", 384]  # text length dynamic
    assert io["encoder_attention_mask"] == ["batch", "text_len"]
    quantized = {f"{k}_{q}": v for q, files in QUANT_FILES.items() for k, v in files.items()}
    for name, file in {**FILES, **quantized}.items():
        opset = next(o.version for o in onnx.load(str(exported / file)).opset_import if o.domain == "")
        assert m["files"][name] == {"path": file, "bytes": (exported / file).stat().st_size, "opset": opset}
        assert opset == 18 if name in FILES else opset >= 18  # the int4 embedding tables need opset 21
    assert (exported / "tokenizer" / "tokenizer.json").is_file()
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".exported.")]  # staging renamed


# --------------------------------------------------------------------------------------------- graphs
def _unet_inputs(B: int, L: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[-1, 2:] = 0  # the last row's prompt is short: padded positions must not count
    text = torch.randn(B, L, 384, generator=g) * mask[..., None]
    t = torch.rand(B, generator=g) * 1000
    return torch.randn(B, 4, 8, 16, generator=g), t, text, mask, torch.tensor([[32.0, 32.0]] * B)


@pytest.mark.parametrize("B,L", [(3, 5), (2, 12)])
def test_unet_matches_pytorch_with_padded_text(exported, torch_pipe, B, L):
    onnx_unet = OnnxUNet(make_session(exported / FILES["unet"], None), {}, [4, 8, 16])
    x, t, text, mask, ids = _unet_inputs(B, L, seed=L)
    with torch.no_grad():
        ref = torch_pipe.unet(x, t, text, mask, ids)
    out = onnx_unet(x, t, text, mask, ids)
    diff = (out - ref).abs().max().item()
    print(f"U-Net B={B} L={L}: max abs diff {diff:.2e} (output mean |v| {ref.abs().mean():.3f})")
    assert out.shape == ref.shape == (B, 4, 8, 16) and diff < ATOL
    assert ref.abs().mean() > 1e-2
    noisy = text.clone()
    noisy[-1, 2:] = 50.0  # garbage under the mask: both backends must ignore it
    torch.testing.assert_close(onnx_unet(x, t, noisy, mask, ids), out, atol=ATOL, rtol=0)
    assert (onnx_unet(x, t, text + 1, mask, ids) - out).abs().max() > 1e-3  # but the text does matter


def test_unet_refuses_another_canvas(exported):
    onnx_unet = OnnxUNet(make_session(exported / FILES["unet"], None), {}, [4, 8, 16])
    x, t, text, mask, ids = _unet_inputs(1, 4, seed=0)
    with pytest.raises(ValueError, match=r"exported for canvas \[4, 8, 16\]"):
        onnx_unet(x[..., :8], t, text, mask, ids)


def test_vae_encode_decode_match_pytorch(onnx_pipe, torch_pipe):
    g = torch.Generator().manual_seed(0)
    for h, w in [(32, 32), (24, 40)]:  # spatial axes are dynamic in the VAE graphs
        pixels = torch.rand(2, 3, h, w, generator=g) * 2 - 1
        with torch.no_grad():
            z_ref, z = encode(torch_pipe.vae, pixels), encode(onnx_pipe.vae, pixels)
            x_ref, x = decode(torch_pipe.vae, z_ref), decode(onnx_pipe.vae, z_ref)
        dz, dx = (z - z_ref).abs().max().item(), (x - x_ref).abs().max().item()
        print(f"VAE {h}x{w}: encode max abs diff {dz:.2e}, decode {dx:.2e}")
        assert z.shape == (2, 4, h // 4, w // 4) and dz < ATOL and dx < ATOL
        assert z_ref.std() > 1e-2 and x_ref.std() > 1e-2


def test_text_encoder_matches_pytorch(onnx_pipe, encoder):
    prompts = ["a red circle to the left of a blue star", "two", ""]
    for kw in (dict(task="generate"), dict(task="edit"), dict(task="generate", unconditional=True)):
        h_ref, m_ref = encoder.encode(prompts, **kw)
        h, m = onnx_pipe.text_encoder.encode(prompts, **kw)
        assert torch.equal(m, m_ref) and h.shape == h_ref.shape
        diff = (h - h_ref).abs().max().item()
        print(f"MiniLM {kw}: max abs diff {diff:.2e}")
        assert diff < ATOL
        assert h[2, int(m[2].sum()):].abs().max() == 0  # padding rows are exactly zero, as in torch


def test_text_encoder_of_a_middle_layer_matches_pytorch(encoder, tmp_path):
    """An encoder reading MiniLM layer 3 exports a graph that stops there: it matches that encoder, and not the
    last layer's states."""
    from dreamlite.export.onnx import OnnxTextEncoder, export_text_encoder

    layer3 = MiniLMTextEncoder.from_pretrained(layer=3)
    export_text_encoder(layer3, tmp_path)
    onnx_enc = OnnxTextEncoder(make_session(tmp_path / FILES["text_encoder"]), layer3.tokenizer,
                               max_length=layer3.max_length, hidden_size=layer3.hidden_size, fmt=MINILM_FORMAT, layer=3)
    prompts = ["a star left of a circle", ""]
    h_ref, _ = layer3.encode(prompts, task="generate")
    h, _ = onnx_enc.encode(prompts, task="generate")
    assert (h - h_ref).abs().max().item() < ATOL
    assert (h - encoder.encode(prompts, task="generate")[0]).abs().max().item() > 0.1
    assert onnx_enc.spec.to_dict() == {"type": "minilm", "path": None, "layer": 3}


# --------------------------------------------------------------------------------------------- pipeline
def test_pipeline_latents_match_pytorch(onnx_pipe, torch_pipe):
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    # CFG over 2 rows (generate) and 3 rows (edit); stochastic steps draw the same fresh noise on both backends
    for kw in (dict(), dict(image=src), dict(eta=1.0)):
        a = torch_pipe(["a red circle", "a blue star"], generator=torch.Generator().manual_seed(4),
                       output_type="latent", progress=False, **kw).images
        b = onnx_pipe(["a red circle", "a blue star"], generator=torch.Generator().manual_seed(4),
                      output_type="latent", progress=False, **kw).images
        diff = (a - b).abs().max().item()
        print(f"pipeline latents ({'edit' if 'image' in kw else 'generate'}, {kw.get('eta', 0)}): max abs diff "
              f"{diff:.2e}")
        assert diff < ATOL and a.abs().mean() > 0.1


def cli_images(model_dir, exported, backend, src, tmp_path, capsys) -> dict:
    """Through the CLI: torch images for seeds 5 and 6 and an edit of ``src``, and the same from ``backend``'s
    export for seed 5 and the edit; keys (backend, seed) and (backend, "edit")."""
    images = {}
    for name, model, seeds in (("torch", model_dir, (5, 6)), (backend, exported, (5,))):
        for seed in seeds:
            out = tmp_path / f"{name}-{seed}.png"
            code, _, err = run(["generate", "a green square", "-o", out, "--model", model, "--backend", name,
                                "--seed", seed], capsys)
            assert code == 0, err
            images[name, seed] = np.asarray(Image.open(out))
        out = tmp_path / f"{name}-edit.png"
        code, _, err = run(["edit", src, "make it red", "-o", out, "--model", model, "--backend", name], capsys)
        assert code == 0, err
        images[name, "edit"] = np.asarray(Image.open(out))
    gen, edit = psnr(images["torch", 5], images[backend, 5]), psnr(images["torch", "edit"], images[backend, "edit"])
    control = psnr(images["torch", 5], images["torch", 6])
    print(f"PSNR {backend} vs torch: generate {gen:.1f} dB, edit {edit:.1f} dB; other seed (control) {control:.1f} dB")
    assert gen >= 40 and edit >= 40
    assert control < 30  # the metric does see a different image
    return images


def test_cli_backend_onnx_images_match_pytorch(model_dir, exported, tmp_path, capsys):
    src = tmp_path / "src.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(src)
    images = cli_images(model_dir, exported, "onnx", src, tmp_path, capsys)
    control = psnr(images["torch", 5], images["torch", 6])
    assert images["onnx", "edit"].shape == (24, 40, 3)  # resized back to the source, as the torch path
    out = tmp_path / "int8.png"
    code, _, err = run(["generate", "a green square", "-o", out, "--model", exported, "--backend", "onnx",
                        "--int8", "--seed", 5], capsys)
    assert code == 0, err
    int8 = np.asarray(Image.open(out))
    assert psnr(images["torch", 5], int8) > control  # the int8 graphs draw the same image, up to quantisation


def test_eval_runs_on_the_onnx_backend(model_dir, exported, tmp_path, capsys):
    for backend, model in (("torch", model_dir), ("onnx", exported)):
        code, out, err = run(["eval", "geneval", "--model", model, "--backend", backend, "--limit", 2,
                              "--samples-per-prompt", 1, "--outdir", tmp_path / backend], capsys)
        assert code == 0, err
        assert "results:" in out
    a = sorted((tmp_path / "torch").rglob("*.png"))
    b = sorted((tmp_path / "onnx").rglob("*.png"))
    assert len(a) == len(b) == 2
    for pa, pb in zip(a, b):
        assert psnr(np.asarray(Image.open(pa)), np.asarray(Image.open(pb))) >= 40


def test_other_resolution_export(model_dir, torch_pipe, tmp_path):
    r = export_onnx(model_dir, tmp_path / "new" / "onnx16", resolution="16")
    assert read_manifest(r.path)["latent"]["canvas"] == [4, 4, 8] and "unet.int8.onnx" not in r.files
    pipe16 = load_onnx_pipeline(r.path)
    a = torch_pipe("a star", height=16, width=16, generator=torch.Generator().manual_seed(0), output_type="np",
                   progress=False).images
    b = pipe16("a star", generator=torch.Generator().manual_seed(0), output_type="np", progress=False).images
    assert b.shape == (1, 16, 16, 3) and psnr(a, b) >= 40
    with pytest.raises(ValueError, match="no int8 files"):
        load_onnx_pipeline(r.path, int8=True)
    with pytest.raises(ValueError, match="no int4 files; export with --int4"):
        load_onnx_pipeline(r.path, int4=["unet"])


@pytest.mark.parametrize("field,weights", [("position_embed", ".pos_proj."), ("text_position_embed", "text_pos.")])
def test_embeddings_of_place_and_token_index_export_and_match_pytorch(encoder, tmp_path, field, weights):
    """A U-Net with ``position_embed`` (its canvas coordinates are computed in the graph) or ``text_position_embed``
    (token indices of a dynamic text length) exports exactly too."""
    torch.manual_seed(1)
    vae = make_vae(VAEConfig(image_size=32)).eval()
    unet = MobileUNet.from_preset("tiny", in_channels=4, out_channels=4, **{**UNET, field: 2}).eval()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if weights in name:
                p.normal_(std=0.5)  # trained-looking: the embedding must move the output
    defaults = PipelineDefaults(resolution=(32, 32), variants={"base": VariantDefaults("unet", 2, 2.0, 1.5)})
    folder = DreamLitePipeline(unet=unet, vae=vae, text_encoder=encoder, defaults=defaults).save_pretrained(
        tmp_path / "model")
    r = export_onnx(folder, tmp_path / "onnx")
    onnx_unet = OnnxUNet(make_session(r.path / FILES["unet"], None), {}, [4, 8, 16])
    x, t, text, mask, ids = _unet_inputs(2, 6, seed=3)
    with torch.no_grad():
        ref = unet(x, t, text, mask, ids)
    assert (onnx_unet(x, t, text, mask, ids) - ref).abs().max().item() < ATOL


# --------------------------------------------------------------------------------------------- int8 / int4
# (precision, ops that must appear per graph, bound on the U-Net's relative error, on MiniLM's, min MiniLM
# token cosine); int4 also packs MiniLM's embedding tables (GatherBlockQuantized)
INT8_OPS, INT4_OPS = {"MatMulInteger", "DynamicQuantizeLinear"}, {"MatMulNBits"}
QUANT_CASES = [
    ("int8", {"unet": INT8_OPS, "text_encoder": INT8_OPS}, 0.03, 0.25, 0.9),  # measured 0.010 / 0.148 / 0.977
    ("int4", {"unet": INT4_OPS, "text_encoder": INT4_OPS | {"GatherBlockQuantized"}}, 0.10, 0.40, 0.85),
]  # int4 measured 0.058 / 0.262 / 0.924


@pytest.mark.parametrize("precision,ops,unet_bound,text_bound,min_cos", QUANT_CASES)
def test_quantized_files_are_smaller_and_close(precision, ops, unet_bound, text_bound, min_cos, exported, onnx_pipe):
    m = read_manifest(exported)["files"]
    for name, file in QUANT_FILES[precision].items():
        fp32, small = m[name]["bytes"], m[f"{name}_{precision}"]["bytes"]
        print(f"{name}: fp32 {fp32 / 1e6:.2f} MB, {precision} {small / 1e6:.2f} MB ({small / fp32:.0%})")
        assert small < 0.8 * fp32
        assert ops[name] <= {n.op_type for n in onnx.load(str(exported / file)).graph.node}
    q = load_onnx_pipeline(exported, **{precision: True})
    x, t, text, mask, ids = _unet_inputs(3, 6, seed=1)
    ref, out = onnx_pipe.unet(x, t, text, mask, ids), q.unet(x, t, text, mask, ids)
    rel = ((out - ref).norm() / ref.norm()).item()
    prompts = ["a red circle to the left of a blue star", "[x] three yellow triangles", ""]
    h_ref, mask_t = onnx_pipe.text_encoder.encode(prompts)
    h, _ = q.text_encoder.encode(prompts)
    rel_text = ((h - h_ref).norm() / h_ref.norm()).item()
    keep = mask_t.bool()
    cos = torch.nn.functional.cosine_similarity(h[keep], h_ref[keep], dim=-1).min().item()
    print(f"{precision} U-Net relative error {rel:.4f}; MiniLM relative error {rel_text:.4f}, "
          f"min token cosine {cos:.4f}")
    assert 1e-5 < rel < unet_bound  # quantized, and close
    assert 1e-5 < rel_text < text_bound and cos > min_cos


def test_one_precision_at_a_time_and_per_component(exported, onnx_pipe):
    with pytest.raises(ValueError, match="choose one weight precision, not int4 and int8"):
        load_onnx_pipeline(exported, int8=True, int4=["unet"])
    with pytest.raises(ValueError, match="int4 components must be among"):
        load_onnx_pipeline(exported, int4=["vae_decoder"])
    mixed, full = load_onnx_pipeline(exported, int4=["unet"]), load_onnx_pipeline(exported, int4=True)
    x, t, text, mask, ids = _unet_inputs(2, 5, seed=2)
    assert torch.equal(mixed.unet(x, t, text, mask, ids), full.unet(x, t, text, mask, ids))  # the 4-bit U-Net
    assert not torch.equal(mixed.unet(x, t, text, mask, ids), onnx_pipe.unet(x, t, text, mask, ids))
    prompt = ["a blue star above a red square"]
    assert torch.equal(mixed.text_encoder.encode(prompt)[0], onnx_pipe.text_encoder.encode(prompt)[0])  # float


# --------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("backend", ["onnx", "executorch"])  # both fail before any export work
def test_unwritable_destination_fails_cleanly(backend, model_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run(["export", backend, "--model", model_dir, "--out", blocker / backend], capsys)
    assert code == 2
    one_line_error(err, "cannot write", "not a folder")
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_model_without_weights_fails_cleanly(backend, model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    code, _, err = run(["export", backend, "--model", broken, "--out", tmp_path / backend], capsys)
    assert code == 2
    one_line_error(err, "diffusion_pytorch_model.safetensors")
    no_artefacts(tmp_path, backend)


def test_failure_mid_export_leaves_nothing(model_dir, tmp_path, capsys, monkeypatch):
    import dreamlite.export.onnx as mod

    def fail(*_args, **_kw):
        raise PermissionError("disk went read-only")

    monkeypatch.setattr(mod, "export_text_encoder", fail)  # after the U-Net and VAE files are written
    code, _, err = run(["export", "onnx", "--model", model_dir, "--out", tmp_path / "new" / "deeper" / "onnx"],
                       capsys)
    assert code == 2
    one_line_error(err, "disk went read-only")
    assert list(tmp_path.iterdir()) == []  # neither the staging folder nor the parents made for it remain


def test_bad_arguments_are_one_line_errors(model_dir, exported, tmp_path, capsys):
    cases = [
        (["export", "tflite", "--model", model_dir, "--out", tmp_path / "x"], "unknown export backend 'tflite'"),
        (["export", "onnx", "--model", model_dir, "--out", exported], "refusing to overwrite"),
        (["export", "onnx", "--model", model_dir, "--out", tmp_path / "x", "--resolution", "30"], "multiple of"),
        (["export", "onnx", "--model", model_dir, "--out", tmp_path / "x", "--resolution", "big"], "WxH"),
        (["generate", "a", "-o", tmp_path / "a.png", "--model", exported, "--backend", "tflite"],
         "unknown backend 'tflite'"),
        (["generate", "a", "-o", tmp_path / "a.png", "--backend", "onnx"], "needs --model"),
        (["generate", "a", "-o", tmp_path / "a.png", "--model", model_dir, "--backend", "onnx"], MANIFEST_NAME),
        (["generate", "a", "-o", tmp_path / "a.png", "--model", exported, "--backend", "onnx", "--variant",
          "mobile"], "holds the 'base' U-Net"),
        (["eval", "imgedit", "--model", exported, "--backend", "nope", "--outdir", tmp_path / "e"], "unknown backend"),
    ]
    for args, needle in cases:
        code, _, err = run(args, capsys)
        assert code == 2, (args, err)
        one_line_error(err, needle)
    assert not (tmp_path / "x").exists() and not (tmp_path / "a.png").exists()


def test_missing_shipped_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import dreamlite.paths

    monkeypatch.setattr(dreamlite.paths, "SHIPPED_MODEL", tmp_path / "missing")  # as on a checkout without it
    code, _, err = run(["export", "onnx", "--out", tmp_path / "x"], capsys)
    assert code == 2
    one_line_error(err, "shipped model", "--model")
    no_artefacts(tmp_path, "x")
