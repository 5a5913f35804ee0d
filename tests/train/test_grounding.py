import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamlite.models.text import MiniLMTextEncoder
from dreamlite.models.unet import Attention, MobileUNet
from dreamlite.shapes.scene import Scene, ShapeObject
from dreamlite.train.config import DataMix, StageConfig
from dreamlite.train.corpus import build_pool, load_pool, save_pool
from dreamlite.train.grounding import (
    MASK_RES,
    CrossAttentionProbe,
    attention_probs,
    coverage_mask,
    ground_tensors,
    grounding_loss,
    object_groups,
    token_indices,
)
from dreamlite.train.loop import BatchSampler, stage_loss

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_run import UNET, make_pool, tiny_vae  # noqa: E402


@pytest.fixture(scope="module")
def minilm():
    return MiniLMTextEncoder.from_pretrained(layer=3)


def _two(prompt: str, a: tuple[str, str | None], b: tuple[str, str | None], tag: str = "two_object") -> dict:
    inc = [{"class": c, "count": 1, **({"color": col} if col else {})} for c, col in (a, b)]
    return {"tag": tag, "include": inc, "exclude": [], "prompt": prompt}


@pytest.mark.parametrize("h,g", [(4, 2), (2, 1)])
def test_attention_probs_are_the_probabilities_the_module_attends_with(h, g):
    """Values = one-hot context positions and identity projections make the module's output its own per-head
    probabilities, which attention_probs must equal (head mean), with grouped or single K/V heads, q/k norms and a
    padding mask."""
    torch.manual_seed(0)
    B, N, L, d = 2, 5, 6, 8
    attn = Attention(h * d, L, h, g, qk_norm=True)
    with torch.no_grad():
        attn.to_v.weight.zero_()
        for j in range(g):
            attn.to_v.weight[j * d:j * d + L, :] = torch.eye(L)
        attn.to_out[0].weight.copy_(torch.eye(h * d))
        attn.to_out[0].bias.zero_()
        attn.norm_q.weight.uniform_(0.5, 1.5)
    x = torch.randn(B, N, h * d)
    context = torch.eye(L).expand(B, L, L)
    bias = torch.zeros(B, L)
    bias[1, 4:] = -10000.0  # the second row has 4 real tokens
    per_head = attn(x, context, bias).view(B, N, h, d)[..., :L]  # [B, N, h, L]
    probs = attention_probs(attn, x, context, bias)
    torch.testing.assert_close(probs, per_head.mean(2), atol=1e-5, rtol=1e-4)
    assert probs[1, :, 4:].abs().max() < 1e-6
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, N))


def test_groups_find_each_clause_s_words_and_objects():
    circle = ShapeObject("circle", "red", "medium", 0.25, 0.3)
    star = ShapeObject("star", "blue", "medium", 0.75, 0.6)
    scene = Scene("gray", (circle, star))
    prompt = "a photo of a red circle and a blue star"
    metadata = _two(prompt, ("circle", "red"), ("star", "blue"), "color_attr")
    groups = object_groups(prompt, metadata, scene)
    assert [[prompt[a:b] for a, b in grp.spans] for grp in groups] == [["red", "circle"], ["blue", "star"]]
    assert [grp.objects for grp in groups] == [(circle,), (star,)]
    plain = "both a star and a circle"
    groups = object_groups(plain, _two(plain, ("circle", None), ("star", None)), scene)
    assert [[plain[a:b] for a, b in grp.spans] for grp in groups] == [["circle"], ["star"]]
    three = Scene("gray", tuple(ShapeObject("heart", c, "small", x, 0.5) for c, x in
                                 (("red", 0.2), ("blue", 0.5), ("green", 0.8))))
    count = {"tag": "counting", "include": [{"class": "heart", "count": 3}],
             "exclude": [{"class": "heart", "count": 4}], "prompt": "three hearts"}
    (group,) = object_groups("three hearts", count, three)
    assert ["three hearts"[a:b] for a, b in group.spans] == ["hearts"] and len(group.objects) == 3


