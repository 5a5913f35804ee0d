"""The ablation the paper rests on: one network trained task-progressively vs. jointly from scratch vs. separate
T2I-only and edit-only networks of the same size, at equal total steps and batch, on the same data.

Every arm reuses a finished ``shapes-tiny`` run's VAE and encoded corpus (so only the U-Net schedule differs),
trains with the shared loop, then is scored on the same stratified subsets of GenEval-Shapes and ImgEdit-Shapes.
Interrupted arms resume; finished arms are not re-run.

    python benchmarks/ablation.py --base runs/shapes-tiny --out runs/ablation --steps 600 --batch 64 --record
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
from dreamlite.train.recipe import run_recipe
from dreamlite.train.recipes.shapes_tiny import ablation

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("progressive", "joint", "t2i", "edit")


def run_arm(arm: str, base: Path, out: Path, steps: int, batch: int, geneval_limit: int,
            imgedit_limit: int) -> dict:
    run_dir = out / arm
    result_path = run_dir / "ablation.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    recipe = replace(ablation(arm, total_steps=steps, batch_size=batch), vae_path=str(base / "vae"))
    (run_dir / "corpus").mkdir(parents=True, exist_ok=True)
    for name in ("t2i.safetensors", "edit.safetensors"):  # the base run's encoded pools, shared by every arm
        link = run_dir / "corpus" / name
        if not link.exists():
            link.symlink_to((base / "corpus" / name).resolve())
    t0 = time.perf_counter()
    model_dir = run_recipe(recipe, run_dir, resume=(run_dir / "checkpoints").exists(), evaluate=False)
    seconds = time.perf_counter() - t0
    pipe = DreamLitePipeline.from_pretrained(model_dir)
    scores = evaluate_pipeline(pipe, run_dir / "eval", geneval_limit, imgedit_limit)
    result = {"arm": arm, "stages": [f"{s.name}:{s.steps}" for s in recipe.stages], "steps": steps,
              "batch": batch, "train_seconds": round(seconds, 1), **scores}
    result_path.write_text(json.dumps(result, indent=2))
    return result


def table(results: list[dict]) -> str:
    tags = sorted({k.split("/")[1] for r in results for k in r if k.startswith("geneval/")})
    head = ["arm", "stages (steps)", "GenEval-Shapes", *tags, "edit success", "preservation", "edit score", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        lines.append("| " + " | ".join([r["arm"], " -> ".join(r["stages"]), f"{r['geneval']:.3f}",
                                        *[f"{r[f'geneval/{t}']:.2f}" for t in tags],
                                        f"{r['imgedit_success']:.3f}", f"{r['imgedit_preservation']:.3f}",
                                        f"{r['imgedit_score']:.2f}", str(r["train_seconds"])]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="finished shapes-tiny run folder (its vae/ and corpus/ are reused)")
    ap.add_argument("--out", required=True, help="folder for the arms' runs")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--steps", type=int, default=1500, help="total U-Net steps per arm")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--geneval-limit", type=int, default=120)
    ap.add_argument("--imgedit-limit", type=int, default=80)
    ap.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = ap.parse_args()
    base, out = Path(args.base), Path(args.out)
    for need in (base / "vae" / "config.json", base / "corpus" / "t2i.safetensors", base / "corpus" / "edit.safetensors"):
        if not need.is_file():
            ap.error(f"--base {base} is not a finished shapes-tiny run: {need} is missing")
    results = []
    for arm in args.arms.split(","):
        if arm not in ARMS:
            ap.error(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")
        results.append(run_arm(arm, base, out, args.steps, args.batch, args.geneval_limit, args.imgedit_limit))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    text = table(results)
    print(text)
    if args.record:
        device = "cuda" if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
        with open(ROOT / "BENCHMARKS.md", "a") as f:
            f.write(f"\n### Ablation: {args.steps} steps x batch {args.batch} per arm ({device})\n\nCommand: "
                    f"`python benchmarks/ablation.py --base {args.base} --out {args.out} --steps {args.steps} "
                    f"--batch {args.batch} --geneval-limit {args.geneval_limit} --imgedit-limit "
                    f"{args.imgedit_limit}`\n\n{text}\n")


if __name__ == "__main__":
    main()
