"""``dreamlite demo``: a contact sheet of generations and edits, scores on a benchmark subset, and timings."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from dreamlite.imageio import load_image, save_image
from dreamlite.pipeline import DreamLitePipeline
from dreamlite.train.evaluate import evaluate_pipeline, model_fns, stratified

TILE = 128  # px per image on the sheet (Shapes images are upscaled with nearest neighbours)


@dataclass(frozen=True)
class DemoResult:
    sheet: Path
    seconds_per_generation: float
    seconds_per_edit: float
    scores: dict[str, float]


def _caption(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: int) -> None:
    words, line, y = text.split(), "", xy[1]
    for w in words:  # greedy wrap to the tile width (default bitmap font, ~6 px per character)
        if len(line) + len(w) + 1 > width // 6:
            draw.text((xy[0], y), line, fill=(20, 20, 20))
            y += 11
            line = w
        else:
            line = f"{line} {w}".strip()
    draw.text((xy[0], y), line, fill=(20, 20, 20))


def contact_sheet(generations: list[tuple[str, Image.Image]], edits: list[tuple[str, Image.Image, Image.Image]],
                  cols: int = 6) -> Image.Image:
    cap = 48
    gen_rows = -(-len(generations) // cols)
    edit_rows = -(-len(edits) // (cols // 2))
    sheet = Image.new("RGB", (cols * TILE, (gen_rows + edit_rows) * (TILE + cap) + 40), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), "text-to-image", fill=(0, 0, 0))
    for i, (prompt, img) in enumerate(generations):
        x, y = (i % cols) * TILE, 16 + (i // cols) * (TILE + cap)
        sheet.paste(img.resize((TILE, TILE), Image.NEAREST), (x, y))
        _caption(draw, (x + 2, y + TILE + 2), prompt, TILE - 4)
    top = 16 + gen_rows * (TILE + cap) + 8
    draw.text((4, top), "editing: source -> result", fill=(0, 0, 0))
    for i, (instruction, src, out) in enumerate(edits):
        x, y = (i % (cols // 2)) * 2 * TILE, top + 12 + (i // (cols // 2)) * (TILE + cap)
        sheet.paste(src.resize((TILE, TILE), Image.NEAREST), (x, y))
        sheet.paste(out.resize((TILE, TILE), Image.NEAREST), (x + TILE, y))
        _caption(draw, (x + 2, y + TILE + 2), instruction, 2 * TILE - 4)
    return sheet


def run_demo(model: Path, out: Path, variant: str | None = None, n_prompts: int = 12, n_edits: int = 6,
             geneval_limit: int = 60, imgedit_limit: int = 40, seed: int = 0) -> DemoResult:
    from dreamlite.bench import geneval, imgedit

    pipe = DreamLitePipeline.from_pretrained(model, variant=variant)
    generate_fn, edit_fn = model_fns(pipe)
    rows = stratified(geneval.load_metadata(geneval.default_metadata_path()), lambda r: r["tag"], n_prompts)
    prompts = [r["prompt"] for r in rows]
    t0 = time.perf_counter()
    gens = generate_fn(prompts, [seed + i for i in range(len(prompts))])
    t_gen = (time.perf_counter() - t0) / len(prompts)
    items = stratified(imgedit.load_bench(imgedit.default_bench_path()), lambda i: i.edit_type, n_edits)
    sources = [load_image(item.source_path) for item in items]
    t0 = time.perf_counter()
    outs = edit_fn(sources, [item.prompt for item in items], [seed + i for i in range(len(items))])
    t_edit = (time.perf_counter() - t0) / len(items)
    sheet = contact_sheet(list(zip(prompts, gens)), list(zip([i.prompt for i in items], sources, outs)))
    save_image(sheet, out)
    with tempfile.TemporaryDirectory() as tmp:
        scores = evaluate_pipeline(pipe, Path(tmp), geneval_limit, imgedit_limit)
    return DemoResult(out, t_gen, t_edit, scores)
