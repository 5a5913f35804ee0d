"""Known answers of the RL rewards: ground-truth renders earn 1, blank images 0, and the bench decides."""

import numpy as np
import pytest
import torch
from PIL import Image

from dreamlite.bench import geneval
from dreamlite.bench.imgedit import score_edit
from dreamlite.shapes.detect import detect
from dreamlite.shapes.render import render_batch
from dreamlite.shapes.scene import Scene
from dreamlite.shapes.spec import PromptSpec
from dreamlite.shapes.tasks import sample_edit_cases, sample_t2i
from dreamlite.train.config import RLStageConfig
from dreamlite.train.rewards import EditReward, GenEvalReward, Reward, WeightedReward, edit_metadata

SIZE = 64


def blank(n: int, background: str = "gray") -> np.ndarray:
    return render_batch([Scene(background)] * n, SIZE)  # uint8 [n, 64, 64, 3], no objects


def t2i_batch(n: int = 12):
    return sample_t2i(np.random.default_rng(7), n, SIZE)


def test_rewards_satisfy_the_protocol():
    for reward in (GenEvalReward(), GenEvalReward(0.3), EditReward(), EditReward("score")):
        assert isinstance(reward, Reward)


def test_geneval_reward_is_one_on_ground_truth_and_zero_on_blank():
    batch = t2i_batch()
    out = GenEvalReward()(batch.images, batch.prompts, batch.metadata)
    assert out.dtype == torch.float32 and out.shape == (12,)
    assert out.tolist() == [1.0] * 12
    assert GenEvalReward()(blank(12), batch.prompts, batch.metadata).tolist() == [0.0] * 12
    pil = [Image.fromarray(a) for a in batch.images[:3]]  # PIL images work too
    assert GenEvalReward()(pil, batch.prompts[:3], batch.metadata[:3]).tolist() == [1.0] * 3


def test_geneval_reward_equals_the_bench_verdict_and_partial_credit():
    batch = t2i_batch()
    # wrong images: each prompt scored on the next prompt's render
    wrong = np.roll(batch.images, 1, axis=0)
    binary = GenEvalReward()(wrong, batch.prompts, batch.metadata)
    partial = GenEvalReward(partial_weight=1.0)(wrong, batch.prompts, batch.metadata)
    mixed = GenEvalReward(partial_weight=0.25)(wrong, batch.prompts, batch.metadata)
    for i, row in enumerate(batch.metadata):
        dets = detect(wrong[i])
        spec = PromptSpec.from_dict(row)
        assert binary[i].item() == float(geneval.evaluate(spec, dets)[0])
        assert partial[i].item() == pytest.approx(geneval.partial_score(spec, dets))
    torch.testing.assert_close(mixed, 0.75 * binary + 0.25 * partial)
    assert ((0 <= partial) & (partial <= 1)).all() and (partial >= binary).all()
    gt_partial = GenEvalReward(partial_weight=1.0)(batch.images, batch.prompts, batch.metadata)
    assert gt_partial.tolist() == [1.0] * 12
    # a blank image earns partial credit only from respected exclude clauses (counting prompts)
    blank_partial = GenEvalReward(partial_weight=1.0)(blank(12), batch.prompts, batch.metadata)
    for value, row in zip(blank_partial.tolist(), batch.metadata):
        n_ex = len(row.get("exclude", []))
        assert value == pytest.approx(n_ex / (len(row["include"]) + n_ex))


def test_geneval_reward_rejects_misaligned_or_unscorable_input_and_fails_bad_images():
    batch = t2i_batch(2)
    with pytest.raises(ValueError, match="aligned"):
        GenEvalReward()(batch.images, batch.prompts[:1], batch.metadata)
    with pytest.raises(ValueError, match="metadata row is for"):
        GenEvalReward()(batch.images, batch.prompts[::-1], batch.metadata)
    unknown = {"tag": "single_object", "include": [{"class": "giraffe", "count": 1}], "exclude": [],
               "prompt": "a photo of a giraffe"}
    with pytest.raises(ValueError, match="not scorable"):
        GenEvalReward()(batch.images[:1], [unknown["prompt"]], [unknown])
    with pytest.raises(ValueError, match="partial_weight"):
        GenEvalReward(partial_weight=1.5)
    with pytest.raises(TypeError, match="uint8"):
        GenEvalReward()(torch.zeros(2, 3, SIZE, SIZE), batch.prompts, batch.metadata)
    packed = np.concatenate([batch.images, batch.images], axis=2)  # a (target | cond) canvas by mistake
    assert GenEvalReward()(list(packed), batch.prompts, batch.metadata).tolist() == [0.0, 0.0]


def edit_cases(n: int = 16):
    return sample_edit_cases(np.random.default_rng(11), n, SIZE)


