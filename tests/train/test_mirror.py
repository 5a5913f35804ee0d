"""Mirror pairs: the mirror swaps the shapes' sides and keeps each shape; a rollout becomes (image for the prompt,
image for its twin) with the asked sides; pairs share their starting noise and t in the batch and keep their text."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from dreamlite.incontext import pack, unpack
from dreamlite.models.vae import load_vae
from dreamlite.paths import SHIPPED_MODEL
from dreamlite.shapes.detect import detect
from dreamlite.shapes.geometry import relative_position
from dreamlite.shapes.language import role_swap
from dreamlite.shapes.render import render
from dreamlite.shapes.scene import Scene, ShapeObject
from dreamlite.train.config import DataMix, MirrorConfig, Recipe, StageConfig
from dreamlite.train.corpus import TextBank, encode_latents
from dreamlite.train.flow import drop_conditions
from dreamlite.train.loop import BatchSampler, StageContext
from dreamlite.train.mirror import (MirrorSet, load_mirror_set, mirror_shapes, position_clause, save_mirror_set,
                                    side_corrected)
from dreamlite.train.recipe import prepare_mirror_set
from dreamlite.train.rl import rl_rng, rl_t2i_prompts

sys.path.insert(0, str(Path(__file__).parent))
from test_corpus import SpellingEncoder, _spelled  # noqa: E402

AXES = {"left of": ("x", -1), "right of": ("x", 1), "above": ("y", -1), "below": ("y", 1)}


def scene_for(subject: str, reference: str, relation: str, right_side: bool, background: str = "gray") -> Scene:
    """Two large shapes with the subject on the asked side of the reference (or on the other side)."""
    axis, sign = AXES[relation]
    sign = sign if right_side else -sign
    a, b = 0.5 + sign * 0.25, 0.5 - sign * 0.25
    pos = (lambda u: (u, 0.45)) if axis == "x" else (lambda u: (0.45, u))
    return Scene(background, (ShapeObject(subject, "red", "large", *pos(a)),
                              ShapeObject(reference, "blue", "large", *pos(b))))


def meta_for(subject: str, reference: str, relation: str) -> dict:
    """A position prompt's GenEval metadata row: the subject stands in ``relation`` to the reference."""
    return {"tag": "position", "include": [{"class": reference, "count": 1},
                                           {"class": subject, "count": 1, "position": [relation, 0]}]}


def relation_of(image: np.ndarray, subject: str, reference: str) -> tuple[set, dict]:
    found = detect(image)
    boxes = {d.cls: d.box for d in found}
    return relative_position(np.asarray(boxes[subject]), np.asarray(boxes[reference])), {d.cls: d.color for d in found}


CASES = [("star", "square", "left of"), ("heart", "triangle", "right of"), ("triangle", "circle", "above"),
         ("heart", "star", "below")]


@pytest.mark.parametrize("subject,reference,relation", CASES)
def test_mirror_swaps_the_sides_and_keeps_each_shape_and_colour(subject, reference, relation):
    image = render(scene_for(subject, reference, relation, right_side=True))
    found = detect(image)
    mirrored = mirror_shapes(image, [d.box for d in found], vertical=relation in ("above", "below"))
    before, colours = relation_of(image, subject, reference)
    after, colours_after = relation_of(mirrored, subject, reference)
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[relation]
    assert relation in before and opposite in after
    assert colours_after == colours == {subject: "red", reference: "blue"}
    assert len(detect(mirrored)) == 2


@pytest.mark.parametrize("subject,reference,relation", CASES)
def test_side_corrected_keeps_a_right_sided_rollout_and_mirrors_a_wrong_sided_one(subject, reference, relation):
    meta = meta_for(subject, reference, relation)
    right = render(scene_for(subject, reference, relation, right_side=True))
    own, twin = side_corrected(right, meta)
    assert np.array_equal(own, right)  # already on the asked side: the rollout itself is the prompt's target
    assert relation not in relation_of(twin, subject, reference)[0]
    wrong = render(scene_for(subject, reference, relation, right_side=False))
    own, twin = side_corrected(wrong, meta)
    assert np.array_equal(twin, wrong)  # the wrong-sided rollout is exactly what the twin asks for
    assert relation in relation_of(own, subject, reference)[0]


def test_side_corrected_drops_rollouts_that_do_not_draw_the_two_shapes():
    meta = meta_for("star", "square", "left of")
    blank = render(Scene("gray"))
    one = render(Scene("gray", (ShapeObject("star", "red", "large", 0.3, 0.5),)))
    other = render(scene_for("heart", "square", "left of", right_side=True))  # a heart where a star was asked
    three = render(Scene("gray", (ShapeObject("star", "red", "medium", 0.2, 0.5),
                                  ShapeObject("square", "blue", "medium", 0.5, 0.5),
                                  ShapeObject("circle", "green", "medium", 0.8, 0.5))))
    stacked = render(scene_for("star", "square", "above", right_side=True))  # the right shapes, on the other axis
    for image in (blank, one, other, three, stacked):
        assert side_corrected(image, meta) is None


