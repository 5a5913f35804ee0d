"""Reward-hacking watch for the RL stage: is the reward still measuring what we want?

Every ``watch_every`` iterations the policy samples fixed sets it never trains on, with fixed noise:
- ``heldout_t2i``: text-to-image prompts from a watch-only seed stream (the RL pool's train phrasings);
- ``paraphrase_t2i``: the *same* GenEval rows re-phrased with the language module's ``heldout`` templates and
  relation words, which no RL prompt uses (a policy that games wordings loses here, one that learned the world
  does not);
- ``heldout_edit`` / ``paraphrase_edit``: edits from the watch stream in train and in held-out phrasings;
and image statistics of all those outputs (a hacked reward often shows as over-saturated colours, dirty
backgrounds, or images the VAE cannot reproduce): mean HSV saturation, background purity (share of border
pixels within 0.1 of the border's median colour), VAE reconstruction error (mean |decode(encode(x)) - x| in
[0, 1]); plus the drift from the frozen reference, mean ||v_policy - v_ref||^2 on a fixed probe batch.
Rows go to ``<run>/rl_watch.jsonl``; ``<run>/rl_watch.png`` plots them over iterations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dreamlite.sampling import Guidance, make_sigmas, sample, velocity
from dreamlite.shapes.edits import EDIT_TYPES
from dreamlite.shapes.spec import PromptSpec, rephrase
from dreamlite.shapes.tasks import check_training_seed
from dreamlite.train.config import StageConfig
from dreamlite.train.loop import StageContext
from dreamlite.train.rl import rl_edit_cases, rl_t2i_prompts
from dreamlite.train.rl_stage import TaskBatch, decoder, edit_batch, latent_shape, t2i_batch

WATCH_FILE, WATCH_PLOT = "rl_watch.jsonl", "rl_watch.png"
REWARD_KEYS = ("heldout_t2i", "paraphrase_t2i", "heldout_edit", "paraphrase_edit")
IMAGE_KEYS = ("saturation", "background_purity", "vae_recon_error")


def paraphrase(row: dict, rng: np.random.Generator) -> dict:
    """The same GenEval row with its prompt re-phrased from the held-out templates (same scoring)."""
    return rephrase(PromptSpec.from_dict(row), rng, "heldout").to_dict()


def image_stats(images: np.ndarray, vae) -> dict[str, float]:
    """Saturation, background purity and VAE reconstruction error of uint8 images [N, H, W, 3]."""
    from dreamlite.models.vae import decode, encode, to_tensor, to_uint8

    x = images.astype(np.float32) / 255.0
    hi, lo = x.max(-1), x.min(-1)
    saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0).mean()
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)  # [N, 4H, 3]
    purity = (np.abs(border - np.median(border, axis=1, keepdims=True)).max(-1) <= 0.1).mean()
    with torch.no_grad():
        pixels = to_tensor(images).to(vae.device, vae.dtype)
        again = to_uint8(decode(vae, encode(vae, pixels)))
    recon = np.abs(again.astype(np.float32) - images.astype(np.float32)).mean() / 255.0
    return {"saturation": float(saturation), "background_purity": float(purity), "vae_recon_error": float(recon)}


class RLWatch:
    """Fixed watch sets and the reference, built once per stage; ``log(iteration, policy)`` appends a row."""

    def __init__(self, ctx: StageContext, stage: StageConfig, rewards: dict, reference: torch.nn.Module):
        cfg = stage.rl
        self.ctx, self.stage, self.rewards, self.reference = ctx, stage, rewards, reference
        rng = np.random.default_rng([check_training_seed(cfg.rl_seed), 0, 1])  # not an iteration's stream
        n, size, self.sets = cfg.watch_prompts, ctx.recipe.corpus.image_size, {}
        if "t2i" in rewards:
            rows = rl_t2i_prompts(rng, n)
            self.sets["heldout_t2i"] = t2i_batch(ctx, rows)
            para = [paraphrase(m, rng) for _, m in rows]
            self.sets["paraphrase_t2i"] = t2i_batch(ctx, [(m["prompt"], m) for m in para])
        if "edit" in rewards:
            self.sets["heldout_edit"] = edit_batch(ctx, rl_edit_cases(rng, n, size))
            self.sets["paraphrase_edit"] = edit_batch(ctx, rl_edit_cases(rng, n, size, phrasings="heldout"))
        self.shape, self.decode = latent_shape(ctx), decoder(ctx)
        self.sigmas = make_sigmas(cfg.sample_steps, self.shape[1], self.shape[2])
        probe = next(iter(self.sets.values())).cond
        g = torch.Generator().manual_seed(0)
        k = probe.text.shape[0]
        self.probe = (torch.randn(k, *self.shape, generator=g).to(ctx.accelerator.device),
                      torch.linspace(0.1, 0.9, k, device=ctx.accelerator.device), probe)

    def _outputs(self, policy, batch: TaskBatch, guidance: Guidance) -> np.ndarray:
        n = batch.cond.text.shape[0]
        noise = torch.randn(n, *self.shape, generator=torch.Generator().manual_seed(1)).to(self.ctx.accelerator.device)
        return self.decode(sample(policy, noise, self.sigmas, batch.cond, guidance))

    @torch.no_grad()
    def row(self, iteration: int, policy: torch.nn.Module) -> dict:
        policy.eval()
        out: dict = {"stage": self.stage.name, "iteration": iteration}
        images = []
        for key, batch in self.sets.items():
            imgs = self._outputs(policy, batch, self.stage.rl.nft.guidance)
            images.append(imgs)
            out[key] = self.rewards[batch.task](imgs, batch.prompts, batch.metadata, batch.sources).mean().item()
        out.update(image_stats(np.concatenate(images), self.ctx.vae))
        x_t, t, cond = self.probe
        out["drift"] = (velocity(policy, x_t, t, cond) - velocity(self.reference, x_t, t, cond)).pow(2).mean().item()
        return out

    def log(self, iteration: int, policy: torch.nn.Module) -> dict:
        """Append this iteration's row (once: a resumed run reads it back instead) and redraw the plot."""
        path = self.ctx.run_dir / WATCH_FILE
        for r in read_rows(path):
            if r["stage"] == self.stage.name and r["iteration"] == iteration:
                return r
        row = self.row(iteration, policy)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        plot_watch(self.ctx.run_dir)
        return row


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