def test_edit_reward_is_one_on_ground_truth_and_zero_on_blank():
    cases = edit_cases()
    meta = [edit_metadata(c.source_scene, c.target_scene, c.edit_type) for c in cases]
    prompts = [c.instruction for c in cases]
    targets = render_batch([c.target_scene for c in cases], SIZE)
    sources = np.stack([c.source_image for c in cases])
    for mode in ("product", "score"):
        assert EditReward(mode)(targets, prompts, meta, sources).tolist() == [1.0] * len(cases)
    # blank: black images (no object, no background of the palette) -> nothing edited, nothing kept
    black = np.zeros((len(cases), SIZE, SIZE, 3), np.uint8)
    assert EditReward()(black, prompts, meta).tolist() == [0.0] * len(cases)
    assert EditReward("score")(black, prompts, meta).tolist() == [0.0] * len(cases)


def test_edit_reward_on_an_unedited_copy_matches_the_bench():
    cases = edit_cases()
    meta = [edit_metadata(c.source_scene, c.target_scene, c.edit_type) for c in cases]
    sources = np.stack([c.source_image for c in cases])
    prompts = [c.instruction for c in cases]
    product = EditReward()(sources, prompts, meta)
    score = EditReward("score")(sources, prompts, meta)
    for i, c in enumerate(cases):
        s = score_edit(sources[i], c.source_scene, c.target_scene, c.edit_type)
        assert product[i].item() == pytest.approx(float(s.success) * s.preservation)
        assert score[i].item() == pytest.approx((s.score_1_5 - 1) / 4)
    assert product.max() == 0.0  # an untouched copy never succeeds
    assert (score <= 0.25 + 1e-6).all() and score.max() > 0.0  # ... but keeps what it should


def test_preservation_power_weighs_what_an_edit_keeps():
    cases = edit_cases(32)
    meta = [edit_metadata(c.source_scene, c.target_scene, c.edit_type) for c in cases]
    prompts = [c.instruction for c in cases]
    damaged = render_batch([c.target_scene for c in cases], SIZE)
    damaged[:, SIZE // 2:, SIZE // 2:] = damaged[:, :1, :1]  # a quadrant painted over with the background
    plain, squared = EditReward()(damaged, prompts, meta), EditReward(preservation_power=2.0)(damaged, prompts, meta)
    partly_kept = 0
    for i, c in enumerate(cases):
        s = score_edit(damaged[i], c.source_scene, c.target_scene, c.edit_type)
        assert squared[i].item() == pytest.approx(float(s.success) * s.preservation ** 2)
        partly_kept += bool(s.success and 0 < s.preservation < 1)
    assert partly_kept >= 2  # the case the power changes: the edit happened, part of the scene was lost
    assert (squared <= plain + 1e-6).all() and (squared < plain - 0.1).sum() >= partly_kept
    for bad in ({"preservation_power": 0.0}, {"mode": "score", "preservation_power": 2.0}):
        with pytest.raises(ValueError, match="preservation_power"):
            EditReward(**bad)
    with pytest.raises(ValueError, match="preservation_power"):  # refused when a recipe is read, not at its RL stage
        RLStageConfig(edit_reward_mode="score", preservation_power=2.0)


def test_edit_metadata_round_trips_and_bad_input_is_refused():
    c = edit_cases(1)[0]
    meta = edit_metadata(c.source_scene, c.target_scene, c.edit_type)
    as_scenes = {"source": c.source_scene, "target": c.target_scene, "edit_type": c.edit_type}
    img = render_batch([c.target_scene], SIZE)
    assert EditReward()(img, [c.instruction], [meta]).item() == EditReward()(img, [c.instruction], [as_scenes]).item()
    with pytest.raises(ValueError, match="lacks 'target'"):
        EditReward()(img, [c.instruction], [{"source": meta["source"], "edit_type": "add"}])
    with pytest.raises(ValueError, match="unknown edit type"):
        edit_metadata(c.source_scene, c.target_scene, "rotate")
    with pytest.raises(ValueError, match="mode"):
        EditReward("sum")


def test_weighted_reward_is_a_convex_combination():
    batch = t2i_batch(6)

    class Brightness:
        name = "brightness"

        def __call__(self, images, prompts, metadata, sources=None):
            return torch.tensor([float(np.asarray(im).mean()) / 255 for im in images])

    mix = WeightedReward(((GenEvalReward(), 3.0), (Brightness(), 1.0)))
    images = np.concatenate([batch.images[:3], blank(3)])
    expected = 0.75 * GenEvalReward()(images, batch.prompts, batch.metadata) + 0.25 * Brightness()(images, 0, 0)
    torch.testing.assert_close(mix(images, batch.prompts, batch.metadata), expected)
    with pytest.raises(ValueError):
        WeightedReward(((GenEvalReward(), -1.0),))