def _mirror_set(n: int = 5) -> MirrorSet:
    g = torch.Generator().manual_seed(0)
    prompts = [f"a star left of a square {i}" for i in range(n)]
    bank = TextBank.build(SpellingEncoder(), prompts + [f"twin {i}" for i in range(n)], "generate", progress=False)
    return MirrorSet(torch.randn(n, 4, 4, 4, generator=g), torch.randn(n, 4, 4, 4, generator=g),
                     torch.randn(n, 4, 4, 4, generator=g), bank, {"rollouts": 9, "kept": n, "mirrored": 2})


def test_mirror_set_round_trips_and_a_malformed_file_is_refused(tmp_path):
    m = _mirror_set()
    save_mirror_set(m, tmp_path / "m.safetensors")
    back = load_mirror_set(tmp_path / "m.safetensors")
    for name in ("noise", "x0", "x0_twin"):
        assert torch.equal(getattr(back, name), getattr(m, name))
    assert back.stats == m.stats and [_spelled(back.bank, i) for i in range(10)] == [_spelled(m.bank, i)
                                                                                    for i in range(10)]
    from safetensors.torch import save_file
    save_file({"noise": m.noise, "x0": m.x0[:3], "x0_twin": m.x0_twin, "bank.states": m.bank.states,
               "bank.offsets": m.bank.offsets, "bank.lengths": m.bank.lengths}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="disagree in size"):
        load_mirror_set(tmp_path / "bad.safetensors")
    save_file({"x0": m.x0}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a mirror set"):
        load_mirror_set(tmp_path / "other.safetensors")


def _pool(n: int = 16):
    from dreamlite.train.corpus import Pool
    g = torch.Generator().manual_seed(1)
    bank = TextBank.build(SpellingEncoder(), [f"p{i}" for i in range(n)], "generate", progress=False)
    return Pool(torch.randn(n, 4, 4, 4, generator=g), None, torch.arange(n), torch.zeros(n, dtype=torch.long),
                ["single_object"], bank)


def test_batch_rows_of_mirror_pairs_share_their_start_noise_and_t_and_never_lose_their_text():
    m = _mirror_set()
    stage = StageConfig("s", DataMix(1.0, 0.0), steps=1, lr=1e-4, batch_size=6, mirror=MirrorConfig(per_batch=3))
    batch = BatchSampler({"t2i": _pool()}, stage, torch.Generator().manual_seed(2), 32, mirror=m).draw()
    assert batch["x0"].shape[0] == 6 + 6 and batch["keep_text"].tolist() == [False] * 6 + [True] * 6
    rows = batch["x0"][6:]
    for r in range(3):  # row r is a prompt, row r + 3 its twin: same rollout, same noise
        i = int(torch.nonzero((m.x0 == rows[r]).flatten(1).all(1))[0])
        assert torch.equal(batch["noise"][6 + r], m.noise[i]) and torch.equal(batch["noise"][9 + r], m.noise[i])
        assert batch["t"][6 + r] == batch["t"][9 + r]  # and the same t
        assert torch.equal(rows[3 + r], m.x0_twin[i])
        text, mask = batch["text"][6 + r], batch["mask"][6 + r]
        assert "".join(chr(int(v)) for v in text[:int(mask.sum()), 0]) == _spelled(m.bank, i)
        text, mask = batch["text"][9 + r], batch["mask"][9 + r]
        assert "".join(chr(int(v)) for v in text[:int(mask.sum()), 0]) == _spelled(m.bank, i + len(m))
    uncond = torch.full((1, 2, 2), -1.0), torch.ones(1, 2, dtype=torch.long)
    text, mask, _, dropped = drop_conditions(batch["text"], batch["mask"], batch["cond"], batch["is_edit"], *uncond,
                                             1.0, 0.0, torch.Generator(), keep=batch["keep_text"])
    assert dropped.tolist() == [True] * 6 + [False] * 6
    assert torch.equal(text[6:, :batch["text"].shape[1]], batch["text"][6:])
    with pytest.raises(ValueError, match="asks for mirror pairs"):
        BatchSampler({"t2i": _pool()}, stage, torch.Generator(), 32)


def test_mirror_config_is_checked_and_survives_the_recipe_json():
    with pytest.raises(ValueError, match="mirror pairs need a flow stage"):
        StageConfig("d", DataMix(), steps=1, lr=1e-4, batch_size=2, kind="distill", mirror=MirrorConfig(),
                    distill=__import__("dreamlite.train.config", fromlist=["DistillStageConfig"]).DistillStageConfig())
    with pytest.raises(ValueError, match="mirror: need"):
        MirrorConfig(per_batch=0)
    r = Recipe("r", "tiny", (StageConfig("s", DataMix(), steps=1, lr=1e-4, batch_size=2,
                                         mirror=MirrorConfig(rollouts=10, per_batch=2)),))
    assert Recipe.from_dict(json.loads(r.to_json())) == r


class Oracle(torch.nn.Module):
    """A 'network' whose velocity flows every sample straight to a fixed latent chosen by its prompt (read from the
    spelled text states): Euler integration lands on it exactly, so the rollouts are known images."""

    def __init__(self, targets: dict[str, torch.Tensor]):
        super().__init__()
        self.targets = targets

    def forward(self, canvas, t, text, mask, time_ids):
        x_t = unpack(canvas)  # [B, C, h, w]
        words = ["".join(chr(int(v)) for v in s[:int(m.sum()), 0]) for s, m in zip(text, mask)]
        x0 = torch.stack([self.targets[w] for w in words])
        sigma = (t / 1000.0).reshape(-1, 1, 1, 1)
        return pack((x_t - x0) / sigma)  # v = noise - x0 on the line through x_t: x0_from_velocity gives x0 back


def test_mirror_set_keeps_mirrors_drops_what_the_detector_rejects_and_is_built_once(tmp_path):
    """Oracle rollouts of the RL pool's first position prompts, through the shipped VAE: right-sided, wrong-sided
    and one-shape images; the set keeps the first two kinds with the asked sides and their own starting noise,
    and a second call (a resumed stage) loads it from the run folder."""
    vae = load_vae(SHIPPED_MODEL / "vae")
    seed, n = 31_000, 9
    rows = rl_t2i_prompts(rl_rng(seed), n, {"position": 1.0})
    kinds = ["right", "wrong", "one"] * 3
    images = []
    for (prompt, meta), kind in zip(rows, kinds):
        subject, reference, relation = position_clause(meta)
        scene = scene_for(subject, reference, relation, right_side=kind == "right")
        images.append(render(Scene(scene.background, scene.objects[:1]) if kind == "one" else scene))
    latents = encode_latents(vae, np.stack(images))
    oracle = Oracle({p: z for (p, _), z in zip(rows, latents)})
    stage = StageConfig("s", DataMix(), steps=1, lr=1e-4, batch_size=2,
                        mirror=MirrorConfig(rollouts=n, seed=seed, sample_steps=4, guidance_scale=1.0))
    recipe = Recipe("r", "tiny", (stage,))
    ctx = StageContext(Accelerator(cpu=True), oracle, None, vae, SpellingEncoder(), None, {}, recipe, tmp_path)
    m = prepare_mirror_set(ctx, stage)
    again = prepare_mirror_set(replace(ctx, unet=None), stage)  # a resumed stage reads the saved pairs, no rollouts
    assert torch.equal(again.x0_twin, m.x0_twin) and torch.equal(again.noise, m.noise)
    assert json.loads((tmp_path / "mirror.jsonl").read_text()) == {"stage": "s", **m.stats}
    kept = [i for i, k in enumerate(kinds) if k != "one"]
    assert m.stats == {"rollouts": n, "kept": len(kept), "mirrored": kinds.count("wrong")}
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *latents.shape[1:], generator=g)
    from dreamlite.models.vae import decode, to_uint8
    own, twin = to_uint8(decode(vae, m.x0)), to_uint8(decode(vae, m.x0_twin))
    for j, i in enumerate(kept):
        prompt, meta = rows[i]
        subject, reference, relation = position_clause(meta)
        assert torch.equal(m.noise[j], z[i])
        assert _spelled(m.bank, j) == prompt and _spelled(m.bank, j + len(m)) == role_swap(prompt, "position")
        assert relation in relation_of(own[j], subject, reference)[0]
        assert relation not in relation_of(twin[j], subject, reference)[0]


