"""Cost of one RL iteration, one watch and one distillation step of ``shapes-tiny-post`` (tiny preset, 64-px renders,
8x8 latents with 16 channels), used to size its stages. Wall and process CPU seconds are both reported (on a busy
machine CPU seconds / threads is the better estimate of an idle machine's wall time).

    python benchmarks/post_cost.py [--model runs/shapes-tiny-v0/model] [--iterations 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch


def main() -> None:
    from dreamlite.models.vae import load_vae, make_vae
    from dreamlite.train.config import Recipe
    from dreamlite.train.corpus import Pool, TextBank
    from dreamlite.train.loop import EMA, LoopState, StageContext
    from dreamlite.train.recipe import build_unet, init_weights, make_accelerator, recipe_text_encoder, run_stage
    from dreamlite.train.recipes import get_recipe
    from dreamlite.train.rl_stage import make_rewards
    from dreamlite.train.rl_watch import RLWatch

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a shapes-tiny model folder (realistic outputs for the detector)")
    ap.add_argument("--vae", help="its VAE folder (default: a random VAE of the same architecture)")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="distillation steps per measured round")
    args = ap.parse_args()
    torch.set_num_threads(2)
    recipe: Recipe = get_recipe("shapes-tiny-post")
    rl, distill = recipe.stages
    vae = load_vae(args.vae) if args.vae else make_vae(recipe.vae)
    encoder = recipe_text_encoder(recipe)
    unet = build_unet(recipe, vae)
    if args.model:
        init_weights(unet, Path(args.model))
    g = torch.Generator().manual_seed(0)
    bank = TextBank(torch.randn(40, encoder.hidden_size, generator=g).half(), torch.arange(0, 40, 4),
                    torch.full((10,), 4))
    pools = {k: Pool(torch.randn(256, 16, 8, 8, generator=g), torch.randn(256, 16, 8, 8) if k == "edit" else None,
                     torch.randint(0, 10, (256,)), torch.zeros(256, dtype=torch.long), ["a"], bank)
             for k in ("t2i", "edit")}
    acc = make_accelerator()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(acc, acc.prepare(unet), EMA(unet, 0.0), vae, encoder,
                           tuple(encoder.encode([""], unconditional=True)), pools, recipe, Path(tmp))
        stage = replace(rl, steps=args.iterations, rl=replace(rl.rl, watch_every=0))
        w0, c0 = time.perf_counter(), time.process_time()
        run_stage(ctx, stage, LoopState(0, 0, 0))
        w1, c1 = time.perf_counter(), time.process_time()
        print(f"rl iteration ({rl.rl.prompts_per_iter} prompts x {rl.rl.nft.group_size}, {rl.rl.sample_steps} steps): "
              f"{(w1 - w0) / args.iterations:.2f} s wall, {(c1 - c0) / args.iterations:.2f} s CPU")
        watch = RLWatch(ctx, rl, make_rewards(rl), unet)
        w0, c0 = time.perf_counter(), time.process_time()
        watch.log(0, unet)
        w1, c1 = time.perf_counter(), time.process_time()
        print(f"watch ({rl.rl.watch_prompts} x 4 sets): {w1 - w0:.2f} s wall, {c1 - c0:.2f} s CPU")
        for name, start in (("guidance round", 32), ("halving round", 8)):
            cfg = replace(distill.distill, start_steps=start, final_steps=start if start == 32 else 4)
            st = replace(distill, name=f"d{start}", steps=args.steps, distill=cfg)
            begin = 0 if start == 32 else args.steps  # the halving round follows round 0
            w0, c0 = time.perf_counter(), time.process_time()
            run_stage(ctx, st, LoopState(1, begin, 0), stop_after=args.steps)
            w1, c1 = time.perf_counter(), time.process_time()
            print(f"distill step, {name} (batch {distill.batch_size}): {(w1 - w0) / args.steps:.2f} s wall, "
                  f"{(c1 - c0) / args.steps:.2f} s CPU")


if __name__ == "__main__":
    main()
