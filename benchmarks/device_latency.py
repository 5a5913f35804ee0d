"""Device latency: per-step U-Net time and the 4-step end-to-end time on every CPU backend we export to.

For each model (the paper's ``dreamlite-0.39b`` preset with random weights, and the shipped tiny model) and
each resolution, and for each backend (torch eager, torch.compile, onnxruntime fp32 / int8 / int4, ExecuTorch
XNNPACK fp32 / int8, where int8 is the Linear layers only, at a fixed batch, see ``dreamlite.export.executorch``)
it prints:

* U-Net: median seconds per forward at batch 1 (the 4-step mobile model runs without guidance), the GFLOPs
  of one forward, the achieved GFLOP/s and its fraction of this CPU's measured fp32 matmul peak;
* end to end: text encode (MiniLM, one prompt) + 4 Euler steps through ``dreamlite.sampling.sample`` + VAE
  decode, median seconds; and the ratio of both to torch eager.

What the numbers stand for. The 0.39B preset is run with random weights (latency does not depend on them),
the paper's VAE architecture (AutoencoderTiny = TAESDXL, 8x) and random text states of the official width
(2048). Its text-encode time is MiniLM's, our default encoder: the paper's Qwen3-VL encoder runs once per
prompt and is not part of the U-Net/VAE path that the paper's "under a second on a phone" is about.

    python benchmarks/device_latency.py --record                     # everything (0.39B: tens of minutes)
    python benchmarks/device_latency.py --models shipped --backends eager,ort,ort-int8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from dreamlite import MobileUNet
from dreamlite.export import onnx as onnx_export
from dreamlite.models import vae as vae_lib
from dreamlite.models.text import MiniLMTextEncoder
from dreamlite.profile import unet_gflops
from dreamlite.sampling import Conditions, make_sigmas, sample
from unet_latency import median_latency, record  # the sibling script (benchmarks/ is on sys.path when run)

PROMPT = "[Generate]: a red circle to the left of a blue square"
BACKENDS = ("eager", "compile", "ort", "ort-int8", "ort-int4", "executorch", "executorch-int8")


@dataclass
class Components:
    """The networks of one model at one resolution, as torch modules."""

    name: str
    unet: MobileUNet
    vae: torch.nn.Module
    text: MiniLMTextEncoder
    image_wh: tuple[int, int]
    latent_hw: tuple[int, int]  # target latent; the packed canvas is [h, 2w]
    random_text: bool  # the U-Net's text width differs from MiniLM's: feed random states of its width


@dataclass
class Runner:
    """Three callables of one backend: prompt -> (states, mask); U-Net forward; raw latents -> pixels."""

    encode: Callable[[str], tuple[torch.Tensor, torch.Tensor]]
    unet: Callable[..., torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    build_s: float = 0.0  # export / compile time


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This CPU's fp32 GEMM throughput (the ceiling a conv/attention network can approach)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / median_latency(lambda: a @ b, repeats, warmup=2) / 1e9


def load_components(name: str, resolution: int | None) -> Components:
    text = MiniLMTextEncoder.from_pretrained()
    if name == "shipped":
        from dreamlite.paths import default_model
        from dreamlite.pipeline import DreamLitePipeline

        pipe = DreamLitePipeline.from_pretrained(default_model())
        w, h = pipe.defaults.resolution if resolution is None else (resolution, resolution)
        factor = vae_lib.downsample_factor(pipe.vae)
        return Components("shipped tiny", pipe.unet.eval(), pipe.vae.eval(), text, (w, h), (h // factor, w // factor),
                          random_text=False)
    from diffusers import AutoencoderTiny

    size = resolution or 1024
    unet = MobileUNet.from_preset(name).eval()
    vae = AutoencoderTiny().eval()  # TAESDXL's architecture, as the official pipeline (PIPELINE.md section 4)
    return Components(name, unet, vae, text, (size, size), (size // 8, size // 8),
                      random_text=unet.config.text_embed_dim != text.hidden_size)


def torch_runner(c: Components, compiled: bool) -> Runner:
    def encode(prompt: str):
        batch = c.text.tokenizer([prompt], return_tensors="pt")
        return c.text.model(**batch).last_hidden_state, batch["attention_mask"]

    unet, decode = c.unet, lambda z: c.vae.decode(z, return_dict=False)[0]
    t0 = time.perf_counter()
    if compiled:
        unet = torch.compile(c.unet)
        decode = torch.compile(decode)
    return Runner(encode, unet, decode, time.perf_counter() - t0)  # compile time shows in the warm-up


def session_runner(c: Components, unet: Callable, text, decoder, build: float) -> Runner:
    """A Runner over exported programs: ``text`` and ``decoder`` answer onnxruntime's ``run(None, feeds)``
    (an onnxruntime session or ExecuTorch's ``PteSession``); ``unet`` is already an ``OnnxUNet`` adapter."""

    def encode(prompt: str):
        batch = c.text.tokenizer([prompt], return_tensors="np")
        states = text.run(None, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})[0]
        return torch.from_numpy(states), torch.from_numpy(batch["attention_mask"])

    def decode(z: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(decoder.run(None, {"latents": z.numpy()})[0])

    return Runner(encode, unet, decode, build)


def onnx_runner(c: Components, folder: Path, precision: str | None, threads: int) -> Runner:
    """onnxruntime sessions over the fp32 graphs, or over their ``precision`` ("int8" / "int4") quantization."""
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    unet_path, text_path = folder / "unet.onnx", folder / "text_encoder.onnx"
    if not unet_path.exists():
        onnx_export.export_unet(c.unet, unet_path, c.latent_hw, c.image_wh)
        onnx_export.export_vae(c.vae, folder, c.image_wh, c.image_wh[0] // c.latent_hw[1])
        onnx_export.export_text_encoder(c.text, folder)
    if precision:
        files, quantize = onnx_export.QUANT_FILES[precision], onnx_export.QUANTIZERS[precision]
        q_unet, q_text = folder / files["unet"], folder / files["text_encoder"]
        quantize(unet_path, q_unet)
        quantize(text_path, q_text)
        unet_path, text_path = q_unet, q_text
    build = time.perf_counter() - t0
    h, w = c.latent_hw
    unet = onnx_export.OnnxUNet(onnx_export.make_session(unet_path, threads), dict(c.unet.config),
                                (c.unet.config.in_channels, h, 2 * w))
    text = onnx_export.make_session(text_path, threads)
    decoder = onnx_export.make_session(folder / onnx_export.FILES["vae_decoder"], threads)

    return session_runner(c, unet, text, decoder, build)


def executorch_runner(c: Components, folder: Path, int8: bool) -> Runner:
    """ExecuTorch XNNPACK programs run by ExecuTorch's Python runtime (the runtime a phone uses), behind the
    ONNX backend's U-Net adapter; with ``int8`` the U-Net and MiniLM are the fixed-batch int8 programs (the VAE
    decoder stays fp32, as in the export). ExportError when ExecuTorch is not installed."""
    from dreamlite.export import executorch as et

    et._executorch_available()
    t0 = time.perf_counter()
    folder = folder / ("int8" if int8 else "fp32")
    folder.mkdir(parents=True, exist_ok=True)
    text_len = min(et.TEXT_LEN, c.text.max_length)
    files = et.INT8_FILES if int8 else et.FILES
    one = dict(int8=int8, batches=(1,))  # int8: only the batch-1 programs are timed
    specs = {"unet": et.export_unet(c.unet, folder, c.latent_hw, c.image_wh, text_len, **one),
             "text_encoder": et.export_text_encoder(c.text, folder, text_len, **one)}
    specs.update(et.export_vae(c.vae, folder, c.image_wh, c.image_wh[0] // c.latent_hw[1]))
    build = time.perf_counter() - t0
    h, w = c.latent_hw
    unet = onnx_export.OnnxUNet(et.PteSession(folder / files["unet"], specs["unet"]), dict(c.unet.config),
                                (c.unet.config.in_channels, h, 2 * w))
    text = et.PteSession(folder / files["text_encoder"], specs["text_encoder"])
    decoder = et.PteSession(folder / et.FILES["vae_decoder"], specs["vae_decoder"])

    return session_runner(c, unet, text, decoder, build)


def artefact_sizes(c: Components, folder: Path) -> list[tuple[str, str, str, int]]:
    """(model, image, file, bytes) of every file the export backends wrote under ``folder``."""
    image = f"{c.image_wh[0]}x{c.image_wh[1]}"
    return [(c.name, image, str(p.relative_to(folder)), p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()]


def end_to_end(c: Components, r: Runner, steps: int) -> Callable[[], torch.Tensor]:
    h, w = c.latent_hw
    sigmas = make_sigmas(steps, h, w)
    noise = torch.randn(1, c.unet.config.in_channels, h, w, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[float(c.image_wh[0]), float(c.image_wh[1])]])
    fixed = torch.randn(1, 77, c.unet.config.text_embed_dim)

    def run() -> torch.Tensor:
        states, mask = r.encode(PROMPT)
        if c.random_text:
            states, mask = fixed, torch.ones(1, 77, dtype=torch.long)
        latents = sample(r.unet, noise, sigmas, Conditions(text=states, mask=mask, time_ids=ids))
        return r.decode(latents)

    return run


def measure(c: Components, backend: str, args, folder: Path) -> dict | None:
    try:
        if backend in ("eager", "compile"):
            r = torch_runner(c, backend == "compile")
        elif backend.startswith("ort"):
            r = onnx_runner(c, folder / "onnx", backend.partition("-")[2] or None, args.threads)
        else:
            r = executorch_runner(c, folder / "executorch", backend.endswith("int8"))
    except (ImportError, onnx_export.ExportError) as e:
        print(f"  {backend:<16} not available: {e}", flush=True)
        return None
    h, w = c.latent_hw
    x = torch.randn(1, c.unet.config.in_channels, h, 2 * w)
    t = torch.tensor([500.0])
    text = torch.randn(1, 77, c.unet.config.text_embed_dim)
    mask = torch.ones(1, 77, dtype=torch.long)
    ids = torch.tensor([[float(c.image_wh[0]), float(c.image_wh[1])]])
    with torch.inference_mode():
        t0 = time.perf_counter()
        r.unet(x, t, text, mask, ids)  # first call: compile / session warm-up
        first = time.perf_counter() - t0
        step = median_latency(lambda: r.unet(x, t, text, mask, ids), args.repeats, warmup=0)
        e2e = median_latency(end_to_end(c, r, args.steps), max(1, args.repeats - 1))
    return {"backend": backend, "step_s": step, "e2e_s": e2e, "build_s": r.build_s + first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="dreamlite-0.39b,shipped", help="presets and/or 'shipped'")
    ap.add_argument("--resolutions", default="1024,512", help="square sizes for presets (shipped: its own)")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    unknown = set(args.backends.split(",")) - set(BACKENDS)
    if unknown:
        raise SystemExit(f"unknown backend(s) {sorted(unknown)}; choose from {', '.join(BACKENDS)}")
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak on {args.threads} threads: {peak:.1f} GFLOP/s", flush=True)
    rows, artefacts = [], []
    for name in args.models.split(","):
        sizes = [None] if name == "shipped" else [int(s) for s in args.resolutions.split(",")]
        for size in sizes:
            c = load_components(name, size)
            h, w = c.latent_hw
            gf = unet_gflops(c.unet, h, 2 * w, batch=1)
            print(f"{c.name} {c.image_wh[0]}x{c.image_wh[1]} (packed 1x{c.unet.config.in_channels}x{h}x{2 * w}): "
                  f"{gf:.1f} GFLOPs/step", flush=True)
            eager = None
            with tempfile.TemporaryDirectory(prefix="dreamlite-latency-") as tmp:
                for backend in args.backends.split(","):
                    m = measure(c, backend, args, Path(tmp))
                    if m is None:
                        continue
                    eager = eager or m
                    rate = gf / m["step_s"]
                    rows.append((c.name, f"{c.image_wh[0]}x{c.image_wh[1]}", backend, gf, m["step_s"],
                                 m["step_s"] / eager["step_s"], rate, rate / peak, m["e2e_s"],
                                 m["e2e_s"] / eager["e2e_s"], m["build_s"]))
                    print("  {:<16} {:8.3f} s/step x{:.2f}  {:7.1f} GFLOP/s ({:.0%} of peak)  4-step e2e "
                          "{:8.3f} s x{:.2f}  (build+first call {:.1f} s)".format(backend, *rows[-1][4:]),
                          flush=True)
                artefacts += artefact_sizes(c, Path(tmp))
            del c
    table = ["| model | image | backend | GFLOPs/step | s/step | vs eager | GFLOP/s | of peak | "
             f"{args.steps}-step e2e s | vs eager | export/compile + first call s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    table += ["| {} | {} | {} | {:.1f} | {:.3f} | {:.2f}x | {:.1f} | {:.0%} | {:.3f} | {:.2f}x | {:.1f} |".format(*r)
              for r in rows]
    if artefacts:
        table += ["", "| model | image | exported file | MB |", "|---|---|---|---:|"]
        table += [f"| {n} | {img} | {f} | {b / 1e6:.1f} |" for n, img, f, b in artefacts]
    text = "\n".join(table)
    print(text)
    if args.record:
        record(f"Device latency (CPU, fp32 unless int8, {args.threads} threads; torch GEMM rate {peak:.1f} GFLOP/s)",
               f"python benchmarks/device_latency.py --models {args.models} --resolutions {args.resolutions} "
               f"--backends {args.backends} --threads {args.threads}", text)

if __name__ == "__main__":
    main()
