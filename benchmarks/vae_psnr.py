"""VAE reconstruction quality and speed on held-out Shapes renders.

Evaluate a trained VAE (PSNR over 500 held-out 64x64 renders, object colour error, decode latency):

    python benchmarks/vae_psnr.py --checkpoint checkpoints/shapes-vae

Sweep: train each candidate architecture briefly (same steps/batch/lr) and tabulate factor, latent channels,
parameters, MACs, held-out PSNR after N steps, training images/s and decode ms/image:

    python benchmarks/vae_psnr.py --sweep A,B,C --steps 300 --batch 16

``--record`` appends the printed table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dreamlite.models.vae import VAEConfig, decode, downsample_factor, encode, load_vae, make_vae
from dreamlite.train.vae import heldout_set, reconstruction_metrics, resolve_configs, train_vae

_F8 = dict(downsample=8, encoder_width=32, decoder_width=32, encoder_blocks=(0, 0, 1, 2), decoder_blocks=(3, 2, 1, 0))
_F4 = dict(downsample=4, encoder_width=32, decoder_width=32, encoder_blocks=(0, 0, 1), decoder_blocks=(4, 1, 0))
CANDIDATES = {
    "A": VAEConfig(latent_channels=4, **_F8),
    "B": VAEConfig(latent_channels=8, **_F8),
    "C": VAEConfig(latent_channels=4, **_F4),
    "D": VAEConfig(latent_channels=16, **_F8),
    "E": VAEConfig(latent_channels=8, **_F4),
    # wider decoders: cost grows with width squared, mostly in the full-resolution convolution
    "F": VAEConfig(downsample=8, latent_channels=4, encoder_width=32, decoder_width=64, encoder_blocks=(0, 0, 1, 2),
                   decoder_blocks=(3, 2, 1, 0)),
    "G": VAEConfig(downsample=4, latent_channels=4, encoder_width=32, decoder_width=48, encoder_blocks=(0, 0, 1),
                   decoder_blocks=(4, 1, 0)),
    "H": VAEConfig(downsample=8, latent_channels=8, encoder_width=48, decoder_width=48, encoder_blocks=(0, 0, 1, 2),
                   decoder_blocks=(4, 2, 1, 0)),
}
ROOT = Path(__file__).resolve().parents[1]


def conv_macs(vae: torch.nn.Module, size: int = 64) -> int:
    """Multiply-accumulates of one encode + decode of a ``size`` x ``size`` image (convolutions only)."""
    total = [0]

    def hook(m: torch.nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        total[0] += out.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups

    handles = [m.register_forward_hook(hook) for m in vae.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        vae.decoder(vae.encoder(torch.zeros(1, 3, size, size)))
    for h in handles:
        h.remove()
    return total[0]


def decode_ms(vae: torch.nn.Module, size: int = 64, repeats: int = 20) -> float:
    """Median ms to decode one latent (batch 1, fp32, no grad)."""
    f = downsample_factor(vae)
    z = torch.randn(1, vae.config.latent_channels, size // f, size // f)
    times = []
    with torch.no_grad():
        decode(vae, z)
        for _ in range(repeats):
            t0 = time.perf_counter()
            decode(vae, z)
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def evaluate(path: str, images: int) -> str:
    vae = load_vae(path)
    t0 = time.perf_counter()
    m = reconstruction_metrics(vae, *heldout_set(images, 64))
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        lat = encode(vae, torch.zeros(1, 3, 64, 64))
    params = sum(p.numel() for p in vae.parameters())
    return "\n".join([
        f"checkpoint {path}: factor {downsample_factor(vae)}, latent {tuple(lat.shape[1:])}, params {params:,}, "
        f"scaling {vae.config.scaling_factor:.4f}, shift {vae.config.shift_factor:.4f}",
        f"held-out {m.images} renders: PSNR {m.psnr:.2f} dB (mean per image {m.psnr_mean_per_image:.2f}), "
        f"object colour error mean {m.color_error:.2f} / max {m.color_error_max:.2f} (RGB 0-255, "
        f"{m.objects} objects)",
        f"decode {decode_ms(vae):.2f} ms/image (batch 1), round trip of the set {seconds:.1f} s",
    ])


def sweep(names: list[str], steps: int, batch: int, lr: float, images: int) -> str:
    rows = ["| cand | factor | ch | latent | enc/dec width | enc/dec blocks | params | MMACs/img | PSNR dB | colour err "
            "mean/max | train img/s | decode ms/img |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        vae_cfg = CANDIDATES[name]
        with tempfile.TemporaryDirectory() as tmp:
            cfg, vae_cfg = resolve_configs(Path(tmp) / "vae", False, vae_cfg, steps=steps, batch=batch, lr=lr,
                                           eval_images=images, stats_images=256)
            result = train_vae(Path(tmp) / "vae", cfg, vae_cfg, progress=False)
            vae = load_vae(result.path)
        m = result.metrics
        params = sum(p.numel() for p in vae.parameters())
        rows.append(f"| {name} | {vae_cfg.downsample} | {vae_cfg.latent_channels} | {vae_cfg.latent_channels}x"
                    f"{vae_cfg.latent_size}x{vae_cfg.latent_size} | {vae_cfg.encoder_width}/{vae_cfg.decoder_width} | "
                    f"{vae_cfg.encoder_blocks}/"
                    f"{vae_cfg.decoder_blocks} | {params:,} | {conv_macs(vae) / 1e6:.0f} | {m.psnr:.2f} | "
                    f"{m.color_error:.1f}/{m.color_error_max:.1f} | {result.images_per_second:.1f} | "
                    f"{decode_ms(vae):.2f} |")
        print(rows[-1], flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return (f"{steps} steps x batch {batch}, lr {lr}, PSNR over {images} held-out renders, trained on {device}\n\n"
            + "\n".join(rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="VAE folder to evaluate")
    p.add_argument("--sweep", help=f"comma-separated candidates to train briefly ({', '.join(CANDIDATES)})")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--images", type=int, default=500, help="held-out renders")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--record", action="store_true", help="append the result to BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if bool(args.checkpoint) == bool(args.sweep):
        p.error("give exactly one of --checkpoint and --sweep")
    if args.checkpoint:
        text = evaluate(args.checkpoint, args.images)
    else:
        text = sweep(args.sweep.split(","), args.steps, args.batch, args.lr, args.images)
    print(text)
    if args.record:
        cpu = f"{platform.processor() or platform.machine()}, {args.threads} threads"
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n```\n$ python benchmarks/vae_psnr.py {' '.join(__import__('sys').argv[1:])}\n"
                    f"# {cpu}, torch {torch.__version__}\n{text}\n```\n")


if __name__ == "__main__":
    main()