def test_mirror_rows_are_contrasted_with_each_other_s_text_and_drawn_at_their_own_t():
    """With twin_weight and no pool tags, only the pairs are contrasted: each row's twin text is the other row's
    (the prompt's twin is its twin prompt, and back); a pool without twin prompts is fine; t_mean moves their t."""
    m = _mirror_set(40)
    stage = StageConfig("s", DataMix(1.0, 0.0), steps=1, lr=1e-4, batch_size=4, twin_weight=1.0, twin_tags=(),
                        mirror=MirrorConfig(per_batch=200, t_mean=3.0))
    batch = BatchSampler({"t2i": _pool()}, stage, torch.Generator().manual_seed(3), 32, mirror=m).draw()
    assert batch["has_twin"].tolist() == [False] * 4 + [True] * 400
    spelled = lambda text, mask: "".join(chr(int(v)) for v in text[:int(mask.sum()), 0])  # noqa: E731
    for r in (4, 5, 203, 204, 403):
        other = r + 200 if r < 204 else r - 200
        assert spelled(batch["twin_text"][r], batch["twin_mask"][r]) == spelled(batch["text"][other],
                                                                                batch["mask"][other])
    assert batch["t"][4:].median() > 0.9  # sigmoid(N(3, 1)); the stage's own sampling has median 0.5
    assert torch.equal(batch["t"][4:204], batch["t"][204:]) and batch["t"][4:204].unique().numel() == 200
