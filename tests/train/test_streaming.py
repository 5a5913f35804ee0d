"""The streaming real-data sampler and the real-data runner (``dreamlite train real``).

Data: the solid-colour fixtures of tests/data/real_data_fixtures.py, so each latent row can be traced back to
the one image (and caption) it came from. Models: a random tiny VAE (4x, 4 channels) and the tiny random
Qwen3-VL of tests/qwen_fixture.py; buckets 32x32 and 64x32 px, so every test stays at a few seconds.
"""

import dataclasses
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from dreamlite.cli import main
from dreamlite.data.buckets import fit_to_bucket, make_buckets, nearest_bucket
from dreamlite.data.sources import DataConfig, DataSourceConfig
from dreamlite.imageio import pil_to_tensor
from dreamlite.models.text import Qwen3VLTextEncoder
from dreamlite.models.vae import VAEConfig, encode, make_vae, save_vae
from dreamlite.pipeline import DreamLitePipeline
from dreamlite.presets import preset_config
from dreamlite.train.config import CorpusConfig, DataMix, StageConfig
from dreamlite.train.recipes import get_recipe
from dreamlite.train.streaming import RealData, StreamingSampler, open_real_data, run_real_recipe
from qwen_fixture import TEXT_HIDDEN, build_tiny_qwen3vl, save_tiny_qwen3vl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from real_data_fixtures import (  # noqa: E402
    PAIRS, TRIPLETS, png, solid, write_folder_pairs, write_folder_triplets, write_hf_triplets, write_wds_pairs,
)

BUCKETS = ((32, 32), (64, 32))  # (width, height); the fixtures' ~16:9 images go to the 2:1 bucket
B = 4
UNET = dict(block_out_channels=(16, 32, 32), layers_per_block=1, num_attention_heads=(1, 2, 2),
            transformer_layers_per_block=(1, 1, 1), mid_transformer_layers=1, text_embed_dim=TEXT_HIDDEN,
            cross_attention_dim=32, time_embed_dim=32, size_embed_dim=8, norm_num_groups=8)
