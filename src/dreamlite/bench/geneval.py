"""GenEval-format benchmark on the Shapes world: generate into GenEval's folder layout, score, summarise.

Layout (as GenEval's generation script writes it)::

    <outdir>/<00000>/metadata.jsonl     the prompt's metadata row
    <outdir>/<00000>/samples/0000.png   K samples per prompt
    <outdir>/results.jsonl              one row per image: filename, tag, prompt, correct, reason,
                                        metadata (json string), details (json string of detections)

Scoring follows GenEval's rules (include clauses AND-ed, exclude clauses OR-ed, the first ``count`` detections
of a class checked for colour, relative position by GenEval's rule against every object of the referenced
matched group). Summary: accuracy over images per tag, overall = mean over tags. Rows whose classes or colours
the Shapes detector does not know are *unscorable*: written with ``correct: null`` and left out of accuracy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from dreamlite.bench import images
from dreamlite.shapes.detect import Detection, detect
from dreamlite.shapes.geometry import relative_position
from dreamlite.shapes.render import render_batch
from dreamlite.shapes.scene import Scene
from dreamlite.shapes.spec import PromptSpec, SpecError, scene_for_spec

GenerateFn = Callable[[list[str], list[int]], list[Image.Image]]
BENCH_FILE = "geneval_shapes.jsonl"
DEFAULT_SAMPLES = 4  # GenEval generates four images per prompt


def default_metadata_path() -> Path:
    """The shipped benchmark: 600 prompts, 100 per tag, canonical phrasing (seed ``GENEVAL_BENCH_SEED``)."""
    return Path(str(resources.files("dreamlite.bench") / "data" / BENCH_FILE))


def load_metadata(path: Path, limit: int | None = None) -> list[dict]:
    """Rows of a GenEval metadata .jsonl (blank lines skipped); a malformed line is a ValueError naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} does not exist")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            PromptSpec.from_dict(row, f"{path}:{lineno}")  # validates the schema
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise ValueError(f"{path}: no metadata rows")
    return rows


# ------------------------------------------------------------------------------------------------ scoring
def _by_class(detections: Sequence[Detection]) -> dict[str, list[Detection]]:
    out: dict[str, list[Detection]] = {}
    for d in sorted(detections, key=lambda d: -d.score):  # GenEval keeps each class in score order
        out.setdefault(d.cls, []).append(d)
    return out


def evaluate(spec: PromptSpec, detections: Sequence[Detection]) -> tuple[bool, str]:
    """GenEval's verdict for one image: (correct, reasons joined by newlines)."""
    found_by_class = _by_class(detections)
    correct, reasons = True, []
    groups: list[list[Detection] | None] = []  # matched objects of each include clause, None if it failed
    for clause in spec.include:
        found = found_by_class.get(clause.cls, [])[:clause.count]
        matched = True
        if len(found) < clause.count:
            matched = False
            reasons.append(f"expected {clause.cls}>={clause.count}, found {len(found)}")
        else:
            if clause.color is not None:
                colors = [d.color for d in found]
                if colors.count(clause.color) < clause.count:
                    matched = False
                    seen = ", ".join(f"{colors.count(c)} {c}" for c in dict.fromkeys(colors))
                    reasons.append(f"expected {clause.color} {clause.cls}>={clause.count}, found "
                                   f"{colors.count(clause.color)} {clause.color}; and {seen}")
            if clause.position is not None and matched:
                relation, group = clause.position
                targets = groups[group]
                if targets is None:
                    matched = False
                    reasons.append(f"no target for {clause.cls} to be {relation}")
                else:
                    for obj in found:
                        for target in targets:
                            rels = relative_position(np.array(obj.box), np.array(target.box))
                            if relation not in rels:
                                matched = False
                                reasons.append(f"expected {clause.cls} {relation} target, found "
                                               f"{' and '.join(sorted(rels)) or 'no relation'} target")
                                break
                        if not matched:
                            break
        correct &= matched
        groups.append(found if matched else None)
    for clause in spec.exclude:
        n = len(found_by_class.get(clause.cls, []))
        if n >= clause.count:
            correct = False
            reasons.append(f"expected {clause.cls}<{clause.count}, found {n}")
    return correct, "\n".join(reasons)