def test_groups_refuse_what_they_cannot_tell_apart():
    scene = Scene("gray", (ShapeObject("circle", "red", "medium", 0.25, 0.3),
                            ShapeObject("circle", "blue", "medium", 0.75, 0.6)))
    same = "a circle and a circle"
    assert object_groups(same, _two(same, ("circle", None), ("circle", None)), scene) == []
    coloured = "a red circle and a blue circle"  # colours tell them apart
    assert len(object_groups(coloured, _two(coloured, ("circle", "red"), ("circle", "blue"), "color_attr"), scene)) == 2
    missing = "a photo of a square and a circle"  # no square in the scene
    assert object_groups(missing, _two(missing, ("square", None), ("circle", None)), scene) == []


def test_coverage_mask_is_the_box_area_per_cell():
    obj = ShapeObject("square", "red", "medium", 0.5, 0.5)
    x0, y0, x1, y1 = obj.box
    m = coverage_mask([obj], 8)
    assert m.shape == (8, 8) and m.max() <= 1.0 + 1e-6
    assert m.sum() == pytest.approx((x1 - x0) * (y1 - y0) * 64, rel=1e-5)
    cells = np.argwhere(m > 0)
    assert cells[:, 1].min() == int(x0 * 8) and cells[:, 1].max() == int(np.ceil(x1 * 8)) - 1
    assert coverage_mask([], 4).sum() == 0


def test_token_indices_point_at_the_words_in_minilm_s_states(minilm):
    prompt = "a photo of a red circle and a blue star"
    spans = [(prompt.index("red"), prompt.index("red") + 3), (prompt.index("star"), len(prompt))]
    idx = token_indices(minilm, prompt, spans)
    ids = minilm.tokenizer(minilm.format.render("generate", prompt, conditional=True))["input_ids"]
    assert minilm.tokenizer.convert_ids_to_tokens([ids[i] for i in idx]) == ["red", "star"]
    _, mask = minilm.encode([prompt], task="generate")
    assert max(idx) < int(mask.sum())  # the indices address the states the U-Net reads
    with pytest.raises(ValueError, match="needs a MiniLM text encoder"):
        token_indices(object(), prompt, spans)