QWEN_IMAGE = 32  # the edit source goes to the tiny Qwen3-VL at 32x32: one merged image token


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Toy-sized ops: a second intra-op thread only adds synchronisation (tens of times slower on a busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return make_vae(VAEConfig(image_size=32, encoder_width=8, decoder_width=8)).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def qwen():
    parts = build_tiny_qwen3vl()
    return Qwen3VLTextEncoder(parts.model, parts.tokenizer, parts.image_processor, image_size=QWEN_IMAGE,
                              drop_idx="auto")


class Recording:
    """Passes calls through to the real encoder and records what it was given."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def encode(self, prompts, images=None, *, task=None, unconditional=False):
        self.calls.append((list(prompts), None if images is None else list(images), task))
        return self.inner.encode(prompts, images, task=task, unconditional=unconditional)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return write_folder_pairs(root / "pairs"), write_folder_triplets(root / "trip")


def _config(*sources: DataSourceConfig) -> DataConfig:
    return DataConfig(sources=sources, buckets=BUCKETS, bucket_scale=1.0, decode_workers=1)


def _folder_config(folders) -> DataConfig:
    pairs, trip = folders
    return _config(DataSourceConfig("folder", "t2i", str(pairs)), DataSourceConfig("folder", "edit", str(trip)))


def _stage(t2i: float, edit: float, pool: str = "main") -> StageConfig:
    return StageConfig("s", DataMix(t2i=t2i, edit=edit, pool=pool), steps=1, lr=1e-4, batch_size=B)


_CACHE: dict[tuple, Any] = {}  # reference latents and text states, computed once per session


def _latent(vae, size, colour, bucket) -> torch.Tensor:
    key = ("latent", id(vae), size, colour, bucket)
    if key not in _CACHE:
        image = fit_to_bucket(solid(size, colour), bucket)
        _CACHE[key] = encode(vae, pil_to_tensor([image], *bucket))[0]
    return _CACHE[key]


def _text(encoder, text, source=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``encoder``'s states for one prompt; ``source`` = (size, colour, bucket) of an edit's source image."""
    key = ("text", id(encoder), text, source)
    if key not in _CACHE:
        images = None if source is None else [fit_to_bucket(solid(*source[:2]), source[2])]
        _CACHE[key] = encoder.encode([text], images, task="generate" if source is None else "edit")
    return _CACHE[key]


def _match(row: torch.Tensor, candidates: dict[int, torch.Tensor]) -> int:
    hits = [j for j, ref in candidates.items() if torch.allclose(row, ref, atol=1e-4)]
    assert len(hits) == 1, f"x0 row matches {len(hits)} fixture images"
    return hits[0]


def _in_bucket(items, bucket) -> dict[int, Any]:
    return {j: it for j, it in enumerate(items) if nearest_bucket(*it.size, BUCKETS) == bucket}


def _check_batch(batch, vae, encoder, pairs=PAIRS, triplets=TRIPLETS) -> tuple[tuple[int, int], list]:
    """Shapes, one bucket, and every row traced to its fixture sample: x0 = its target, cond = zeros (t2i) or its
    source (edit), text = its own caption / instruction (with the source image, for edits)."""
    assert set(batch) == {"x0", "cond", "text", "mask", "is_edit", "time_ids", "t", "noise"}
    w, h = (int(v) for v in batch["time_ids"][0])
    assert (w, h) in BUCKETS and torch.equal(batch["time_ids"], torch.tensor([[float(w), float(h)]] * B))
    assert batch["x0"].shape == batch["cond"].shape == batch["noise"].shape == (B, 4, h // 4, w // 4)
    L = batch["text"].shape[1]
    assert batch["text"].shape == (B, L, TEXT_HIDDEN) and batch["mask"].shape == (B, L)
    assert batch["t"].shape == (B,) and bool(((batch["t"] > 0) & (batch["t"] < 1)).all())
    assert batch["x0"].dtype == batch["text"].dtype == torch.float32 and batch["mask"].dtype == torch.long
    found = []
    for i in range(B):
        if batch["is_edit"][i]:
            items = _in_bucket(triplets, (w, h))
            j = _match(batch["x0"][i], {j: _latent(vae, t.size, t.target, (w, h)) for j, t in items.items()})
            t = items[j]
            torch.testing.assert_close(batch["cond"][i], _latent(vae, t.size, t.source, (w, h)), atol=1e-4, rtol=0)
            text, mask = _text(encoder, t.instruction, (t.size, t.source, (w, h)))
            found.append(("edit", j))
        else:
            items = _in_bucket(pairs, (w, h))
            j = _match(batch["x0"][i], {j: _latent(vae, p.size, p.colour, (w, h)) for j, p in items.items()})
            assert torch.count_nonzero(batch["cond"][i]) == 0
            text, mask = _text(encoder, items[j].caption)
            found.append(("t2i", j))
        n = int(mask.sum())
        assert int(batch["mask"][i].sum()) == n and int(batch["mask"][i, :n].sum()) == n
        torch.testing.assert_close(batch["text"][i, :n], text[0, :n], atol=1e-4, rtol=1e-4)
        assert torch.count_nonzero(batch["text"][i, n:]) == 0
    return (w, h), found


# ------------------------------------------------------------------------------------------------ sampler
def test_joint_batches_are_single_bucket_and_traceable(folders, vae, qwen):
    rec = Recording(qwen)
    sampler = StreamingSampler(_folder_config(folders), _stage(0.5, 0.5), torch.Generator().manual_seed(0), vae, rec)
    seen = set()
    for _ in range(4):
        rec.calls.clear()
        batch = sampler.draw()
        bucket, found = _check_batch(batch, vae, qwen)
        seen.add(bucket)
        # Every bucket holds both tasks, so the batch splits 2 + 2 (t2i first), as the Shapes sampler does.
        assert batch["is_edit"].tolist() == [False, False, True, True]
        # The encoder got captions for generation, and instructions with their *source* images for edits.
        (t2i_texts, t2i_images, t2i_task), (edit_texts, edit_images, edit_task) = rec.calls
        assert (t2i_images, t2i_task, edit_task) == (None, "generate", "edit")
        assert t2i_texts == [PAIRS[j].caption for kind, j in found if kind == "t2i"]
        edits = [TRIPLETS[j] for kind, j in found if kind == "edit"]
        assert edit_texts == [t.instruction for t in edits]
        assert [im.size for im in edit_images] == [bucket] * 2
        assert [im.getpixel((5, 5)) for im in edit_images] == [t.source for t in edits]
    assert seen == set(BUCKETS)


def test_single_task_stages(folders, vae, qwen):
    for mix, edit in (((1.0, 0.0), False), ((0.0, 1.0), True)):
        sampler = StreamingSampler(_folder_config(folders), _stage(*mix), torch.Generator().manual_seed(1), vae, qwen)
        for _ in range(2):
            batch = sampler.draw()
            assert batch["is_edit"].tolist() == [edit] * B
            _check_batch(batch, vae, qwen)


def test_webdataset_and_hf_sources(tmp_path, vae, qwen):
    config = _config(
        DataSourceConfig("webdataset", "t2i", str(write_wds_pairs(tmp_path / "wds" / "00.tar")), shuffle_buffer=3),
        DataSourceConfig("hf", "edit", str(write_hf_triplets(tmp_path / "hf"))))
    sampler = StreamingSampler(config, _stage(0.5, 0.5), torch.Generator().manual_seed(2), vae, qwen)
    seen = set()
    for _ in range(3):
        batch = sampler.draw()
        seen.add(_check_batch(batch, vae, qwen)[0])
        assert batch["is_edit"].tolist() == [False, False, True, True]
    assert seen == set(BUCKETS)


def test_seeded_generator_gives_the_same_batches(folders, vae, qwen):
    data = RealData.open(_folder_config(folders), BUCKETS)

    def draws(seed: int) -> list[dict]:
        sampler = StreamingSampler(data, _stage(0.5, 0.5), torch.Generator().manual_seed(seed), vae, qwen)
        return [sampler.draw() for _ in range(2)]

    a, b, c = draws(7), draws(7), draws(8)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert any(not torch.equal(x["noise"], z["noise"]) for x, z in zip(a, c))


def test_undecodable_images_are_redrawn_with_a_counted_warning(tmp_path, vae, qwen):
    root = tmp_path / "pairs"
    root.mkdir()
    (root / "good.png").write_bytes(png((40, 40), (255, 0, 0)))
    (root / "bad.png").write_bytes(b"not a png")
    # Sizes in the metadata: nothing is opened while indexing, so the bad image surfaces only when drawn.
    rows = [{"image": "good.png", "caption": "red", "width": 40, "height": 40},
            {"image": "bad.png", "caption": "broken", "width": 40, "height": 40}]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = RealData.open(_config(DataSourceConfig("folder", "t2i", str(root))), BUCKETS)
    sampler = StreamingSampler(data, _stage(1.0, 0.0), torch.Generator().manual_seed(0), vae, qwen)
    with pytest.warns(UserWarning, match=r"skipped .*bad\.png .*is not a readable image"):
        batches = [sampler.draw() for _ in range(3)]
    assert data.sources[0].skips.count > 0
    red = _latent(vae, (40, 40), (255, 0, 0), (32, 32))
    for batch in batches:
        assert all(torch.allclose(row, red, atol=1e-4) for row in batch["x0"])

    (root / "good.png").write_bytes(b"now broken too")
    before = data.sources[0].skips.count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match=r"could not decode 4 t2i samples of bucket \(32, 32\) after 20"):
            sampler.draw()
    assert data.sources[0].skips.count - before == 20 * B  # every round re-draws the whole batch


def test_stage_without_matching_sources_is_an_error(folders, vae, qwen):
    pairs, _ = folders
    only_pairs = _config(DataSourceConfig("folder", "t2i", str(pairs)))
    with pytest.raises(ValueError, match=r"needs edit data from pool 'main'.*sources: \[\]"):
        StreamingSampler(only_pairs, _stage(0.5, 0.5), torch.Generator(), vae, qwen)
    with pytest.raises(ValueError, match=r"needs t2i data from pool 'sft'.*sources: \['pairs'\]"):
        StreamingSampler(only_pairs, _stage(1.0, 0.0, pool="sft"), torch.Generator(), vae, qwen)


def test_recipe_resolution_sets_the_bucket_scale(folders):
    pairs, _ = folders
    smoke = get_recipe("dreamlite-0.39b-smoke")  # ~256-px buckets: the official table / 4
    data = open_real_data(smoke, DataConfig(sources=(DataSourceConfig("folder", "t2i", str(pairs)),)), 16)
    assert data.buckets == make_buckets("v54", 0.25, 16) and data.buckets[:2] == ((320, 208), (256, 256))
    # 40x40, 40x40, 64x64 -> the square bucket; 120x68 (1.76) -> 336x192 (1.75).
    members = {data.buckets[k]: m.tolist() for k, m in enumerate(data.members[0]) if len(m)}
    assert members == {(256, 256): [0, 1, 3], (336, 192): [2]}
    # an explicit multiple the model cannot use is an error; by default buckets follow the model's multiple
    with pytest.raises(ValueError, match="not multiples of 64 px"):
        open_real_data(smoke, DataConfig(sources=(DataSourceConfig("folder", "t2i", str(pairs)),),
                                         bucket_multiple=16), 64)
    data64 = open_real_data(smoke, DataConfig(sources=(DataSourceConfig("folder", "t2i", str(pairs)),)), 64)
    assert data64.buckets == make_buckets("v54", 0.25, 64)
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in data64.buckets)


