"""The full benchmarks of one model folder: all 600 GenEval-Shapes prompts (one image each) and all 240
ImgEdit-Shapes edits (with ``--phrasings heldout``: the same prompts re-worded and 240 other edits, in words no
training prompt uses; with ``--split val``: 600 rows and 240 edits drawn again, sampled from other noise, the
validation split that chooses among models so that the benchmark stays a test), sampled as the chosen variant's
defaults (the shipped base: 20 steps, guidance 3.0 / 2.5; mobile: 4 steps, no guidance), unless ``--steps`` /
``--guidance`` / ``--image-guidance`` say otherwise. The same seeds every run, so two models (or two settings)
differ only by the model. Prints one row of scores per tag / edit type and the seconds taken, and writes
``scores.json`` beside the benchmark folders (``OUT/geneval``, ``OUT/imgedit``).

    python benchmarks/full_eval.py checkpoints/dreamlite-tiny-shapes runs/fulleval-base
    python benchmarks/full_eval.py checkpoints/dreamlite-tiny-shapes runs/fulleval-mobile --variant mobile
    python benchmarks/full_eval.py checkpoints/dreamlite-tiny-shapes runs/fulleval-para --phrasings heldout
    python benchmarks/full_eval.py checkpoints/dreamlite-tiny-shapes runs/fulleval-val --split val
    python benchmarks/full_eval.py checkpoints/dreamlite-tiny-shapes runs/fulleval-k4 --samples-per-prompt 4
    python benchmarks/binding_diagnosis.py --results runs/fulleval-base/geneval/results.jsonl   # failure modes
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from dreamlite.pipeline import DreamLitePipeline
from dreamlite.train.evaluate import evaluate_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="model folder (dreamlite.json, unet/, vae/, ...)")
    ap.add_argument("out", type=Path, help="output folder (created; existing benchmark folders are replaced)")
    ap.add_argument("--variant", choices=("base", "mobile"), default=None, help="default: the model's default")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None, help="text guidance scale")
    ap.add_argument("--image-guidance", type=float, default=None, help="source-image guidance scale (edits)")
    ap.add_argument("--guidance-max-sigma", type=float, default=None, help="guide only at noise levels <= this")
    ap.add_argument("--eta", type=float, default=None,
                    help="sampler stochasticity to generate, in [0, 1]: 0 the Euler ODE, 1 ancestral (default: the "
                         "variant's)")
    ap.add_argument("--edit-eta", type=float, default=None, help="the same, to edit (default: the variant's)")
    ap.add_argument("--phrasings", choices=("canonical", "heldout"), default="canonical",
                    help="heldout: GenEval's rows re-worded and 240 other edits, in words no training prompt uses")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="val: 600 rows and 240 edits drawn again and sampled from other noise, for choosing among "
                         "models (soup weights, checkpoints) without reading the benchmark")
    ap.add_argument("--samples-per-prompt", type=int, default=1,
                    help="GenEval images per prompt (GenEval's own protocol: 4; image k of prompt i from seed "
                         "i * K + k, so K = 1 is the benchmark's single image and K = 4 quarters its noise)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    etas = {k: v for k, v in (("eta", args.eta), ("edit_eta", args.edit_eta)) if v is not None}
    if any(not 0 <= v <= 1 for v in etas.values()):
        ap.error(f"--eta and --edit-eta must be in [0, 1], got {etas}")
    torch.set_num_threads(args.threads)
    pipe = DreamLitePipeline.from_pretrained(args.model, variant=args.variant)
    call = {k: v for k, v in dict(num_inference_steps=args.steps, guidance_scale=args.guidance,
                                  image_guidance_scale=args.image_guidance,
                                  guidance_max_sigma=args.guidance_max_sigma).items() if v is not None}
    if etas:  # per task, so set as the variant's defaults rather than as one call argument
        pipe.defaults = replace(pipe.defaults, variants={**pipe.defaults.variants,
                                                         pipe.variant: replace(pipe.settings, **etas)})
    t0 = time.perf_counter()
    if args.samples_per_prompt < 1:
        ap.error(f"--samples-per-prompt must be >= 1, got {args.samples_per_prompt}")
    scores = evaluate_pipeline(pipe, args.out, None, None, samples_per_prompt=args.samples_per_prompt,
                               phrasings=args.phrasings, split=args.split, **call)
    seconds = time.perf_counter() - t0
    scores["seconds"] = seconds
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scores.json").write_text(json.dumps(scores, indent=1) + "\n")
    head = ("geneval", "imgedit_success", "imgedit_preservation")
    print(" | ".join(f"{k} {scores[k]:.3f}" for k in head), f"| {seconds:.1f} s")
    for prefix in ("geneval/", "imgedit/"):
        print("  " + "  ".join(f"{k[len(prefix):]} {v:.2f}" for k, v in scores.items() if k.startswith(prefix)))


if __name__ == "__main__":
    main()
