"""Shapes-world detector quality: per-attribute accuracy on random renders, and both benchmarks scored on
ground truth, clean and under corruption (Gaussian blur sigma 1 px, additive noise sigma 8/255, JPEG q75).

    nice -n 10 python benchmarks/shapes_detector.py [--n 2000] [--sizes 64 32]

Attribute accuracy on N random scenes (1-4 objects, random shapes/colours/sizes/backgrounds):
  class / colour: per object, of the detection nearest its centre (a miss counts as wrong);
  count: per image, detected object count equals the true count;
  position: per ordered object pair, GenEval's relation set from detected boxes equals the true one.
"""

from __future__ import annotations

import argparse
import io
import itertools
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from dreamlite.bench import geneval, imgedit
from dreamlite.bench.images import save_png
from dreamlite.shapes.detect import detect
from dreamlite.shapes.geometry import relative_position
from dreamlite.shapes.render import render, render_batch
from dreamlite.shapes.scene import layout, random_background, random_object_attrs

Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(1.0)))


def _noise(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.rint(img + rng.normal(0.0, 8.0, img.shape)), 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=75)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return np.asarray(im.convert("RGB"))


CORRUPTIONS: dict[str, Corruption] = {"clean": lambda img, rng: img, "blur1": _blur, "noise8": _noise,
                                      "jpeg75": _jpeg}


def attribute_accuracy(n: int, size: int, corrupt: Corruption, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    scenes = [layout(rng, random_object_attrs(rng, int(rng.integers(1, 5))), random_background(rng)) for _ in range(n)]
    cls = col = objs = count = pos = pairs = 0
    for scene, img in zip(scenes, render_batch(scenes, size)):
        dets = detect(corrupt(img, rng))
        count += len(dets) == len(scene.objects)
        matched = []
        for o in scene.objects:
            best = min(dets, key=lambda d: np.hypot(d.center[0] - o.x * size, d.center[1] - o.y * size), default=None)
            near = best is not None and np.hypot(best.center[0] - o.x * size, best.center[1] - o.y * size) < 0.05 * size
            matched.append(best if near else None)
            objs += 1
            cls += near and best.cls == o.shape
            col += near and best.color == o.color
        for (a, da), (b, db) in itertools.permutations(zip(scene.objects, matched), 2):
            pairs += 1
            if da is not None and db is not None:
                truth = relative_position(np.array(a.box) * size, np.array(b.box) * size)
                pos += relative_position(np.array(da.box), np.array(db.box)) == truth
    return {"class": cls / objs, "colour": col / objs, "count": count / n, "position": pos / max(pairs, 1)}


def geneval_score(corrupt: Corruption, rows: list[dict], tmp: Path) -> float:
    rng = np.random.default_rng(0)
    truth = geneval.ground_truth_fn(rows)

    def generate_fn(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        return [Image.fromarray(corrupt(np.asarray(im), rng)) for im in truth(prompts, seeds)]

    return geneval.run(rows, tmp, generate_fn=generate_fn, samples_per_prompt=1).overall


def imgedit_score(corrupt: Corruption, items: list[imgedit.EditItem], tmp: Path) -> imgedit.ImgEditSummary:
    rng = np.random.default_rng(0)
    for item in items:
        save_png(corrupt(render(item.target_scene, 64), rng), tmp / f"{item.key}.png")
    return imgedit.run(items, tmp, images_dir=tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="random renders for attribute accuracy")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 32])
    args = parser.parse_args()

    print(f"## attribute accuracy on {args.n} random renders")
    print(f"{'size':>5} {'corruption':<8} {'class':>7} {'colour':>7} {'count':>7} {'position':>8}")
    for size in args.sizes:
        for name, corrupt in CORRUPTIONS.items():
            if size != 64 and name != "clean":
                continue  # corruptions are specified at the default 64x64
            acc = attribute_accuracy(args.n, size, corrupt)
            print(f"{size:>5} {name:<8} {acc['class']:7.4f} {acc['colour']:7.4f} {acc['count']:7.4f} "
                  f"{acc['position']:8.4f}", flush=True)

    rows = geneval.load_metadata(geneval.default_metadata_path())
    items = imgedit.load_bench(imgedit.default_bench_path())
    print(f"\n## ground truth on the shipped benchmarks ({len(rows)} prompts x 1 sample, {len(items)} edits), 64x64")
    print(f"{'corruption':<8} {'GenEval overall':>16} {'ImgEdit success':>16} {'preservation':>13} {'score':>6} {'s':>6}")
    for name, corrupt in CORRUPTIONS.items():
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            g = geneval_score(corrupt, rows, Path(d) / "g")
            e = imgedit_score(corrupt, items, Path(d) / "e")
        print(f"{name:<8} {g:16.4f} {e.success:16.4f} {e.preservation:13.4f} {e.score:6.3f} "
              f"{time.perf_counter() - t:6.1f}", flush=True)


if __name__ == "__main__":
    main()