# ------------------------------------------------------------------------------------------------ the runner
def test_039b_recipes():
    full, smoke = get_recipe("dreamlite-0.39b"), get_recipe("dreamlite-0.39b-smoke")
    assert full.preset == smoke.preset == "dreamlite-0.39b" and full.text_encoder == "qwen3vl"
    assert preset_config(full.preset)["text_embed_dim"] == 2048  # Qwen3-VL-2B's hidden size
    assert [s.name for s in full.stages] == ["t2i", "edit", "joint", "sft"]
    assert [(s.mix.t2i, s.mix.edit, s.mix.pool) for s in full.stages] == \
        [(1.0, 0.0, "main"), (0.0, 1.0, "main"), (0.5, 0.5, "main"), (0.5, 0.5, "sft")]
    assert full.corpus.image_size == 1024 and smoke.corpus.image_size == 256
    assert all(s.steps == 2 and s.batch_size == 2 for s in smoke.stages)


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory, folders, vae):
    """A recipe (the smoke recipe on the tiny preset), a data config, a Qwen3-VL spec and a VAE folder."""
    root = tmp_path_factory.mktemp("run_inputs")
    pairs, trip = folders
    # The SFT stage reads the other two kinds: WebDataset pairs and a saved Hugging Face dataset of triplets.
    sources = [{"kind": "folder", "task": "t2i", "path": str(pairs)},
               {"kind": "folder", "task": "edit", "path": str(trip)},
               {"kind": "webdataset", "task": "t2i", "path": str(write_wds_pairs(root / "wds" / "00.tar")),
                "pool": "sft", "shuffle_buffer": 3},
               {"kind": "hf", "task": "edit", "path": str(write_hf_triplets(root / "hf")), "pool": "sft"}]
    (root / "data.json").write_text(json.dumps({"sources": sources, "buckets": [list(b) for b in BUCKETS],
                                                "bucket_scale": 1.0, "decode_workers": 2}))
    recipe = dataclasses.replace(get_recipe("dreamlite-0.39b-smoke"), preset="tiny", unet_overrides=UNET,
                                 corpus=CorpusConfig(image_size=32))
    (root / "recipe.json").write_text(recipe.to_json())
    qwen_dir = save_tiny_qwen3vl(root / "qwen")
    (root / "qwen.json").write_text(json.dumps({"type": "qwen3vl", "path": str(qwen_dir),
                                                "image_size": QWEN_IMAGE, "drop_idx": "auto"}))
    save_vae(vae, root / "vae")
    return root


