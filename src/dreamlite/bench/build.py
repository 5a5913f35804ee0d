"""Builds the shipped benchmark data from reserved seeds (``python -m dreamlite.bench.build``).

- ``data/geneval_shapes.jsonl``: ``PER_TAG`` prompts per GenEval tag, canonical phrasing, from
  ``GENEVAL_BENCH_SEED``.
- ``data/imgedit_shapes/``: ``PER_TYPE`` edits per edit type from ``IMGEDIT_BENCH_SEED``, canonical
  instructions: ``basic_edit.json`` (ImgEdit's schema), ``targets.json`` (source and target scenes) and
  ``images/<key>.png`` (64x64 sources).
Tags (edit types) take turns, so ``--limit N`` still covers all of them. The seeds lie in the range training
never draws from (``dreamlite.shapes.tasks``). A test rebuilds the data in memory and checks it equals what is
shipped.

The held-out-phrasing benchmarks are built on demand (``write_heldout``), not shipped: GenEval's 600 rows with
every prompt re-worded from the held-out templates (same clauses, same scoring), and 240 further edits drawn
with held-out instructions - words no training, RL or distillation prompt uses, so a model that learned the
world scores about as well there, and one that learned its training wordings does not.

The validation split (``write_validation``) is built on demand too: as many rows and edits drawn again from
their own reserved streams (prompt texts recur in so small a world; the edits' scenes do not) and sampled from
other starting noise (``evaluate_pipeline(split="val")``), so that choosing among models (a checkpoint, soup
weights) never reads the benchmark's images and the benchmark's numbers stay a test of the choice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dreamlite.bench import images
from dreamlite.bench.geneval import BENCH_FILE
from dreamlite.bench.imgedit import BENCH_DIR
from dreamlite.shapes.edits import EDIT_TYPES, EditCase, sample_edit_case
from dreamlite.shapes.render import render_batch
from dreamlite.shapes.spec import TAGS, PromptSpec, rephrase, sample_spec
from dreamlite.shapes.tasks import (GENEVAL_BENCH_SEED, GENEVAL_HELDOUT_SEED, GENEVAL_VAL_SEED,
                                     IMGEDIT_BENCH_SEED, IMGEDIT_HELDOUT_SEED, IMGEDIT_VAL_SEED)

PER_TAG = 100
PER_TYPE = 30
SOURCE_SIZE = 64


def geneval_rows(seed: int = GENEVAL_BENCH_SEED, per_tag: int = PER_TAG) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, tag, "canonical").to_dict() for _ in range(per_tag) for tag in TAGS]


def imgedit_cases(seed: int = IMGEDIT_BENCH_SEED, per_type: int = PER_TYPE,
                  phrasings: str = "canonical") -> list[EditCase]:
    rng = np.random.default_rng(seed)
    return [sample_edit_case(rng, t, phrasings) for _ in range(per_type) for t in EDIT_TYPES]


def heldout_geneval_rows(rows: list[dict], seed: int = GENEVAL_HELDOUT_SEED) -> list[dict]:
    """``rows`` with every prompt re-worded from the held-out phrasings (same clauses, same scoring)."""
    rng = np.random.default_rng(seed)
    return [rephrase(PromptSpec.from_dict(r), rng, "heldout").to_dict() for r in rows]


def imgedit_files(cases: list[EditCase]) -> tuple[dict, dict]:
    """(basic_edit.json content, targets.json content), keyed "0000", "0001", ..."""
    keys = [f"{i:04d}" for i in range(len(cases))]
    basic = {k: {"id": f"{k}.png", "prompt": c.instruction, "edit_type": c.edit_type} for k, c in zip(keys, cases)}
    targets = {k: {"source": c.source.to_dict(), "target": c.target.to_dict()} for k, c in zip(keys, cases)}
    return basic, targets


def write_all(data_dir: Path) -> None:
    rows = geneval_rows()
    images.write_text(data_dir / BENCH_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    cases = imgedit_cases()
    write_imgedit(cases, data_dir / BENCH_DIR)
    print(f"wrote {len(rows)} prompts and {len(cases)} edits under {data_dir}")


def write_imgedit(cases: list[EditCase], bench: Path) -> Path:
    """An ImgEdit-Shapes folder for ``cases`` (basic_edit.json, targets.json, images/); returns basic_edit.json."""
    basic, targets = imgedit_files(cases)
    for key, img in zip(basic, render_batch([c.source for c in cases], SOURCE_SIZE)):
        images.save_png(img, bench / "images" / f"{key}.png")
    images.write_text(bench / "targets.json", json.dumps(targets) + "\n")
    images.write_text(bench / "basic_edit.json", json.dumps(basic, indent=1) + "\n")
    return bench / "basic_edit.json"


def write_heldout(rows: list[dict], bench: Path, per_type: int = PER_TYPE) -> tuple[list[dict], Path]:
    """The held-out-phrasing benchmarks: (``rows`` re-worded, path of an ImgEdit folder written under ``bench``)."""
    return heldout_geneval_rows(rows), write_imgedit(imgedit_cases(IMGEDIT_HELDOUT_SEED, per_type, "heldout"), bench)


def write_validation(bench: Path, phrasings: str = "canonical", per_tag: int = PER_TAG,
                     per_type: int = PER_TYPE) -> tuple[list[dict], Path]:
    """The validation split: (GenEval rows from ``GENEVAL_VAL_SEED``, path of an ImgEdit folder of edits from
    ``IMGEDIT_VAL_SEED`` written under ``bench``); ``phrasings`` "heldout" re-words both like ``write_heldout``."""
    rows = geneval_rows(GENEVAL_VAL_SEED, per_tag)
    cases = imgedit_cases(IMGEDIT_VAL_SEED, per_type, phrasings)
    return (heldout_geneval_rows(rows) if phrasings == "heldout" else rows), write_imgedit(cases, bench)


if __name__ == "__main__":
    write_all(Path(__file__).parent / "data")
