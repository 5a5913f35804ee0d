"""Post-training stages of a recipe (rl, distill): typed configs, exact resume after SIGKILL, the reward-hacking
watch, both model variants, and the real Shapes rewards end to end on a tiny random model."""

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dreamlite.train.config import DataMix, DistillStageConfig, Recipe, RLStageConfig, StageConfig
from dreamlite.train.loop import latest_checkpoint
from dreamlite.train.rl import NFTConfig

HERE = Path(__file__).parent
SCRIPT = str(HERE / "synthetic_run.py")
sys.path.insert(0, str(HERE))
from synthetic_run import FakeEncoder, dmd_recipe, make_pool, post_recipe, tiny_vae  # noqa: E402
from test_loop import ENV  # noqa: E402


# ----------------------------------------------------------------------------------------------- config
def test_stage_kinds_round_trip_through_json_and_validate():
    r = post_recipe()
    again = Recipe.from_dict(json.loads(r.to_json()))
    assert again.stages == r.stages
    assert again.stages[1].rl.nft == NFTConfig(group_size=2, minibatch=2, old_decay=0.5, kl_weight=0.1)
    assert again.stages[2].distill.rounds == 3 and again.stages[2].total_steps == 6
    old = json.loads(r.to_json())  # a recipe written before stage kinds existed still loads, as flow stages
    for s in old["stages"]:
        del s["kind"], s["rl"], s["distill"]
    assert [s.kind for s in Recipe.from_dict({**old, "stages": old["stages"][:1]}).stages] == ["flow"]
    mix = DataMix()
    with pytest.raises(ValueError, match="kind 'rl' needs its 'rl' config"):
        StageConfig("x", mix, 1, 1e-3, 4, kind="rl")
    with pytest.raises(ValueError, match="unknown kind 'ppo'"):
        StageConfig("x", mix, 1, 1e-3, 4, kind="ppo")
    with pytest.raises(ValueError, match="a 'distill' config is set but the stage's kind is 'flow'"):
        StageConfig("x", mix, 1, 1e-3, 4, distill=DistillStageConfig())
    with pytest.raises(ValueError, match="times a power of 2"):
        DistillStageConfig(start_steps=24, final_steps=4)
    with pytest.raises(ValueError, match="kind 'dmd' needs its 'dmd' config"):
        StageConfig("x", mix, 1, 1e-3, 4, kind="dmd")
    d = dmd_recipe()
    assert Recipe.from_dict(json.loads(d.to_json())).stages == d.stages and d.stages[1].dmd.student_steps == 2
    with pytest.raises(ValueError, match="must be the last stage"):
        replace(r, stages=(r.stages[2], r.stages[0]))
    bad = json.loads(r.to_json())
    bad["stages"][1]["rl"]["nft"]["group_sise"] = 4
    with pytest.raises(ValueError, match=r"NFTConfig: unknown field\(s\) \['group_sise'\]"):
        Recipe.from_dict(bad)


def test_post_recipes_are_registered_and_sized():
    from dreamlite.train.recipes import get_recipe

    post = get_recipe("shapes-tiny-post")
    assert [s.kind for s in post.stages] == ["rl", "distill"]
    assert post.init_from == "runs/shapes-tiny-plus/model" and post.vae_path == "runs/shapes-tiny-v0/vae"
    assert post.stages[1].distill.final_steps == 4
    quick = get_recipe("shapes-tiny-post-quick")
    assert [s.kind for s in quick.stages] == [s.kind for s in post.stages]
    assert Recipe.from_dict(json.loads(post.to_json())).stages == post.stages


def test_real_data_runner_refuses_post_stages(tmp_path):
    from dreamlite.train.streaming import _run_stages

    with pytest.raises(ValueError, match=r"flow stages only; recipe 'synthetic-post' has rl \(rl\), distill"):
        _run_stages(None, post_recipe(), None, None, None, tmp_path, None, None)


def test_task_schedule_follows_the_mix():
    from dreamlite.train.rl_stage import task_of

    assert [task_of(i, DataMix(0.5, 0.5)) for i in range(4)] == ["t2i", "edit", "t2i", "edit"]
    assert {task_of(i, DataMix(1.0, 0.0)) for i in range(5)} == {"t2i"}
    assert sum(task_of(i, DataMix(0.75, 0.25)) == "edit" for i in range(100)) == 25


