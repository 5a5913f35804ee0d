"""A tiny, fully deterministic training run on synthetic pools (no trained VAE, no text model).

Used by the kill-and-resume and DDP tests as a subprocess:
    python tests/train/synthetic_run.py RUN_DIR [--resume] [--steps-per-stage N] [--dump FILE] [--post | --dmd]

``--post`` runs flow -> rl -> distill (``post_recipe``) with a tiny random VAE and a fake reward that is a
deterministic function of the decoded images (registered as ``"fake"`` in ``rl_stage.REWARDS``). ``--dmd`` runs
flow -> dmd (``dmd_recipe``: the start of the dmd stage is its own teacher).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

from dreamlite.models.vae import VAEConfig, make_vae
from dreamlite.train.config import CorpusConfig, DataMix, DistillStageConfig, Recipe, RLStageConfig, StageConfig
from dreamlite.train.dmd import DMDConfig
from dreamlite.train.rl import NFTConfig
from dreamlite.train.corpus import Pool, TextBank
from dreamlite.train.recipe import Components, run_recipe

UNET = dict(block_out_channels=(16, 32, 32), num_attention_heads=(1, 2, 2), transformer_layers_per_block=(1, 1, 1),
            mid_transformer_layers=1, text_embed_dim=12, cross_attention_dim=16, time_embed_dim=32,
            size_embed_dim=8, norm_num_groups=8)


class FakeEncoder:
    def encode(self, prompts, images=None, *, task=None, unconditional=False):
        g = torch.Generator().manual_seed(123)
        return torch.randn(len(prompts), 2, 12, generator=g), torch.ones(len(prompts), 2, dtype=torch.long)


def make_pool(kind: str, n: int, seed: int) -> Pool:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 6, (10,), generator=g)
    bank = TextBank(torch.randn(int(lengths.sum()), 12, generator=g).half(), torch.cumsum(lengths, 0) - lengths,
                    lengths)
    return Pool(x0=torch.randn(n, 4, 4, 4, generator=g),
                cond=torch.randn(n, 4, 4, 4, generator=g) if kind == "edit" else None,
                prompt_ids=torch.randint(0, 10, (n,), generator=g), categories=torch.randint(0, 2, (n,), generator=g),
                category_names=["a", "b"], bank=bank)


def recipe(steps: int) -> Recipe:
    return Recipe(name="synthetic", preset="tiny", unet_overrides=UNET, checkpoint_every=3,
                  corpus=CorpusConfig(image_size=32),
                  stages=(StageConfig("t2i", DataMix(1.0, 0.0), steps=steps, lr=1e-3, batch_size=4, warmup_steps=2),
                          StageConfig("joint", DataMix(0.5, 0.5), steps=steps, lr=5e-4, batch_size=4, warmup_steps=2)))


TINY_VAE = VAEConfig(image_size=32, downsample=8, latent_channels=4, encoder_width=8, decoder_width=8,
                     encoder_blocks=(0, 0, 0, 1), decoder_blocks=(1, 0, 0, 0))


def tiny_vae():
    torch.manual_seed(5)
    return make_vae(TINY_VAE).eval()


class FakeReward:
    """Brightness of the decoded image: a deterministic function of the latents, in [0, 1]."""

    name = "fake"

    def __call__(self, images, prompts, metadata, sources=None):
        return torch.tensor(images.reshape(len(images), -1).mean(1) / 255.0, dtype=torch.float32)


def register_fake_reward() -> None:
    from dreamlite.train.rl_stage import REWARDS
    REWARDS["fake"] = lambda cfg: {"t2i": FakeReward(), "edit": FakeReward()}


def post_recipe(flow_steps: int = 3, rl_iters: int = 6, round_steps: int = 2) -> Recipe:
    """flow (t2i) -> rl (alternating t2i / edit, watch every 2 iterations) -> distill (4 -> 1 steps: 3 rounds)."""
    rl = RLStageConfig(nft=NFTConfig(group_size=2, minibatch=2, old_decay=0.5, kl_weight=0.1), prompts_per_iter=2,
                       reward="fake", sample_steps=2, watch_every=2, watch_prompts=2)
    distill = DistillStageConfig(start_steps=4, final_steps=1, guidance_scale=2.0, image_guidance_scale=1.5)
    return Recipe(name="synthetic-post", preset="tiny", unet_overrides=UNET, checkpoint_every=3, vae=TINY_VAE,
                  corpus=CorpusConfig(image_size=32),
                  stages=(StageConfig("t2i", DataMix(1.0, 0.0), steps=flow_steps, lr=1e-3, batch_size=4,
                                      warmup_steps=2),
                          StageConfig("rl", DataMix(0.5, 0.5), steps=rl_iters, lr=1e-4, batch_size=4, warmup_steps=1,
                                      ema_decay=0.5, kind="rl", rl=rl),
                          StageConfig("distill", DataMix(0.5, 0.5), steps=round_steps, lr=1e-4, batch_size=4,
                                      warmup_steps=1, ema_decay=0.0, kind="distill", distill=distill)))


def dmd_recipe(flow_steps: int = 3, dmd_iters: int = 6) -> Recipe:
    """flow (t2i) -> dmd (t2i and edits with guidance, a 2-step student, 2 fake updates per iteration)."""
    dmd = DMDConfig(guidance_scale=2.0, image_guidance_scale=1.5, student_steps=2, fake_updates=2, fake_warmup=2)
    return Recipe(name="synthetic-dmd", preset="tiny", unet_overrides=UNET, checkpoint_every=3,
                  corpus=CorpusConfig(image_size=32),
                  stages=(StageConfig("t2i", DataMix(1.0, 0.0), steps=flow_steps, lr=1e-3, batch_size=4,
                                      warmup_steps=2),
                          StageConfig("dmd", DataMix(0.5, 0.5), steps=dmd_iters, lr=1e-4, batch_size=4,
                                      warmup_steps=1, ema_decay=0.5, kind="dmd", dmd=dmd)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--steps-per-stage", type=int, default=8)
    ap.add_argument("--dump", help="write this rank's own final weights (every optimised tensor, as held in this "
                                   "process's memory) to FILE.rank<k>.safetensors")
    ap.add_argument("--slow", type=float, default=0.0, help="seconds to sleep per step (kill tests)")
    ap.add_argument("--post", action="store_true", help="flow -> rl -> distill with a tiny VAE and a fake reward")
    ap.add_argument("--dmd", action="store_true", help="flow -> dmd")
    args = ap.parse_args()
    torch.set_num_threads(1)
    stepped: dict[int, torch.optim.Optimizer] = {}  # every optimizer that took a step, in order (for --dump)
    orig = torch.optim.AdamW.step

    def step(self, *a, **k):
        if args.slow:
            import time
            time.sleep(args.slow)
        stepped.setdefault(id(self), self)
        return orig(self, *a, **k)

    torch.optim.AdamW.step = step
    vae = tiny_vae() if args.post else SimpleNamespace(config=SimpleNamespace(latent_channels=4))
    comps = Components(vae=vae, encoder=FakeEncoder(),
                       pools={"t2i": make_pool("t2i", 64, 1), "edit": make_pool("edit", 64, 2)})
    if args.post:
        register_fake_reward()
    r = post_recipe() if args.post else dmd_recipe() if args.dmd else recipe(args.steps_per_stage)
    run_recipe(r, Path(args.run_dir), resume=args.resume, evaluate=False, components=comps)
    if args.dump:  # this process's own tensors, not the checkpoint (which rank 0 alone writes)
        from accelerate import PartialState
        rank = PartialState().process_index
        w = {f"opt{i}.p{j}": p.detach().clone().contiguous() for i, opt in enumerate(stepped.values())
             for j, p in enumerate(p for group in opt.param_groups for p in group["params"])}
        save_file(w, f"{args.dump}.rank{rank}.safetensors")


if __name__ == "__main__":
    sys.exit(main())
