"""A tiny, fully deterministic training run on synthetic pools (no VAE, no renderer, no text model).

Used by the kill-and-resume and DDP tests as a subprocess:
    python tests/train/synthetic_run.py RUN_DIR [--resume] [--steps-per-stage N] [--dump FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

from dreamlite.train.config import CorpusConfig, DataMix, Recipe, StageConfig
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--steps-per-stage", type=int, default=8)
    ap.add_argument("--dump", help="write this rank's final weights to FILE.rank<k>.safetensors")
    ap.add_argument("--slow", type=float, default=0.0, help="seconds to sleep per step (kill tests)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.slow:
        import time
        orig = torch.optim.AdamW.step
        torch.optim.AdamW.step = lambda self, *a, **k: (time.sleep(args.slow), orig(self, *a, **k))[1]
    comps = Components(vae=SimpleNamespace(config=SimpleNamespace(latent_channels=4)), encoder=FakeEncoder(),
                       pools={"t2i": make_pool("t2i", 64, 1), "edit": make_pool("edit", 64, 2)})
    run_recipe(recipe(args.steps_per_stage), Path(args.run_dir), resume=args.resume, evaluate=False, components=comps)
    if args.dump:
        from accelerate import PartialState
        from dreamlite.train.loop import latest_checkpoint
        from safetensors.torch import load_file
        rank = PartialState().process_index
        w = load_file(str(latest_checkpoint(Path(args.run_dir)) / "unet" / "diffusion_pytorch_model.safetensors"))
        save_file(w, f"{args.dump}.rank{rank}.safetensors")


if __name__ == "__main__":
    sys.exit(main())