# ------------------------------------------------------------------------------------------------ watch
def test_paraphrases_keep_the_row_and_use_heldout_wording():
    from dreamlite.train.rl import rl_rng, rl_t2i_prompts
    from dreamlite.train.rl_watch import paraphrase

    rows = rl_t2i_prompts(rl_rng(3), 60)
    rng = np.random.default_rng(0)
    for prompt, row in rows:
        para = paraphrase(row, rng)
        assert {k: v for k, v in para.items() if k != "prompt"} == {k: v for k, v in row.items() if k != "prompt"}
        assert para["prompt"] != prompt
    assert {r["tag"] for _, r in rows} == {"single_object", "colors", "two_object", "color_attr", "counting",
                                            "position"}


def test_image_stats_flag_dirty_backgrounds():
    from dreamlite.train.rl_watch import image_stats

    clean = np.full((2, 32, 32, 3), 255, np.uint8)
    clean[:, 10:20, 10:20] = (255, 0, 0)
    noisy = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    vae = tiny_vae()
    a, b = image_stats(clean, vae), image_stats(noisy, vae)
    assert a["background_purity"] == 1.0 and b["background_purity"] < 0.2
    assert 0 < a["saturation"] < b["saturation"] and a["vae_recon_error"] >= 0


# ------------------------------------------------------------------------------------------------ resume
def _final(run_dir: Path, extras: tuple[str, ...] = ("ema", "teacher")) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir)
    out = {k: v for k, v in load_file(str(ckpt / "unet" / "diffusion_pytorch_model.safetensors")).items()}
    for extra in extras:
        out.update({f"{extra}.{k}": v for k, v in load_file(str(ckpt / f"{extra}.safetensors")).items()})
    return out