CURVE_WINDOW = 20  # iterations of one category averaged per point (a few prompts each: single ones are noisy)


def category_curves(loss_rows: list[dict], window: int = CURVE_WINDOW) -> dict[tuple[str, str], tuple[list, list]]:
    """(stage, tag or edit type) -> (steps, trailing mean of the last ``window`` rewards of that category), from
    the RL rows of ``loss.jsonl`` (their ``by_category``): the learning curve of each tag during RL."""
    series: dict[tuple[str, str], tuple[list, list]] = {}
    for row in loss_rows:
        for category, reward in row.get("by_category", {}).items():
            steps, values = series.setdefault((row["stage"], category), ([], []))
            steps.append(row["step"])
            values.append(reward)
    return {key: (steps, [float(np.mean(values[max(0, i + 1 - window):i + 1])) for i in range(len(values))])
            for key, (steps, values) in sorted(series.items())}


def plot_watch(run_dir: Path) -> None:
    """Rewards on held-out and paraphrased sets, image statistics and drift over RL iterations (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(run_dir / WATCH_FILE)
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for stage in dict.fromkeys(r["stage"] for r in rows):
        pts = [r for r in rows if r["stage"] == stage]
        it = [r["iteration"] for r in pts]
        for ax, keys in ((axes[0], REWARD_KEYS), (axes[1], IMAGE_KEYS), (axes[2], ("drift",))):
            for key in keys:
                if key in pts[0]:
                    ax.plot(it, [r[key] for r in pts], marker=".", label=f"{stage}: {key}")
    axes[0].set(title="reward on watch sets", xlabel="RL iteration", ylim=(0, 1))
    axes[1].set(title="image statistics of watch outputs", xlabel="RL iteration")
    axes[2].set(title="drift: mean ||v - v_ref||^2 on a probe batch", xlabel="RL iteration")
    for (stage, category), (steps, means) in category_curves(read_rows(run_dir / "loss.jsonl")).items():
        dashed = category in EDIT_TYPES  # edit types dashed, GenEval tags solid: 14 curves share 10 colours
        axes[3].plot(steps, means, linestyle="--" if dashed else "-", label=f"{stage}: {category}")
    axes[3].set(title=f"rollout reward per tag / edit type (mean of last {CURVE_WINDOW})", xlabel="step",
                ylim=(0, 1))
    for ax in axes[:3]:
        if ax.lines:
            ax.legend(fontsize=7)
    if axes[3].lines:
        axes[3].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(run_dir / WATCH_PLOT, dpi=100)
    plt.close(fig)


__all__ = ["RLWatch", "category_curves", "image_stats", "paraphrase", "plot_watch", "read_rows"]
