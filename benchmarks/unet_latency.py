"""U-Net latency: the dreamlite-0.39b preset vs diffusers UNet2DConditionModel at SD1.5 and SDXL size.

Prints parameters, GFLOPs per step and median forward latency (fp32, no grad) at packed latents
1x4x32x64, 1x4x64x128, 1x4x128x256 (256^2, 512^2, 1024^2 images), all measured in one run, and ratios to
dreamlite. ``--record`` appends the table to BENCHMARKS.md.

    python benchmarks/unet_latency.py --threads 2 --record
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from dreamlite import MobileUNet
from dreamlite.profile import count_params, unet_gflops

SD15 = dict(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
SDXL = dict(block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816, use_linear_projection=True, sample_size=128)


def median_latency(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def record(title: str, command: str, table: str) -> None:
    """Append a titled table with the command that made it to BENCHMARKS.md (the benchmarks' --record)."""
    with open(Path(__file__).resolve().parents[1] / "BENCHMARKS.md", "a") as f:
        f.write(f"\n### {title}\n\nCommand: `{command}`\n\n{table}\n")


def make_call(name: str, model, h: int, w: int, device, dtype):
    z = lambda *s: torch.randn(*s, device=device, dtype=dtype)  # noqa: E731
    t = torch.tensor([500.0], device=device, dtype=dtype)
    if name == "dreamlite-0.39b":
        args = (z(1, 4, h, w), t, z(1, 77, 2048), torch.ones(1, 77, device=device),
                torch.tensor([[8.0 * w / 2, 8.0 * h]], device=device, dtype=dtype))
        return lambda: model(*args)
    if name == "sd1.5-unet":
        args = (z(1, 4, h, w), t, z(1, 77, 768))
        return lambda: model(*args)
    extra = {"text_embeds": z(1, 1280), "time_ids": z(1, 6)}
    args = (z(1, 4, h, w), t, z(1, 77, 2048))
    return lambda: model(*args, added_cond_kwargs=extra)


def flops(model, h, w) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    if isinstance(model, MobileUNet):
        return unet_gflops(model, h, w)
    call = make_call("sd1.5-unet" if model.config.cross_attention_dim == 768 else "sdxl-unet", model, h, w,
                     "cpu", torch.float32)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        call()
    return counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--canvases", default="32x64,64x128,128x256", help="packed latent HxW list")
    ap.add_argument("--baseline-canvases", default="32x64,64x128", help="canvases for the SD baselines")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    parse = lambda s: [tuple(int(v) for v in c.split("x")) for c in s.split(",") if c]  # noqa: E731
    models = {"dreamlite-0.39b": (lambda: MobileUNet.from_preset("dreamlite-0.39b"), parse(args.canvases))}
    if not args.no_baselines:
        models["sd1.5-unet"] = (lambda: UNet2DConditionModel(**SD15), parse(args.baseline_canvases))
        models["sdxl-unet"] = (lambda: UNet2DConditionModel(**SDXL), parse(args.baseline_canvases))
    rows, ours = [], {}
    for name, (build, canvases) in models.items():
        model = build().eval()
        params = count_params(model)
        model = torch.nn.Module.to(model, args.device, dtype)  # ModelMixin.to warns needlessly
        for h, w in canvases:
            gf = flops(model.float().cpu(), h, w) if args.device == "cpu" and dtype == torch.float32 else float("nan")
            call = make_call(name, model, h, w, args.device, dtype)
            synced = call if args.device == "cpu" else (lambda c=call: (c(), torch.cuda.synchronize()))
            with torch.inference_mode():
                sec = median_latency(synced, args.repeats)
            if name == "dreamlite-0.39b":
                ours[(h, w)] = sec
            ratio = sec / ours[(h, w)] if (h, w) in ours else float("nan")
            rows.append((name, params, f"1x4x{h}x{w}", gf, sec, ratio))
            print(f"{name:<16} {params:>13,} 1x4x{h}x{w:<4} {gf:8.1f} GFLOP {sec:8.3f} s  x{ratio:.2f}", flush=True)
        del model
    table = ["| model | params | packed latent | GFLOPs/step | median s/forward | vs dreamlite |",
             "|---|---:|---|---:|---:|---:|"]
    table += [f"| {n} | {p:,} | {c} | {g:.1f} | {s:.3f} | {r:.2f}x |" for n, p, c, g, s, r in rows]
    text = "\n".join(table)
    print(text)
    if args.record:
        record(f"U-Net latency ({args.device}, {args.dtype}, {args.threads} threads)",
               f"python benchmarks/unet_latency.py --threads {args.threads} --device {args.device} --dtype {args.dtype}",
               text)


if __name__ == "__main__":
    main()