def _kill_inside(run_dir: Path, stage_index: int, args: list[str], mode: str = "--post") -> dict:
    """Start the run, SIGKILL it once a checkpoint inside ``stage_index`` exists plus some lost work."""
    proc = subprocess.Popen([sys.executable, SCRIPT, str(run_dir), mode, "--slow", "0.3", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        ckpt = latest_checkpoint(run_dir)
        try:
            state = json.loads((ckpt / "state.json").read_text()) if ckpt else None
        except (OSError, ValueError):
            state = None
        if state and state["stage_index"] == stage_index and state["step"] > 0:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # past the checkpoint, so work is really lost
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return json.loads((latest_checkpoint(run_dir) / "state.json").read_text())


def test_sigkill_inside_rl_and_distill_stages_then_resume_matches_uninterrupted(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([sys.executable, SCRIPT, str(full), "--post"], check=True, env=ENV, capture_output=True)
    at_rl = _kill_inside(cut, 1, [])
    assert at_rl["stage_index"] == 1 and 0 < at_rl["step"] < 6, at_rl
    at_distill = _kill_inside(cut, 2, ["--resume"])
    assert at_distill["stage_index"] == 2 and 0 < at_distill["step"] < 6, at_distill
    assert at_distill["round"] == at_distill["step"] // 2
    subprocess.run([sys.executable, SCRIPT, str(cut), "--post", "--resume"], check=True, env=ENV, capture_output=True)
    a, b = _final(full), _final(cut)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    assert json.loads((latest_checkpoint(cut) / "state.json").read_text())["global_step"] == 3 + 6 + 6
    watch_a = [json.loads(x) for x in (full / "rl_watch.jsonl").read_text().splitlines()]
    watch_b = [json.loads(x) for x in (cut / "rl_watch.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in watch_a] == [0, 2, 4, 6]
    assert sorted(r["iteration"] for r in watch_b) == [0, 2, 4, 6]  # logged once each, also across the kill
    by_it = {r["iteration"]: r for r in watch_b}
    for r in watch_a:
        assert by_it[r["iteration"]] == pytest.approx(r, abs=1e-6)
    assert r["drift"] > 0 and (full / "rl_watch.png").stat().st_size > 0
    assert (full / "stages" / "distill" / "base.safetensors").is_file()


def test_sigkill_inside_a_dmd_stage_then_resume_matches_uninterrupted(tmp_path):
    """The student, its EMA, the fake network and the fake's optimizer state all resume exactly."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([sys.executable, SCRIPT, str(full), "--dmd"], check=True, env=ENV, capture_output=True)
    at_dmd = _kill_inside(cut, 1, [], mode="--dmd")
    assert at_dmd["stage_index"] == 1 and 0 < at_dmd["step"] < 6, at_dmd
    assert (latest_checkpoint(cut) / "fake_optimizer.pt").is_file()
    subprocess.run([sys.executable, SCRIPT, str(cut), "--dmd", "--resume"], check=True, env=ENV, capture_output=True)
    a, b = _final(full, ("ema", "fake")), _final(cut, ("ema", "fake"))
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, worst
    start = load_file(str(full / "stages" / "dmd" / "teacher.safetensors"))
    moved = max((a[k] - start[k]).abs().max().item() for k in start)
    fake_moved = max((a[f"fake.{k}"] - start[k]).abs().max().item() for k in start)
    assert moved > 0 and fake_moved > 0  # both the student and the fake network learnt
    rows = [json.loads(x) for x in (full / "loss.jsonl").read_text().splitlines() if '"dmd"' in x]
    assert rows and all(r["stage"] == "dmd" for r in rows)


def test_two_process_dmd_ranks_end_identical(tmp_path):
    """Under DDP (2 CPU processes, gloo) the student's several calls per update and the fake network's updates stay
    in step: both ranks end with the same student and the same fake network (each rank dumps its own tensors)."""
    dump = tmp_path / "w"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           SCRIPT, str(tmp_path / "ddp"), "--dmd", "--dump", str(dump)]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = load_file(f"{dump}.rank0.safetensors"), load_file(f"{dump}.rank1.safetensors")
    # the flow stage's optimizer, then the fake network's (it learns first), then the student's
    assert sorted({k.split(".")[0] for k in r0}) == ["opt0", "opt1", "opt2"]
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # each rank drew its own batches: equal only if synced


# ------------------------------------------------------------------------------------ the collapse guard
def test_drift_guard_stops_rl_and_restores_the_last_healthy_watch(tmp_path):
    """max_drift below any real drift: the watch at iteration 0 (policy = reference, drift 0) is healthy, the one
    at iteration 2 is not, so the stage ends there with the iteration-0 weights, once, also across a resume."""
    from synthetic_run import make_pool as pool, register_fake_reward
    from dreamlite.train.recipe import Components, run_recipe

    register_fake_reward()
    base = post_recipe()
    rl = replace(base.stages[1], rl=replace(base.stages[1].rl, max_drift=1e-12))
    recipe = replace(base, stages=(base.stages[0], rl))
    comps = Components(vae=tiny_vae(), encoder=FakeEncoder(),
                       pools={"t2i": pool("t2i", 64, 1), "edit": pool("edit", 64, 2)})
    run = tmp_path / "run"
    torch.set_num_threads(1)
    run_recipe(recipe, run, evaluate=False, components=comps)
    note = json.loads((run / "stages" / "rl" / "stopped.json").read_text())
    assert note["stopped_at_iteration"] == 2 and note["restored_iteration"] == 0 and note["drift"] > 1e-12
    watch = [json.loads(x) for x in (run / "rl_watch.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in watch] == [0, 2] and watch[0]["drift"] == 0.0
    rows = [json.loads(x) for x in (run / "loss.jsonl").read_text().splitlines()]
    assert sum(r["stage"] == "rl" for r in rows) == 2  # iterations 0 and 1 ran, then the guard fired
    ckpt = latest_checkpoint(run)
    state = json.loads((ckpt / "state.json").read_text())
    assert (state["stage_index"], state["step"], state["global_step"]) == (1, 6, 3 + 6)
    reference = load_file(str(run / "stages" / "rl" / "reference.safetensors"))
    weights = load_file(str(ckpt / "unet" / "diffusion_pytorch_model.safetensors"))
    ema = load_file(str(ckpt / "ema.safetensors"))
    assert reference.keys() == weights.keys()
    assert all(torch.equal(weights[k], v) and torch.equal(ema[k], v.float()) for k, v in reference.items())
    run_recipe(recipe, run, resume=True, evaluate=False, components=comps)  # the stage is done: nothing more runs
    again = [json.loads(x) for x in (run / "loss.jsonl").read_text().splitlines()]
    assert again == rows and latest_checkpoint(run) == ckpt
    with pytest.raises(ValueError, match="max_drift must be >= 0 and needs the watch"):
        RLStageConfig(max_drift=1.0, watch_every=0)


# ------------------------------------------------------------------------------- real rewards end to end
def test_post_quick_runs_real_rewards_and_saves_both_variants(tmp_path):
    """shapes-tiny-post-quick on a tiny random model: the Shapes detector scores the rollouts and the watch, the
    distill stage's evaluation samples the mobile variant, and the model folder holds base and mobile."""
    from dreamlite.models.text import load_text_encoder
    from dreamlite.pipeline import DreamLitePipeline
    from dreamlite.train.recipe import Components, run_recipe
    from dreamlite.train.recipes import get_recipe

    recipe = get_recipe("shapes-tiny-post-quick")
    encoder = load_text_encoder(recipe.text_encoder)
    vae = tiny_vae()
    text_dim = encoder.hidden_size
    pools = {k: replace(make_pool(k, 16, i), bank=_bank(text_dim, i)) for i, k in enumerate(("t2i", "edit"))}
    recipe = replace(recipe, unet_overrides={**recipe.unet_overrides, "text_embed_dim": text_dim})
    model = run_recipe(recipe, tmp_path / "run", components=Components(vae, encoder, pools, save_model=True))
    rows = [json.loads(x) for x in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    rl_rows = [r for r in rows if r["stage"] == "rl"]
    assert [r["task"] for r in rl_rows] == ["t2i", "edit"] and all(0 <= r["reward"] <= 1 for r in rl_rows)
    from dreamlite.shapes.edits import EDIT_TYPES
    from dreamlite.shapes.spec import TAGS
    for r, known in zip(rl_rows, (TAGS, EDIT_TYPES)):  # per-tag / per-edit-type curves: the prompts' means
        assert r["by_category"] and set(r["by_category"]) <= set(known), r["by_category"]
        assert min(r["by_category"].values()) <= r["reward"] + 1e-6 <= max(r["by_category"].values()) + 2e-6
    watch = [json.loads(x) for x in (tmp_path / "run" / "rl_watch.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in watch] == [0, 2]
    assert all(0 <= r[k] <= 1 for r in watch for k in ("heldout_t2i", "paraphrase_t2i", "heldout_edit",
                                                       "paraphrase_edit", "background_purity"))
    scores = [json.loads(x) for x in (tmp_path / "run" / "scores.jsonl").read_text().splitlines()]
    assert [(s["stage"], s["variant"]) for s in scores] == [("rl", "base"), ("distill", "mobile")]
    cfg = json.loads((model / "dreamlite.json").read_text())
    assert cfg["default_variant"] == "mobile"
    assert cfg["variants"]["mobile"] == {"unet_folder": "unet_mobile", "num_inference_steps": 2,
                                         "guidance_scale": 1.0, "image_guidance_scale": 1.0}
    assert cfg["variants"]["base"]["unet_folder"] == "unet" and cfg["variants"]["base"]["guidance_scale"] > 1
    base = DreamLitePipeline.from_pretrained(model, variant="base", text_encoder=encoder)
    mobile = DreamLitePipeline.from_pretrained(model, text_encoder=encoder)
    entered = load_file(str(tmp_path / "run" / "stages" / "distill" / "base.safetensors"))
    assert all(torch.equal(base.unet.state_dict()[k], v) for k, v in entered.items())
    assert mobile.variant == "mobile" and any(not torch.equal(mobile.unet.state_dict()[k], v)
                                              for k, v in entered.items())
    out = mobile("a photo of a red circle", num_images_per_prompt=1, output_type="np", progress=False)
    assert out.images.shape[-1] == 3


def _bank(dim: int, seed: int):
    from dreamlite.train.corpus import TextBank

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 6, (10,), generator=g)
    return TextBank(torch.randn(int(lengths.sum()), dim, generator=g).half(), torch.cumsum(lengths, 0) - lengths,
                    lengths)


def test_category_curves_average_each_tag_over_its_own_last_iterations():
    from dreamlite.train.rl_watch import category_curves

    rows = [{"stage": "rl", "step": 1, "by_category": {"position": 0.2, "colors": 1.0}},
            {"stage": "rl", "step": 2, "by_category": {"add": 0.5}},
            {"stage": "rl", "step": 3, "by_category": {"position": 0.4}},
            {"stage": "rl", "step": 4, "by_category": {"position": 0.9}},
            {"stage": "distill", "step": 5, "loss": 0.1}]  # rows without rewards are skipped
    curves = category_curves(rows, window=2)
    assert list(curves) == [("rl", "add"), ("rl", "colors"), ("rl", "position")]
    steps, means = curves[("rl", "position")]
    assert steps == [1, 3, 4] and means == pytest.approx([0.2, 0.3, 0.65])
    assert curves[("rl", "colors")] == ([1], [1.0])