def _train(inputs: Path, out: Path, *extra: str) -> int:
    return main(["train", "real", "--recipe", str(inputs / "recipe.json"), "--data", str(inputs / "data.json"),
                 "--out", str(out), "--text-encoder", str(inputs / "qwen.json"), "--vae", str(inputs / "vae"),
                 *extra])


def test_cli_trains_every_stage_and_writes_a_loadable_model(run_inputs, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(run_inputs, run) == 0
    assert f"model: {run / 'model'}" in capsys.readouterr().out
    timing = [json.loads(line)["stage"] for line in (run / "timing.jsonl").read_text().splitlines()]
    assert timing == ["t2i", "edit", "joint", "sft"]
    state = json.loads((run / "checkpoints" / (run / "checkpoints" / "latest").read_text() / "state.json")
                       .read_text())
    assert state == {"stage_index": 3, "step": 2, "global_step": 8, "round": 0}
    assert json.loads((run / "data.json").read_text())["buckets"] == [list(b) for b in BUCKETS]
    assert json.loads((run / "recipe.json").read_text())["preset"] == "tiny"
    spec = json.loads((run / "model" / "text_encoder" / "spec.json").read_text())
    assert spec["type"] == "qwen3vl" and spec["path"] == str(run_inputs / "qwen") and spec["image_size"] == QWEN_IMAGE

    pipe = DreamLitePipeline.from_pretrained(run / "model")
    assert pipe.unet.config.text_embed_dim == TEXT_HIDDEN and pipe.text_encoder.hidden_size == TEXT_HIDDEN
    # The saved U-Net is the EMA of the last checkpoint.
    ema = load_file(str(run / "checkpoints" / (run / "checkpoints" / "latest").read_text() / "ema.safetensors"))
    for k, p in pipe.unet.named_parameters():
        assert torch.equal(p.detach(), ema[k]), k
    out = pipe("a red square", num_inference_steps=2, height=32, width=64, output_type="np", progress=False,
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 64, 3)
    edit = pipe("make it blue", image=solid((48, 48), (255, 0, 0)), num_inference_steps=2, height=32, width=32,
                output_type="np", progress=False, generator=torch.Generator().manual_seed(0)).images
    assert edit.shape[0] == 1 and edit.shape[-1] == 3


def test_cli_stop_and_resume_matches_an_uninterrupted_run(run_inputs, tmp_path, capsys):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _train(run_inputs, whole) == 0
    assert _train(run_inputs, cut, "--stop-after", "1") == 0  # mid-stage, between checkpoints
    assert not (cut / "model").exists()
    assert json.loads((cut / "checkpoints" / (cut / "checkpoints" / "latest").read_text() / "state.json")
                      .read_text()) == {"stage_index": 0, "step": 1, "global_step": 1, "round": 0}
    assert _train(run_inputs, cut, "--resume", "--stop-after", "2") == 0  # ends mid-stage again
    assert json.loads((cut / "checkpoints" / (cut / "checkpoints" / "latest").read_text() / "state.json")
                      .read_text()) == {"stage_index": 1, "step": 1, "global_step": 3, "round": 0}
    assert _train(run_inputs, cut) == 2  # a folder holding a run needs --resume
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert _train(run_inputs, cut, "--resume") == 0
    a = load_file(str(whole / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(cut / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stages = [json.loads(line)["stage"] for line in (cut / "timing.jsonl").read_text().splitlines()]
    assert stages == ["t2i", "edit", "joint", "sft"]


def test_run_real_recipe_needs_its_encoder_and_vae(run_inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DREAMLITE_TEXT_ENCODER", raising=False)
    monkeypatch.delenv("DREAMLITE_VAE", raising=False)
    args = ["train", "real", "--data", str(run_inputs / "data.json"), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert "needs a VAE: pass --vae PATH" in capsys.readouterr().err
    assert main([*args, "--vae", str(run_inputs / "vae")]) == 2
    assert "uses the Qwen3-VL text encoder: pass --text-encoder PATH" in capsys.readouterr().err
    # An encoder whose width is not the U-Net's text_embed_dim is refused before any training.
    recipe = get_recipe(str(run_inputs / "recipe.json"))
    wrong = dataclasses.replace(recipe, unet_overrides={**UNET, "text_embed_dim": 48})
    with pytest.raises(ValueError, match="text encoder width 64 does not match the U-Net's text_embed_dim 48"):
        run_real_recipe(wrong, run_inputs / "data.json", tmp_path / "w", text_encoder=str(run_inputs / "qwen.json"),
                        vae=str(run_inputs / "vae"))
    assert not (tmp_path / "w" / "checkpoints").exists()
