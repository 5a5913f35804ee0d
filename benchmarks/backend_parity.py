"""Backend parity and quantization cost on a model folder: export it, compare the backend's images with PyTorch's
(same seeds), and optionally score the backend on the full benchmarks.

1. ``dreamlite export onnx|executorch`` of ``MODEL`` (one variant) into ``OUT/export`` (kept, and reused when it
   is already there with the requested quantized files).
2. PSNR of the uint8 images: 8 generations (GenEval-Shapes prompts) and 4 benchmark edits, PyTorch vs the backend,
   per precision (``fp32`` and each of ``--quant``). Identical images print as ``inf``.
3. With ``--full``: all 600 prompts and 240 edits through the backend (``OUT/<precision>/``), the same seeds as
   ``benchmarks/full_eval.py``, so its scores compare with that script's on the same model.

    python benchmarks/backend_parity.py checkpoints/dreamlite-tiny-shapes runs/parity-onnx --backend onnx \
        --quant int8,int4 --full
    python benchmarks/backend_parity.py checkpoints/dreamlite-tiny-shapes runs/parity-et --backend executorch \
        --variant mobile --quant int8 --full
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamlite.bench import geneval, imgedit
from dreamlite.export.onnx import MANIFEST_NAME
from dreamlite.imageio import psnr
from dreamlite.pipeline import DreamLitePipeline
from dreamlite.train.evaluate import evaluate_pipeline, model_fns, stratified


def sample_images(pipe, n_gen: int, n_edit: int) -> tuple[list, list]:
    """n_gen generations over the tags and n_edit edits over the edit types, fixed seeds, as uint8 arrays."""
    generate_fn, edit_fn = model_fns(pipe)
    rows = stratified(geneval.load_metadata(geneval.default_metadata_path()), lambda r: r["tag"], n_gen)
    items = stratified(imgedit.load_bench(imgedit.default_bench_path()), lambda i: i.edit_type, n_edit)
    gens = generate_fn([r["prompt"] for r in rows], list(range(n_gen)))
    sources = [Image.open(i.source_path).convert("RGB") for i in items]
    edits = edit_fn(sources, [i.prompt for i in items], list(range(n_edit)))
    return [np.asarray(g) for g in gens], [np.asarray(e) for e in edits]


def export(model: Path, folder: Path, backend: str, quant: list[str], variant: str | None) -> float:
    """Export once; returns seconds (0 when an existing export already holds every requested precision)."""
    manifest = folder / MANIFEST_NAME
    if manifest.exists():
        have = {q for q in ("int8", "int4") if f"unet_{q}" in json.loads(manifest.read_text())["files"]}
        if set(quant) <= have:
            return 0.0
        raise SystemExit(f"{folder} exists without {sorted(set(quant) - have)}; remove it to export again")
    t0 = time.perf_counter()
    if backend == "onnx":
        from dreamlite.export.onnx import export_onnx
        export_onnx(model, folder, int8="int8" in quant, int4="int4" in quant, variant=variant)
    else:
        from dreamlite.export.executorch import export_executorch
        export_executorch(model, folder, int8="int8" in quant, variant=variant)
    return time.perf_counter() - t0


def load_backend(folder: Path, backend: str, precision: str, variant: str | None):
    if backend == "onnx":
        from dreamlite.export.onnx import load_onnx_pipeline
        return load_onnx_pipeline(folder, int8=precision == "int8", int4=precision == "int4", variant=variant)
    from dreamlite.export.executorch import load_executorch_pipeline
    return load_executorch_pipeline(folder, int8=precision == "int8", variant=variant)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--backend", choices=("onnx", "executorch"), required=True)
    ap.add_argument("--quant", default="", help="comma list of int8 / int4 (int4: onnx only)")
    ap.add_argument("--variant", choices=("base", "mobile"), default=None)
    ap.add_argument("--images", type=int, nargs=2, default=(8, 4), metavar=("GEN", "EDIT"))
    ap.add_argument("--full", action="store_true", help="also run the full benchmarks through the backend")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quant = [q for q in args.quant.split(",") if q]
    allowed = {"onnx": {"int8", "int4"}, "executorch": {"int8"}}[args.backend]
    if set(quant) - allowed:
        raise SystemExit(f"--quant {sorted(set(quant) - allowed)} not available for {args.backend}")
    folder = args.out / "export"
    build_s = export(args.model, folder, args.backend, quant, args.variant)
    sizes = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    print(f"export {build_s:.0f} s: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()), flush=True)
    ref = sample_images(DreamLitePipeline.from_pretrained(args.model, variant=args.variant), *args.images)
    report = {"backend": args.backend, "export_s": build_s, "sizes": sizes, "precisions": {}}
    for precision in ["fp32", *quant]:
        pipe = load_backend(folder, args.backend, precision, args.variant)
        got = sample_images(pipe, *args.images)
        db = {kind: [psnr(a, b) for a, b in zip(r, g)] for kind, r, g in zip(("generate", "edit"), ref, got)}
        row: dict = {f"psnr_{k}_min": min(v) for k, v in db.items()}
        row.update({f"psnr_{k}_median": float(np.median(v)) for k, v in db.items()})
        if args.full:
            t0 = time.perf_counter()
            row.update(evaluate_pipeline(pipe, args.out / precision, None, None))
            row["seconds"] = time.perf_counter() - t0
        report["precisions"][precision] = row
        print(precision, json.dumps({k: round(v, 3) for k, v in row.items() if "/" not in k}), flush=True)
    (args.out / "parity.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