def partial_score(spec: PromptSpec, detections: Sequence[Detection]) -> float:
    """Per-clause partial credit in [0, 1] (1.0 exactly when ``evaluate`` says correct), for RL rewards:
    each include clause earns (share of the count found) x (share with the right colour) x (share of
    position pairs that hold); each exclude clause earns 1 when respected; the score is their mean."""
    found_by_class = _by_class(detections)
    credits, groups = [], []
    for clause in spec.include:
        found = found_by_class.get(clause.cls, [])[:clause.count]
        credit = len(found) / clause.count
        if clause.color is not None:
            credit *= sum(d.color == clause.color for d in found) / clause.count
        if clause.position is not None:
            relation, group = clause.position
            targets = groups[group] if group < len(groups) else []
            pairs = [(o, t) for o in found for t in targets]
            held = sum(relation in relative_position(np.array(o.box), np.array(t.box)) for o, t in pairs)
            credit *= held / len(pairs) if pairs else 0.0
        credits.append(credit)
        groups.append(found)
    for clause in spec.exclude:
        credits.append(float(len(found_by_class.get(clause.cls, [])) < clause.count))
    return float(np.mean(credits)) if credits else 1.0


@dataclass(frozen=True)
class ResultRow:
    filename: str
    tag: str
    prompt: str
    correct: bool | None  # None: unscorable here (unknown class/colour)
    reason: str
    metadata: dict
    detections: tuple[Detection, ...]
    partial: float

    def to_dict(self) -> dict:
        return {"filename": self.filename, "tag": self.tag, "prompt": self.prompt, "correct": self.correct,
                "reason": self.reason, "metadata": json.dumps(self.metadata),
                "details": json.dumps([d.to_dict() for d in self.detections]), "partial_score": self.partial}


def score_image(image: images.LoadedImage, row: dict, filename: str) -> ResultRow:
    """One results.jsonl row for an image of the prompt ``row``."""
    spec = PromptSpec.from_dict(row, filename)
    unknown = spec.unknown_names()
    if unknown:
        return ResultRow(filename, spec.tag, spec.prompt, None,
                         f"unscorable: {', '.join(unknown)} not in the Shapes world", row, (), 0.0)
    if image.pixels is None:
        return ResultRow(filename, spec.tag, spec.prompt, False, str(image.problem), row, (), 0.0)
    dets = detect(image.pixels)
    correct, reason = evaluate(spec, dets)
    return ResultRow(filename, spec.tag, spec.prompt, correct, reason, row, tuple(dets), partial_score(spec, dets))


# --------------------------------------------------------------------------------------------- the layout
def _folder(root: Path, index: int) -> Path:
    return root / f"{index:05d}"


def generate(rows: Sequence[dict], outdir: Path, generate_fn: GenerateFn, samples_per_prompt: int = 4,
             seed: int = 0, batch_size: int = 16) -> None:
    """Write ``rows`` into GenEval's layout under ``outdir``, K images per prompt from ``generate_fn``.
    Image k of prompt i is made with seed ``seed + i * K + k``."""
    jobs = [(i, k) for i in range(len(rows)) for k in range(samples_per_prompt)]
    for i, row in enumerate(rows):
        images.write_text(_folder(outdir, i) / "metadata.jsonl", json.dumps(row) + "\n")
    for start in tqdm(range(0, len(jobs), batch_size), desc="generate", unit="batch", leave=False):
        batch = jobs[start:start + batch_size]
        prompts = [rows[i]["prompt"] for i, _ in batch]
        outs = generate_fn(prompts, [seed + i * samples_per_prompt + k for i, k in batch])
        if len(outs) != len(batch):
            raise ValueError(f"generate_fn returned {len(outs)} images for {len(batch)} prompts")
        for (i, k), img in zip(batch, outs):
            images.save_png(img, _folder(outdir, i) / "samples" / f"{k:04d}.png")


def ground_truth_fn(rows: Sequence[dict], size: int = 64) -> GenerateFn:
    """A ``generate_fn`` that renders a random scene satisfying each prompt (seeded per image). Prompts the
    Shapes world cannot draw get a plain background (they are unscorable anyway)."""
    specs = {row["prompt"]: PromptSpec.from_dict(row) for row in rows}

    def generate_fn(prompts: list[str], seeds: list[int]) -> list[Image.Image]:
        scenes = []
        for prompt, seed in zip(prompts, seeds):
            spec, rng = specs[prompt], np.random.default_rng(seed)
            scenes.append(Scene("gray") if spec.unknown_names() else scene_for_spec(rng, spec))
        return [Image.fromarray(a) for a in render_batch(scenes, size)]

    return generate_fn


def _read_folder_metadata(folder: Path) -> dict:
    path = folder / "metadata.jsonl"
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) != 1:
        raise ValueError(f"{path}: expected one metadata line, found {len(lines)}")
    try:
        row = json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:1: not valid JSON ({e.msg})") from None
    PromptSpec.from_dict(row, f"{path}:1")
    return row


