"""Shapes-world throughput on one core: rendering, training-batch sampling, detection and benchmark scoring.

    nice -n 10 python benchmarks/shapes_throughput.py

Rates are items per second of *process CPU time* (numpy runs these single-threaded, so CPU time is the
one-core figure and is not inflated by other jobs on a shared machine); wall-clock rates are shown beside.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from dreamlite.bench import geneval, imgedit
from dreamlite.data.shapes_shards import write_shapes
from dreamlite.shapes.detect import detect
from dreamlite.shapes.render import render, render_batch
from dreamlite.shapes.scene import layout, random_background, random_object_attrs
from dreamlite.shapes.tasks import sample_edit, sample_t2i


def _rate(label: str, n: int, fn: Callable[[], object]) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{label:<44} {n / cpu:10.0f} /s CPU   {n / wall:10.0f} /s wall   (n={n})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="images for the 64x64 render timing")
    args = parser.parse_args()
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; numpy elementwise is 1 thread")
    rng = np.random.default_rng(0)
    scenes = [layout(rng, random_object_attrs(rng, int(rng.integers(1, 5))), random_background(rng))
              for _ in range(args.n)]
    render_batch(scenes[:64], 64)  # warm caches
    for size, n in ((32, args.n), (64, args.n), (128, args.n // 4), (512, args.n // 40)):
        _rate(f"render_batch {size}x{size} (1-4 objects)", n, lambda: render_batch(scenes[:n], size))
    _rate("render one at a time 64x64", 500, lambda: [render(s, 64) for s in scenes[:500]])
    _rate("sample_t2i 64x64 (scene sampling + render)", 2000, lambda: sample_t2i(rng, 2000))
    _rate("sample_edit 64x64 (source + target)", 1000, lambda: sample_edit(rng, 1000))
    imgs64, imgs256 = render_batch(scenes[:500], 64), render_batch(scenes[:100], 256)
    _rate("detect 64x64", 500, lambda: [detect(im) for im in imgs64])
    _rate("detect 256x256 (downsampled to 128)", 100, lambda: [detect(im) for im in imgs256])

    rows = geneval.load_metadata(geneval.default_metadata_path())
    items = imgedit.load_bench(imgedit.default_bench_path())
    with tempfile.TemporaryDirectory() as d:
        geneval.generate(rows, Path(d) / "g", geneval.ground_truth_fn(rows), samples_per_prompt=1)
        _rate("GenEval scoring (load + detect + rules)", len(rows), lambda: geneval.score_layout(Path(d) / "g"))
        imgedit.write_ground_truth(items, Path(d) / "e")
        _rate("ImgEdit scoring (load + detect + rules)", len(items),
              lambda: imgedit.score_folder(items, Path(d) / "e"))
        _rate("dreamlite data shapes --task t2i (wds)", 2000, lambda: write_shapes(Path(d) / "s", 2000, "t2i"))


if __name__ == "__main__":
    main()
