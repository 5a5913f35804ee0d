"""Training throughput of a U-Net preset on this machine: samples/s of one full training step.

One step = forward + backward + gradient clipping + AdamW update on packed latents ``B x C x h x 2h`` with
cached text embeddings (``L`` tokens), exactly what ``dreamlite.train.loop`` does per batch. Used to choose the
Shapes world's image size, latent size and U-Net width under the 2-core CPU budget (BENCHMARKS.md).

    python benchmarks/train_throughput.py --latents 8,16 --channels 4,16 --record
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from dreamlite import MobileUNet
from dreamlite.presets import preset_config
from dreamlite.profile import count_params

ROOT = Path(__file__).resolve().parents[1]


def step_seconds(unet: MobileUNet, batch: int, h: int, tokens: int, steps: int, channels_last: bool) -> float:
    """Median wall time of one optimiser step on random packed latents of height ``h`` (width ``2h``)."""
    c = unet.config
    x = torch.randn(batch, c.in_channels, h, 2 * h)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    text = torch.randn(batch, tokens, c.text_embed_dim)
    mask = torch.ones(batch, tokens)
    t = torch.rand(batch) * 1000
    time_ids = torch.full((batch, 2), 64.0)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        v = unet(x, t, text, mask, time_ids)  # [B, C, h, 2h]
        loss = v[..., :h].square().mean()  # loss on the target half, as in training
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step allocates optimiser state
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--latents", default="8,16", help="per-half latent sizes h (packed h x 2h)")
    ap.add_argument("--channels", default="4", help="latent channel counts")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=16, help="text tokens per prompt")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = ["| preset | latent ch | packed latent | params | s/step | samples/s |", "|---|---:|---|---:|---:|---:|"]
    for ch in (int(v) for v in args.channels.split(",")):
        for h in (int(v) for v in args.latents.split(",")):
            unet = MobileUNet(**preset_config(args.preset, in_channels=ch, out_channels=ch)).train()
            sec = step_seconds(unet, args.batch, h, args.tokens, args.steps, args.channels_last)
            rows.append(f"| {args.preset} | {ch} | {args.batch}x{ch}x{h}x{2 * h} | {count_params(unet):,} | "
                        f"{sec:.2f} | {args.batch / sec:.1f} |")
            print(rows[-1], flush=True)
    text = "\n".join(rows)
    print(text)
    if args.record:
        cmd = " ".join(__import__("sys").argv[1:])
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n### Training throughput ({platform.machine()}, {args.threads} threads, fp32, "
                    f"torch {torch.__version__})\n\nCommand: `python benchmarks/train_throughput.py {cmd}`\n\n"
                    f"{text}\n")


if __name__ == "__main__":
    main()
