import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreamlite.models.unet import MobileUNet
from dreamlite.train.config import DataMix, RLStageConfig, StageConfig
from dreamlite.train.corpus import Pool, TextBank
from dreamlite.train.flow import drop_conditions, flow_matching_loss, predict_velocity, twin_contrast_loss
from dreamlite.train.loop import Anchors, BatchSampler, latest_checkpoint, stage_loss, train_stage
from dreamlite.train.rl import frozen_copy

HERE = Path(__file__).parent
SCRIPT = str(HERE / "synthetic_run.py")
sys.path.insert(0, str(HERE))
from synthetic_run import UNET, make_pool  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir)
    return {**load_file(str(ckpt / "unet" / "diffusion_pytorch_model.safetensors")),
            **{f"ema.{k}": v for k, v in load_file(str(ckpt / "ema.safetensors")).items()}}


def test_sigkill_mid_stage_then_resume_matches_uninterrupted(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([sys.executable, SCRIPT, str(full)], check=True, env=ENV, capture_output=True)
    proc = subprocess.Popen([sys.executable, SCRIPT, str(cut), "--slow", "0.3"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a busy machine can take minutes to start the run
    while time.time() < deadline:  # wait for a checkpoint inside the first stage (step 3 of 8)
        if (cut / "checkpoints" / "latest").is_file():
            break
        time.sleep(0.05)
    time.sleep(0.5)  # a few more steps, past the checkpoint, so work is really lost
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = int((cut / "checkpoints" / "latest").read_text().split("-")[1])
    assert 0 < step_at_kill < 16, step_at_kill
    subprocess.run([sys.executable, SCRIPT, str(cut), "--resume"], check=True, env=ENV, capture_output=True)
    a, b = final_weights(full), final_weights(cut)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    assert int((cut / "checkpoints" / "latest").read_text().split("-")[1]) == 16


def test_two_process_ddp_ranks_end_identical(tmp_path):
    dump = tmp_path / "w"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           SCRIPT, str(tmp_path / "ddp"), "--steps-per-stage", "4", "--dump", str(dump)]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = load_file(f"{dump}.rank0.safetensors"), load_file(f"{dump}.rank1.safetensors")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    single = tmp_path / "single"
    subprocess.run([sys.executable, SCRIPT, str(single), "--steps-per-stage", "4", "--dump", str(tmp_path / "one")],
                   check=True, env=ENV, capture_output=True)
    w1 = load_file(f"{tmp_path / 'one'}.rank0.safetensors")
    assert w1.keys() == r0.keys()
    # the two ranks drew different data, so DDP training really differs from one process
    assert max((r0[k] - w1[k]).abs().max().item() for k in r0) > 1e-5


def test_flow_loss_is_zero_for_the_true_velocity():
    x0, noise, cond = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)

    def oracle(canvas, t, text, mask, ids):
        return torch.cat([noise - x0, torch.full_like(x0, 99.0)], -1)  # right half is ignored by the loss

    t = torch.rand(3)
    assert flow_matching_loss(oracle, x0, cond, None, None, None, t, noise).item() == 0.0
    wrong = lambda *a: torch.zeros(3, 4, 2, 4)  # noqa: E731
    expected = (noise - x0).pow(2).mean()
    torch.testing.assert_close(flow_matching_loss(wrong, x0, cond, None, None, None, t, noise), expected)


def test_condition_dropout_rates():
    n = 20000
    text, mask = torch.ones(n, 3, 2), torch.ones(n, 3, dtype=torch.long)
    cond = torch.ones(n, 1, 1, 1)
    is_edit = torch.arange(n) % 2 == 0
    un, um = torch.full((1, 2, 2), 5.0), torch.ones(1, 2, dtype=torch.long)
    t2, m2, c2, flag = drop_conditions(text, mask, cond, is_edit, un, um, 0.1, 0.05,
                                       torch.Generator().manual_seed(0))
    dropped = t2[:, 0, 0] == 5.0
    assert torch.equal(flag, dropped)  # the returned flag names exactly the samples given the negative prompt
    assert abs(dropped[~is_edit].float().mean() - 0.10) < 0.015
    assert abs(dropped[is_edit].float().mean() - 0.15) < 0.015
    blank = c2.flatten() == 0
    assert not blank[~is_edit].any()
    assert abs(blank[is_edit].float().mean() - 0.05) < 0.01
    assert bool((dropped | ~blank).all())  # a blank source always comes with the negative prompt
    assert torch.equal(m2[dropped][:, 2], torch.zeros(int(dropped.sum()), dtype=torch.long))


def test_text_bank_gather_round_trip():
    states = [torch.randn(n, 4) for n in (3, 1, 5)]
    lengths = torch.tensor([3, 1, 5])
    bank = TextBank(torch.cat(states).half(), torch.cumsum(lengths, 0) - lengths, lengths)
    text, mask = bank.gather(torch.tensor([2, 0, 1]))
    assert text.shape == (3, 5, 4) and mask.tolist() == [[1] * 5, [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    torch.testing.assert_close(text[1, :3], states[0].half().float())
    assert text[2, 1:].abs().sum() == 0


def test_batch_sampler_mix_and_category_weights():
    pools = {"t2i": make_pool("t2i", 200, 1), "edit": make_pool("edit", 200, 2)}
    stage = StageConfig("s", DataMix(t2i=0.25, edit=0.75, tag_weights={"b": 1.0}), steps=1, lr=1e-3, batch_size=8)
    sampler = BatchSampler(pools, stage, torch.Generator().manual_seed(0), image_size=32)
    batch = sampler.draw()
    assert batch["is_edit"].tolist() == [False] * 2 + [True] * 6
    assert batch["time_ids"].tolist() == [[32.0, 32.0]] * 8
    for _ in range(20):  # tag weights {"b": 1} exclude category "a" from the t2i pool
        sampler.draw()
    idx = torch.multinomial(sampler.p_t2i, 500, replacement=True, generator=torch.Generator().manual_seed(1))
    assert (pools["t2i"].categories[idx] == 1).all()


def test_twin_contrast_is_a_two_way_cross_entropy_on_the_relative_error_gap():
    err, twin = torch.tensor([0.1, 0.2, 0.3], requires_grad=True), torch.tensor([0.1, 0.3, 0.2], requires_grad=True)
    loss = twin_contrast_loss(err, twin, scale=10.0)
    e = 0.5 * (err + twin).detach()
    expected = torch.nn.functional.softplus(10.0 * (err - twin) / e).mean()
    torch.testing.assert_close(loss, expected)
    assert abs(twin_contrast_loss(torch.ones(4), torch.ones(4), 7.0).item() - math.log(2)) < 1e-6  # a coin flip
    assert twin_contrast_loss(torch.tensor([0.1]), torch.tensor([0.2]), 50.0).item() < 1e-13  # prompt clearly wins
    loss.backward()  # lowering the prompt's error and raising the twin's both lower the loss
    assert (err.grad > 0).all() and (twin.grad < 0).all()


def test_capped_twin_earns_nothing_for_answering_the_twin_worse_than_no_text():
    err, twin = torch.tensor([0.2, 0.2]), torch.tensor([0.5, 0.25], requires_grad=True)
    uncond = torch.tensor([0.3, 0.3], requires_grad=True)
    loss = twin_contrast_loss(err, twin, 10.0, err_uncond=uncond)
    torch.testing.assert_close(loss, twin_contrast_loss(err, torch.tensor([0.3, 0.25]), 10.0))
    loss.backward()
    assert twin.grad[0] == 0 and twin.grad[1] < 0  # capped: pushing the twin further is worth nothing
    assert uncond.grad is None or (uncond.grad == 0).all()  # the cap is a bound, not a target


def _twin_pool(n: int = 64) -> Pool:
    pool = make_pool("t2i", n, 1)
    twin_ids = torch.where(torch.arange(n) % 2 == 0, (pool.prompt_ids + 3) % 10, torch.tensor(-1))
    return replace(pool, twin_ids=twin_ids)


def test_batch_sampler_gathers_each_sample_s_twin_from_the_bank():
    pools = {"t2i": _twin_pool(), "edit": make_pool("edit", 64, 2)}
    stage = StageConfig("s", DataMix(t2i=0.5, edit=0.5), steps=1, lr=1e-3, batch_size=16, twin_weight=1.0,
                        twin_tags=("a", "b"))  # the synthetic pool's two categories
    batch = BatchSampler(pools, stage, torch.Generator().manual_seed(0), image_size=32).draw()
    assert not batch["has_twin"][8:].any() and batch["has_twin"][:8].any() and not batch["has_twin"][:8].all()
    bank = pools["t2i"].bank
    for i in range(8):  # find the sample by its text, then check its twin's states and mask
        own = [j for j in range(10) if torch.equal(bank.gather(torch.tensor([j]))[0][0],
                                                    batch["text"][i, :int(batch["mask"][i].sum())])]
        twin_text, twin_mask = batch["twin_text"][i], batch["twin_mask"][i]
        if batch["has_twin"][i]:
            expect, _ = bank.gather(torch.tensor([(own[0] + 3) % 10]))
            assert torch.equal(twin_text[:expect.shape[1]], expect[0]) and int(twin_mask.sum()) == expect.shape[1]
        else:
            assert int(twin_mask.sum()) == 0
    only_b = replace(stage, mix=DataMix(t2i=1.0), twin_tags=("b",))  # category "a" samples keep no twin
    sampler = BatchSampler({"t2i": pools["t2i"]}, only_b, torch.Generator().manual_seed(1), image_size=32)
    drawn = [sampler.draw() for _ in range(4)]
    assert any(b["has_twin"].any() for b in drawn)
    for b in drawn:  # a twin only where the sample's category is "b" and its pool row has one
        rows = [int((pools["t2i"].x0 == x).flatten(1).all(1).nonzero()[0]) for x in b["x0"]]
        want = [pools["t2i"].category_names[pools["t2i"].categories[r]] == "b" and pools["t2i"].twin_ids[r] >= 0
                for r in rows]
        assert b["has_twin"].tolist() == want
    with pytest.raises(ValueError, match="no twin prompts"):
        BatchSampler({"t2i": make_pool("t2i", 64, 1)}, stage, torch.Generator(), image_size=32)


def test_stage_loss_scores_the_twins_in_the_same_forward_as_the_batch():
    torch.manual_seed(0)
    unet = MobileUNet.from_preset("tiny", **UNET, in_channels=4, out_channels=4).eval()
    stage = StageConfig("s", DataMix(t2i=1.0), steps=1, lr=1e-3, batch_size=8, twin_weight=1.0, twin_scale=5.0,
                        twin_tags=("a", "b"))
    batch = BatchSampler({"t2i": _twin_pool()}, stage, torch.Generator().manual_seed(2), image_size=32).draw()
    dropped = torch.zeros(8, dtype=torch.bool)
    dropped[0] = True  # a dropped prompt has no twin to lose to
    args = (batch["x0"], batch["cond"])
    with torch.no_grad():
        loss, (contrast, accuracy), _ = stage_loss(unet, batch, batch["text"], batch["mask"], batch["cond"], dropped,
                                                stage, "cpu")
        own = flow_matching_loss(unet, *args, batch["text"], batch["mask"], batch["time_ids"], batch["t"],
                                 batch["noise"], reduce=False)
        twin = flow_matching_loss(unet, *args, batch["twin_text"], batch["twin_mask"], batch["time_ids"], batch["t"],
                                  batch["noise"], reduce=False)
    pair = batch["has_twin"] & ~dropped
    torch.testing.assert_close(loss, own.mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(contrast, twin_contrast_loss(own[pair], twin[pair], 5.0), rtol=1e-3, atol=1e-6)
    assert accuracy == pytest.approx((own[pair] < twin[pair]).float().mean().item())
    capped = replace(stage, twin_cap_uncond=True)
    uncond = (torch.randn(1, 3, 12), torch.ones(1, 3, dtype=torch.long))
    with torch.no_grad():
        loss_c, (contrast_c, _), _ = stage_loss(unet, batch, batch["text"], batch["mask"], batch["cond"], dropped,
                                             capped, "cpu", uncond)
        n = int(pair.sum())
        none = flow_matching_loss(unet, batch["x0"][pair], batch["cond"][pair], uncond[0].expand(n, -1, -1),
                                  uncond[1].expand(n, -1), batch["time_ids"][pair], batch["t"][pair],
                                  batch["noise"][pair], reduce=False)
    torch.testing.assert_close(loss_c, own.mean(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(contrast_c, twin_contrast_loss(own[pair], twin[pair], 5.0, none), rtol=1e-3, atol=1e-6)
    stage_off = replace(stage, twin_weight=0.0)
    plain = BatchSampler({"t2i": _twin_pool()}, stage_off, torch.Generator().manual_seed(2), image_size=32).draw()
    assert "has_twin" not in plain
    with torch.no_grad():
        assert stage_loss(unet, plain, plain["text"], plain["mask"], plain["cond"], dropped, stage_off, "cpu")[1] is None


def test_twin_settings_are_checked_where_the_stage_is_defined():
    with pytest.raises(ValueError, match="twin contrast needs a flow stage that draws t2i"):
        StageConfig("e", DataMix(t2i=0.0, edit=1.0), steps=1, lr=1e-3, batch_size=4, twin_weight=1.0)
    with pytest.raises(ValueError, match="twin_min_t"):
        StageConfig("s", DataMix(), steps=1, lr=1e-3, batch_size=4, twin_weight=1.0, twin_min_t=1.0)


def test_anchored_rows_regress_onto_the_anchor_and_mirror_rows_onto_the_data():
    torch.manual_seed(0)
    unet = MobileUNet.from_preset("tiny", **UNET, in_channels=4, out_channels=4).eval()
    stage = StageConfig("s", DataMix(t2i=0.5, edit=0.5), steps=1, lr=1e-3, batch_size=8, anchor_weight=2.0)
    pools = {"t2i": make_pool("t2i", 64, 1), "edit": make_pool("edit", 64, 2)}
    batch = BatchSampler(pools, stage, torch.Generator().manual_seed(3), image_size=32).draw()
    dropped = torch.zeros(8, dtype=torch.bool)
    args = (batch["x0"], batch["cond"], batch["text"], batch["mask"], batch["time_ids"], batch["t"])
    with torch.no_grad():
        data = flow_matching_loss(unet, *args[:5], batch["t"], batch["noise"], reduce=False)  # [8]
        # the anchor is the network itself (a stage's start): every anchored row costs exactly nothing
        assert stage_loss(unet, batch, *args[2:4], batch["cond"], dropped, stage, "cpu", anchor=Anchors(frozen_copy(unet)))[0] == 0
        batch["keep_text"] = torch.arange(8) >= 6  # the last two rows are mirror pairs: data targets, weight 1
        loss, _, _ = stage_loss(unet, batch, *args[2:4], batch["cond"], dropped, stage, "cpu", anchor=Anchors(frozen_copy(unet)))
        torch.testing.assert_close(loss, data[6:].sum() / 8)
        torch.manual_seed(1)
        other = MobileUNet.from_preset("tiny", **UNET, in_channels=4, out_channels=4).eval()
        loss, _, _ = stage_loss(unet, batch, *args[2:4], batch["cond"], dropped, stage, "cpu", anchor=Anchors(other))
        x_t = batch["x0"] + batch["t"][:, None, None, None] * (batch["noise"] - batch["x0"])
        v, v_other = (predict_velocity(m, x_t, *args[1:]) for m in (unet, other))
        anchored = ((v - v_other) ** 2).mean(dim=(1, 2, 3))[:6]  # [6]
        torch.testing.assert_close(loss, (2.0 * anchored.sum() + data[6:].sum()) / 8, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="anchor_weight must be >= 0"):
        StageConfig("s", DataMix(), steps=1, lr=1e-3, batch_size=4, anchor_weight=-1.0)
    with pytest.raises(ValueError, match="needs a flow stage"):
        StageConfig("r", DataMix(), steps=1, lr=1e-3, batch_size=4, anchor_weight=1.0, kind="rl", rl=RLStageConfig())
    with pytest.raises(ValueError, match="needs exactly one anchor"):
        train_stage(None, None, None, None, stage, None, None, None, 0, 1)


def test_rows_of_the_start_tags_keep_the_start_anchor_and_the_rest_follow_anchor_from():
    torch.manual_seed(0)
    unet = MobileUNet.from_preset("tiny", **UNET, in_channels=4, out_channels=4).eval()
    torch.manual_seed(1)
    teacher = MobileUNet.from_preset("tiny", **UNET, in_channels=4, out_channels=4).eval()
    stage = StageConfig("s", DataMix(t2i=0.5, edit=0.5), steps=1, lr=1e-3, batch_size=8, anchor_weight=3.0,
                        anchor_from="base", anchor_start_tags=("a",))  # "a": a category of both pools
    pools = {"t2i": make_pool("t2i", 64, 1), "edit": make_pool("edit", 64, 2)}
    g = torch.Generator().manual_seed(3)
    batch = BatchSampler(pools, stage, g, image_size=32).draw()
    start = batch["anchor_start"]  # [8]
    assert 0 < int(start.sum()) < 8  # both kinds of rows in this draw
    dropped = torch.zeros(8, dtype=torch.bool)
    args = (batch["x0"], batch["cond"], batch["text"], batch["mask"], batch["time_ids"], batch["t"])
    with torch.no_grad():
        loss, _, _ = stage_loss(unet, batch, *args[2:4], batch["cond"], dropped, stage, "cpu",
                             anchor=Anchors(main=teacher, start=frozen_copy(unet)))
        x_t = batch["x0"] + batch["t"][:, None, None, None] * (batch["noise"] - batch["x0"])
        v, v_teacher = (predict_velocity(m, x_t, *args[1:]) for m in (unet, teacher))
        gap = ((v - v_teacher) ** 2).mean(dim=(1, 2, 3))  # [8]
        # the start rows cost nothing (their anchor is the network); the others pay their gap to the teacher
        torch.testing.assert_close(loss, 3.0 * gap[~start].sum() / 8, rtol=1e-4, atol=1e-7)
        with pytest.raises(ValueError, match="no start anchor"):
            stage_loss(unet, batch, *args[2:4], batch["cond"], dropped, stage, "cpu", anchor=Anchors(main=teacher))
    with pytest.raises(ValueError, match="need anchor_weight > 0"):
        StageConfig("s", DataMix(), steps=1, lr=1e-3, batch_size=4, anchor_from="base")
    with pytest.raises(ValueError, match="needs another model"):
        StageConfig("s", DataMix(), steps=1, lr=1e-3, batch_size=4, anchor_weight=1.0, anchor_start_tags=("a",))
    with pytest.raises(ValueError, match="need a start anchor"):
        train_stage(None, None, None, None, stage, None, None, None, 0, 1, anchor=Anchors(main=teacher))


def test_an_anchor_or_teacher_folder_must_match_the_networks_latent_channels(tmp_path):
    """``load_anchor`` (anchors, DMD teachers) reads a saved U-Net back exactly, and refuses one made for another
    VAE's latents when given the trained network."""
    from dreamlite.train.recipe import load_anchor
    from synthetic_run import recipe

    saved = MobileUNet.from_preset("tiny", **UNET, in_channels=4, out_channels=4).eval()
    saved.save_pretrained(tmp_path / "unet", safe_serialization=True)
    loaded = load_anchor(tmp_path, recipe(1), "s", like=saved)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), saved.state_dict().values()))
    assert not any(p.requires_grad for p in loaded.parameters())
    other = MobileUNet.from_preset("tiny", **UNET, in_channels=8, out_channels=8)
    with pytest.raises(ValueError, match=r"stage 's': .* has \(in, out\) channels \(4, 4\), the network \(8, 8\)"):
        load_anchor(tmp_path, recipe(1), "s", like=other)