def test_grounding_loss_is_zero_inside_and_known_for_uniform_attention():
    B, G, H, W, L = 1, 1, 4, 4, 3
    masks = torch.zeros(B, G, MASK_RES, MASK_RES)
    masks[0, 0, :MASK_RES // 2, :MASK_RES // 2] = 1  # the top-left quarter
    tokens = torch.tensor([[[1, -1, -1, -1]]])
    inside = torch.zeros(B, H, W, L)
    inside[..., 0] = 1.0
    inside[0, :2, :2, 0], inside[0, :2, :2, 1] = 0.0, 1.0  # token 1 attended only from its quarter
    rows = torch.ones(B, dtype=torch.bool)
    assert grounding_loss([inside], tokens, masks, rows).item() == pytest.approx(0.0, abs=1e-7)
    uniform = torch.full((B, H, W, L), 1 / L)
    assert grounding_loss([uniform], tokens, masks, rows).item() == pytest.approx((1 - 0.25) ** 2, rel=1e-6)
    assert grounding_loss([uniform], tokens, masks, ~rows) is None  # no row kept its text
    small = torch.full((B, 1, 1, L), 1 / L)
    assert grounding_loss([uniform, small], tokens, masks, rows, min_side=2).item() == pytest.approx(0.5625)
    with pytest.raises(ValueError, match="at least 8 tokens"):
        grounding_loss([uniform], tokens, masks, rows, min_side=8)


def _ground_pool(n: int = 16):
    pool = make_pool("t2i", n, 3)
    pool.ground_tokens = torch.full((n, 2, 4), -1, dtype=torch.long)
    pool.ground_tokens[:, 0, 0] = 0  # every prompt's first token (each has at least one) grounds one group
    pool.ground_masks = torch.zeros(n, 2, MASK_RES, MASK_RES, dtype=torch.float16)
    for i in range(n):
        r, c = divmod(i % 4, 2)
        pool.ground_masks[i, 0, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 1  # one quarter per sample
    return pool


def test_training_on_the_grounding_loss_moves_attention_into_the_masks():
    torch.manual_seed(0)
    unet = MobileUNet.from_preset("tiny", **UNET, in_channels=4, out_channels=4)
    stage = StageConfig("s", DataMix(t2i=1.0), steps=1, lr=1e-3, batch_size=16, ground_weight=1.0)
    batch = BatchSampler({"t2i": _ground_pool()}, stage, torch.Generator().manual_seed(2), image_size=32).draw()
    dropped = torch.zeros(16, dtype=torch.bool)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        _, _, ground = stage_loss(unet, batch, batch["text"], batch["mask"], batch["cond"], dropped, stage, "cpu")
        losses.append(ground.item())
        opt.zero_grad()
        ground.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]
    probe = CrossAttentionProbe(unet)
    assert all(not m._forward_hooks for m in probe.modules)  # stage_loss left no hook behind
    with probe:
        unet(torch.randn(1, 4, 4, 8), torch.tensor([500.0]), batch["text"][:1], batch["mask"][:1],
             batch["time_ids"][:1])
    assert len(probe.calls) == len(probe.modules) and all(not m._forward_hooks for m in probe.modules)
    assert [tuple(m.shape[1:3]) for m in probe.maps((4, 8))][0] == (4, 4)  # the top level's target half
    sides = [m.shape[1] for m in probe.maps((4, 8))]
    assert min(sides) < 4 and [m.shape[1] for m in probe.maps((4, 8), min_side=4)] == [s for s in sides if s >= 4]
    with pytest.raises(ValueError, match="at least 8 tokens"):
        probe.maps((4, 8), min_side=8)


def test_grounding_needs_pools_with_masks_and_a_t2i_flow_stage():
    stage = StageConfig("s", DataMix(t2i=1.0), steps=1, lr=1e-3, batch_size=4, ground_weight=0.1)
    with pytest.raises(ValueError, match="no object masks"):
        BatchSampler({"t2i": make_pool("t2i", 8, 1)}, stage, torch.Generator(), image_size=32)
    with pytest.raises(ValueError, match="grounded attention needs a flow stage that draws t2i"):
        StageConfig("e", DataMix(t2i=0.0, edit=1.0), steps=1, lr=1e-3, batch_size=4, ground_weight=0.1)
    with pytest.raises(ValueError, match="ground_weight >= 0"):
        StageConfig("n", DataMix(t2i=1.0), steps=1, lr=1e-3, batch_size=4, ground_weight=-1.0)


def test_a_grounded_pool_round_trips_and_matches_its_scenes(tmp_path, minilm):
    from dreamlite.train.corpus import _render_chunk
    pool = build_pool("t2i", 24, 41, 32, tiny_vae(), minilm, workers=1, progress=False, ground=True)
    save_pool(pool, tmp_path / "t2i.safetensors")
    loaded = load_pool(tmp_path / "t2i.safetensors")
    assert torch.equal(loaded.ground_tokens, pool.ground_tokens)
    assert torch.equal(loaded.ground_masks, pool.ground_masks)
    _, _, prompts, _, (metadata, scenes) = _render_chunk("t2i", 41, 0, 24, 32, None)
    tokens, masks = ground_tensors(minilm, prompts, metadata, scenes)
    assert torch.equal(tokens, pool.ground_tokens) and torch.equal(masks, pool.ground_masks)
    grounded = (pool.ground_tokens >= 0).any(-1)  # [N, G]
    assert grounded[:, 0].float().mean() > 0.8  # nearly every prompt names something the scene shows
    assert (pool.ground_masks.flatten(2).sum(-1) > 0).eq(grounded).all()
    with pytest.raises(ValueError, match="defined for t2i prompts only"):
        build_pool("edit", 4, 41, 32, tiny_vae(), minilm, workers=1, progress=False, ground=True)
