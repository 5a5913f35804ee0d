"""Sampler stochasticity (eta) on GenEval-Shapes: the same model, prompts and starting noise, sampled with the Euler
ODE (eta 0) and with stochastic DDIM steps (``dreamlite.flow.ddim_step``; eta 1 = ancestral). Choose eta on the
validation split (``--split val``), then report it on the benchmark (the default), as for every default.

    python benchmarks/sampler_eta.py checkpoints/dreamlite-tiny-shapes runs/sampler-eta --etas 0,0.5,1 \
        --split val --figure docs/sampler-eta.png

Prints one row per eta (GenEval overall and per tag) and writes ``OUT/eta.json``; images stay in
``OUT/eta<E>/``. Generation only: edits keep their own ``edit_eta`` (``full_eval.py --edit-eta`` measures them).
``--figure`` draws the first image of a few two_object and color_attr prompts under each eta, one row per eta.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from edit_guidance import numbers  # a sibling script (benchmarks/ is on sys.path when run as a script)
from PIL import Image, ImageDraw

from dreamlite.bench import build, geneval
from dreamlite.pipeline import DreamLitePipeline
from dreamlite.shapes.spec import TAGS
from dreamlite.shapes.tasks import GENEVAL_VAL_SEED, VAL_NOISE_SEED
from dreamlite.train.evaluate import model_fns

FIGURE_TAGS = ("two_object", "color_attr")


def figure(out: Path, rows: list[dict], values: list[float], path: Path, per_tag: int = 4, side: int = 96) -> None:
    """The first sample of ``per_tag`` prompts of each figure tag, one row per eta (images read from ``out``)."""
    picks = [i for tag in FIGURE_TAGS for i in [j for j, r in enumerate(rows) if r["tag"] == tag][:per_tag]]
    label, head = 70, 42
    sheet = Image.new("RGB", (label + len(picks) * side, head + len(values) * side), "white")
    draw = ImageDraw.Draw(sheet)
    for c, i in enumerate(picks):
        words = rows[i]["prompt"].replace("a photo of ", "").split()
        for k in range(0, len(words), 3):  # three words a line
            draw.text((label + c * side + 2, 2 + 13 * (k // 3)), " ".join(words[k:k + 3]), fill="black")
    for r, eta in enumerate(values):
        draw.text((4, head + r * side + side // 2 - 6), f"eta {eta:g}", fill="black")
        for c, i in enumerate(picks):
            img = Image.open(out / f"eta{eta:g}" / f"{i:05d}" / "samples" / "0000.png").convert("RGB")
            sheet.paste(img.resize((side, side), Image.NEAREST), (label + c * side, head + r * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="model folder (dreamlite.json, unet/, vae/, ...)")
    ap.add_argument("out", type=Path, help="output folder")
    ap.add_argument("--etas", type=numbers(float, 0.0, 1.0), default=[0.0, 0.5, 1.0],
                    help="comma-separated, each in [0, 1]")
    ap.add_argument("--variant", choices=("base", "mobile"), default=None, help="default: the model's default")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="val: the validation split's 600 rows and noise (choose here), test: the benchmark")
    ap.add_argument("--samples-per-prompt", type=int, default=1, help="images per prompt (image k of prompt i "
                                                                      "from seed i * K + k)")
    ap.add_argument("--figure", type=Path, help="PNG: a few two_object / color_attr prompts under each eta")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.samples_per_prompt < 1:
        ap.error(f"--samples-per-prompt must be >= 1, got {args.samples_per_prompt}")
    torch.set_num_threads(args.threads)
    pipe = DreamLitePipeline.from_pretrained(args.model, variant=args.variant)
    rows, seed = geneval.load_metadata(geneval.default_metadata_path()), 0
    if args.split == "val":
        rows = build.geneval_rows(GENEVAL_VAL_SEED, build.PER_TAG)
        seed = VAL_NOISE_SEED
    results = {}
    print("| eta | GenEval | " + " | ".join(t for t in TAGS) + " |")
    print("|---:|---:|" + "---:|" * len(TAGS))
    for eta in args.etas:
        generate_fn, _ = model_fns(pipe, eta=eta)
        g = geneval.run(rows, args.out / f"eta{eta:g}", generate_fn=generate_fn,
                        samples_per_prompt=args.samples_per_prompt, seed=seed, batch_size=64)
        results[eta] = {"geneval": g.overall, **{t.tag: t.accuracy for t in g.tags}}
        print(f"| {eta:g} | {g.overall:.3f} | " + " | ".join(f"{results[eta].get(t, float('nan')):.3f}"
                                                         for t in TAGS) + " |", flush=True)
    (args.out / "eta.json").write_text(json.dumps({"model": str(args.model), "split": args.split,
                                                   "samples_per_prompt": args.samples_per_prompt,
                                                   "results": results}, indent=1) + "\n")
    if args.figure:
        figure(args.out, rows, args.etas, args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