def score_layout(root: Path, rows: Sequence[dict] | None = None, samples_per_prompt: int | None = None,
                 limit: int | None = None) -> list[ResultRow]:
    """Score every image of a GenEval layout. With ``rows``, folder i holds prompt i's samples (K of them when
    ``samples_per_prompt`` is given, else whatever is there; absent ones are failed rows: "missing image");
    without, folders are discovered and each one's metadata.jsonl is used."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if rows is None:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
        if limit is not None:
            folders = folders[:limit]
        if not folders:
            raise ValueError(f"{root} holds no GenEval prompt folders (00000/, 00001/, ...)")
        jobs = [(f, _read_folder_metadata(f), sorted((f / "samples").glob("*.png"))) for f in folders]
    else:
        jobs = []
        for i, row in enumerate(rows):
            folder = _folder(root, i)
            if samples_per_prompt is None:
                paths = sorted((folder / "samples").glob("*.png"))
            else:
                paths = [folder / "samples" / f"{j:04d}.png" for j in range(samples_per_prompt)]
            jobs.append((folder, row, paths))
    results = []
    for folder, row, paths in tqdm(jobs, desc="score", unit="prompt", leave=False):
        if not paths:
            paths = [folder / "samples" / "0000.png"]  # reported as missing
        for path in paths:
            results.append(score_image(images.load(path), row, str(path)))
    return results


# ------------------------------------------------------------------------------------------------ summary
@dataclass(frozen=True)
class TagScore:
    tag: str
    correct: int
    total: int  # scorable images

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


@dataclass(frozen=True)
class GenEvalSummary:
    tags: tuple[TagScore, ...]
    unscorable: int
    unscorable_names: tuple[str, ...]

    @property
    def overall(self) -> float:
        scored = [t.accuracy for t in self.tags if t.total]
        return float(np.mean(scored)) if scored else float("nan")

    def format(self) -> str:
        lines = [f"{t.tag:<16} = {t.accuracy:.2%} ({t.correct} / {t.total})" for t in self.tags if t.total]
        if self.unscorable:
            lines.append(f"unscorable: {self.unscorable} images (not in the Shapes world: "
                         f"{', '.join(self.unscorable_names[:12])}{', ...' if len(self.unscorable_names) > 12 else ''})")
        overall = "n/a (nothing scorable)" if np.isnan(self.overall) else f"{self.overall:.5f}"
        lines.append(f"Overall score (avg. over tasks): {overall}")
        return "\n".join(lines)


def summarise(results: Sequence[ResultRow]) -> GenEvalSummary:
    tags: dict[str, list[int]] = {}
    unscorable, names = 0, set()
    for r in results:
        if r.correct is None:
            unscorable += 1
            names.update(r.reason.removeprefix("unscorable: ").removesuffix(" not in the Shapes world").split(", "))
            continue
        counts = tags.setdefault(r.tag, [0, 0])
        counts[0] += int(r.correct)
        counts[1] += 1
    return GenEvalSummary(tuple(TagScore(t, c, n) for t, (c, n) in tags.items()), unscorable, tuple(sorted(names)))


def write_results(results: Sequence[ResultRow], path: Path) -> None:
    images.write_text(path, "".join(json.dumps(r.to_dict()) + "\n" for r in results))


def run(metadata_rows: Sequence[dict] | None, outdir: Path, generate_fn: GenerateFn | None = None,
        images_dir: Path | None = None, samples_per_prompt: int | None = None, seed: int = 0,
        limit: int | None = None, batch_size: int = 16) -> GenEvalSummary:
    """The whole benchmark: generate into ``outdir`` with ``generate_fn`` (K = ``samples_per_prompt``, default
    4 as GenEval) unless ``images_dir`` holds a finished layout, score, write ``outdir/results.jsonl`` and return
    the summary. With ``images_dir``, ``metadata_rows`` (optional) say what folder i must show."""
    if (generate_fn is None) == (images_dir is None):
        raise ValueError("give exactly one of generate_fn and images_dir")
    rows = list(metadata_rows)[:limit] if metadata_rows is not None else None
    if generate_fn is not None:
        if not rows:
            raise ValueError("generation needs metadata rows")
        k = DEFAULT_SAMPLES if samples_per_prompt is None else samples_per_prompt
        if k < 1:
            raise ValueError(f"samples per prompt must be >= 1, got {k}")
        generate(rows, outdir, generate_fn, k, seed, batch_size)
        results = score_layout(outdir, rows, k)
    else:
        results = score_layout(Path(images_dir), rows, samples_per_prompt, limit)
    write_results(results, outdir / "results.jsonl")
    return summarise(results)


__all__ = ["GenEvalSummary", "ResultRow", "SpecError", "default_metadata_path", "evaluate", "generate",
           "ground_truth_fn", "load_metadata", "partial_score", "run", "score_image", "score_layout", "summarise"]
