import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from dreamlite.train.config import DataMix, StageConfig
from dreamlite.train.corpus import TextBank
from dreamlite.train.flow import drop_conditions, flow_matching_loss
from dreamlite.train.loop import BatchSampler, latest_checkpoint

HERE = Path(__file__).parent
SCRIPT = str(HERE / "synthetic_run.py")
sys.path.insert(0, str(HERE))
from synthetic_run import make_pool  # noqa: E402

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
    subprocess.run([sys.executable, SCRIPT, str(single), "--steps-per-stage", "4"], check=True, env=ENV,
                   capture_output=True)
    w1 = final_weights(single)
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
    t2, m2, c2 = drop_conditions(text, mask, cond, is_edit, un, um, 0.1, 0.05, torch.Generator().manual_seed(0))
    dropped = t2[:, 0, 0] == 5.0
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
