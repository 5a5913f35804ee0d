"""ImgEdit-format edit benchmark on the Shapes world: edit into a folder, score, summarise.

Bench files (the shipped one: ``bench/data/imgedit_shapes/``):

    basic_edit.json   ImgEdit's schema: {key: {"id": "<key>.png", "prompt": instruction, "edit_type": type}}
    images/<id>       the source images
    targets.json      {key: {"source": scene, "target": scene}} - what the edit must produce

Outputs: ``<outdir>/<key>.png`` per edit and ``<outdir>/results.jsonl``.

Scoring one sample (``score_edit``) compares detections in the output with the source and target scenes.
Objects identical in source and target are *unnamed*; the rest are *named* by the edit.
- success: (a) for every (shape, colour) pair among the named objects, the output holds as many as the target;
  (b) the output holds exactly as many objects as the target; (c) per type: replace/alter - the new object sits
  where the old one was (``POSITION_TOLERANCE``); resize - it sits there and its size is past the geometric
  midpoint of old and new size; move - it went at least half the way and ended in the named half of the image;
  background - the background is the target's.
- preservation in [0, 1]: share of checks passed among "each unnamed object is found with its shape and colour
  within ``POSITION_TOLERANCE`` of its place" and "the background is unchanged" (not checked for background
  edits, 1.0 when nothing is to be preserved).
- score_1_5 = 3 + 2 * preservation on success, 1 + preservation on failure: 5 = perfect, 3..5 = the edit
  happened, 1..2 = it did not (an untouched copy of the source scores 2).
Per type: success rate, mean preservation, mean score; overall = mean over edit types.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from dreamlite.bench import images
from dreamlite.shapes.detect import Analysis, Detection, analyse
from dreamlite.shapes.render import render
from dreamlite.shapes.scene import Scene, SceneError, ShapeObject

EditFn = Callable[[list[Image.Image], list[str], list[int]], list[Image.Image]]
POSITION_TOLERANCE = 0.06  # of the image side: 3.8 px at 64x64
BENCH_DIR = "imgedit_shapes"


@dataclass(frozen=True)
class EditScore:
    success: bool
    preservation: float
    score_1_5: float
    reason: str


@dataclass(frozen=True)
class _Found:
    """A detection in image-side units."""

    cls: str
    color: str
    x: float
    y: float
    size: float  # sqrt(box area) / side


def _found(analysis: Analysis) -> list[_Found]:
    w, h = analysis.width, analysis.height
    return [_Found(d.cls, d.color, (d.box[0] + d.box[2]) / 2 / w, (d.box[1] + d.box[3]) / 2 / h,
                   math.sqrt(max(d.box[2] - d.box[0], 0) * max(d.box[3] - d.box[1], 0) / (w * h)))
            for d in analysis.detections]


def _size(obj: ShapeObject) -> float:
    x0, y0, x1, y1 = obj.box
    return math.sqrt((x1 - x0) * (y1 - y0))


def _near(found: Sequence[_Found], obj: ShapeObject, used: set[int], tol: float) -> int | None:
    """Index of the closest unused detection of obj's shape and colour within ``tol``, or None."""
    best, best_d = None, tol
    for i, f in enumerate(found):
        d = math.hypot(f.x - obj.x, f.y - obj.y)
        if i not in used and f.cls == obj.shape and f.color == obj.color and d <= best_d:
            best, best_d = i, d
    return best


def _diff(source: Scene, target: Scene) -> tuple[list[ShapeObject], list[ShapeObject], list[ShapeObject]]:
    """(unnamed objects, named source objects, named target objects)."""
    rest = list(target.objects)
    unnamed, named_src = [], []
    for obj in source.objects:
        if obj in rest:
            rest.remove(obj)
            unnamed.append(obj)
        else:
            named_src.append(obj)
    return unnamed, named_src, rest


def _partner(new: ShapeObject, old: Sequence[ShapeObject], same: str) -> ShapeObject | None:
    """The named source object that ``new`` came from (same place, or same shape+colour for moves)."""
    for o in old:
        if (same == "place" and (o.x, o.y) == (new.x, new.y)) or \
                (same == "identity" and (o.shape, o.color, o.size) == (new.shape, new.color, new.size)):
            return o
    return None


def _type_checks(edit_type: str, found: list[_Found], named_src: list[ShapeObject],
                 named_tgt: list[ShapeObject], target: Scene, analysis: Analysis) -> list[str]:
    """Reasons the edit-type-specific part of success fails (empty = passes)."""
    reasons = []
    if edit_type == "background" and analysis.background != target.background:
        reasons.append(f"background is {analysis.background or 'unknown'}, expected {target.background}")
    for new in named_tgt:
        if edit_type in ("replace", "alter", "resize"):
            i = _near(found, new, set(), POSITION_TOLERANCE)
            if i is None:
                reasons.append(f"no {new.color} {new.shape} where the edited object was")
            elif edit_type == "resize":
                old = _partner(new, named_src, "place")
                if old is not None:
                    midpoint = math.sqrt(_size(old) * _size(new))
                    grew = found[i].size > midpoint
                    if grew != (_size(new) > _size(old)):
                        reasons.append(f"{new.color} {new.shape} is {found[i].size:.3f} of the side, expected "
                                       f"{'above' if _size(new) > _size(old) else 'below'} {midpoint:.3f}")
        elif edit_type == "move":
            old = _partner(new, named_src, "identity")
            cands = [f for f in found if (f.cls, f.color) == (new.shape, new.color)]
            if old is None or not cands:
                reasons.append(f"no {new.color} {new.shape} found after the move")
                continue
            dx, dy = new.x - old.x, new.y - old.y
            norm2 = dx * dx + dy * dy
            ok = any(((f.x - old.x) * dx + (f.y - old.y) * dy) / norm2 >= 0.5
                     and (f.x - 0.5) * dx + (f.y - 0.5) * dy > 0 for f in cands)
            if not ok:
                reasons.append(f"{new.color} {new.shape} did not move far enough toward its new place")
    return reasons


def score_analysis(analysis: Analysis, source: Scene, target: Scene, edit_type: str) -> EditScore:
    """``score_edit`` on an already analysed output image."""
    found = _found(analysis)
    unnamed, named_src, named_tgt = _diff(source, target)
    reasons = []
    have = Counter((f.cls, f.color) for f in found)
    want = Counter((o.shape, o.color) for o in target.objects)
    for pair in sorted({(o.shape, o.color) for o in named_src + named_tgt}):
        if have[pair] != want[pair]:
            reasons.append(f"expected {want[pair]} {pair[1]} {pair[0]}, found {have[pair]}")
    if len(found) != len(target.objects):
        reasons.append(f"expected {len(target.objects)} objects in all, found {len(found)}")
    reasons += _type_checks(edit_type, found, named_src, named_tgt, target, analysis)
    lost = []  # preservation failures: reported, but they do not make the edit itself fail
    used: set[int] = set()
    for obj in unnamed:
        i = _near(found, obj, used, POSITION_TOLERANCE)
        if i is None:
            lost.append(f"unnamed {obj.color} {obj.shape} not kept in place")
        else:
            used.add(i)
    checks, passed = len(unnamed), len(used)
    if edit_type != "background":
        checks += 1
        passed += analysis.background == source.background
        if analysis.background != source.background:
            lost.append(f"background changed to {analysis.background or 'unknown'}")
    preservation = passed / checks if checks else 1.0
    success = not reasons
    score = 3.0 + 2.0 * preservation if success else 1.0 + preservation
    return EditScore(success, preservation, score, "; ".join(reasons + lost))


def score_edit(output_image: Image.Image | np.ndarray, source_scene: Scene, target_scene: Scene,
               edit_type: str) -> EditScore:
    """Score one edit output (PIL image or uint8 array, any square size >= 32) against its scenes. An image
    the detector cannot read (wrong size, not RGB) is a failed sample."""
    loaded = images.to_pixels(output_image)
    if loaded.pixels is None:
        return EditScore(False, 0.0, 1.0, str(loaded.problem))
    return score_analysis(analyse(loaded.pixels), source_scene, target_scene, edit_type)


# ------------------------------------------------------------------------------------------------ the bench
@dataclass(frozen=True)
class EditItem:
    key: str
    image_id: str
    prompt: str
    edit_type: str
    source_path: Path
    source_scene: Scene | None  # None: no targets.json (official ImgEdit data) - unscorable here
    target_scene: Scene | None


def default_bench_path() -> Path:
    return Path(str(resources.files("dreamlite.bench") / "data" / BENCH_DIR / "basic_edit.json"))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by edit id")
    return data


def load_bench(path: Path, limit: int | None = None) -> list[EditItem]:
    """Items of a ``basic_edit.json`` (with ``targets.json`` and ``images/`` beside it)."""
    if not path.is_file():
        raise FileNotFoundError(f"bench file {path} does not exist")
    entries = _read_json(path)
    targets_path = path.parent / "targets.json"
    targets = _read_json(targets_path) if targets_path.is_file() else {}
    items = []
    for key, entry in entries.items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in ("id", "prompt", "edit_type")):
            raise ValueError(f"{path}: entry {key!r} needs string 'id', 'prompt' and 'edit_type'")
        source = target = None
        if key in targets:
            try:
                source = Scene.from_dict(targets[key]["source"])
                target = Scene.from_dict(targets[key]["target"])
            except (KeyError, TypeError, SceneError) as e:
                raise ValueError(f"{targets_path}: entry {key!r}: {e}") from None
        items.append(EditItem(str(key), entry["id"], entry["prompt"], entry["edit_type"],
                              path.parent / "images" / entry["id"], source, target))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise ValueError(f"{path}: no edits")
    return items


def generate(items: Sequence[EditItem], outdir: Path, edit_fn: EditFn, seed: int = 0, batch_size: int = 16) -> None:
    """``<outdir>/<key>.png`` for every item, from ``edit_fn`` (item i is edited with seed ``seed + i``)."""
    for start in tqdm(range(0, len(items), batch_size), desc="edit", unit="batch", leave=False):
        batch = items[start:start + batch_size]
        sources = []
        for item in batch:
            loaded = images.load(item.source_path)
            if loaded.pixels is None:
                raise ValueError(f"source image of edit {item.key}: {loaded.problem}")
            sources.append(Image.fromarray(loaded.pixels))
        outs = edit_fn(sources, [it.prompt for it in batch], [seed + start + j for j in range(len(batch))])
        if len(outs) != len(batch):
            raise ValueError(f"edit_fn returned {len(outs)} images for {len(batch)} edits")
        for item, img in zip(batch, outs):
            images.save_png(img, outdir / f"{item.key}.png")


def write_ground_truth(items: Sequence[EditItem], outdir: Path) -> None:
    """Render each item's target scene at its source image's size into ``<outdir>/<key>.png``."""
    for item in items:
        if item.target_scene is None:
            raise ValueError(f"edit {item.key} has no target scene: ground truth needs targets.json")
        with Image.open(item.source_path) as im:
            size = im.size[0]
        images.save_png(render(item.target_scene, size), outdir / f"{item.key}.png")


@dataclass(frozen=True)
class EditResult:
    key: str
    image_id: str
    edit_type: str
    prompt: str
    score: EditScore | None  # None: unscorable (no target scene)
    detections: tuple[Detection, ...]
    background: str | None

    def to_dict(self) -> dict:
        s = self.score
        return {"key": self.key, "id": self.image_id, "edit_type": self.edit_type, "prompt": self.prompt,
                "success": None if s is None else s.success,
                "preservation": None if s is None else round(s.preservation, 4),
                "score": None if s is None else round(s.score_1_5, 4),
                "reason": "unscorable: no target scene" if s is None else s.reason,
                "details": json.dumps({"background": self.background,
                                       "detections": [d.to_dict() for d in self.detections]})}


def score_folder(items: Sequence[EditItem], folder: Path) -> list[EditResult]:
    """Score ``<folder>/<key>.png`` for every item (missing/corrupt/wrongly sized: failed, with a reason)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    results = []
    for item in tqdm(items, desc="score", unit="edit", leave=False):
        if item.source_scene is None or item.target_scene is None:
            results.append(EditResult(item.key, item.image_id, item.edit_type, item.prompt, None, (), None))
            continue
        loaded = images.load(folder / f"{item.key}.png")
        if loaded.pixels is None:
            score = EditScore(False, 0.0, 1.0, str(loaded.problem))
            results.append(EditResult(item.key, item.image_id, item.edit_type, item.prompt, score, (), None))
            continue
        analysis = analyse(loaded.pixels)
        score = score_analysis(analysis, item.source_scene, item.target_scene, item.edit_type)
        results.append(EditResult(item.key, item.image_id, item.edit_type, item.prompt, score,
                                  analysis.detections, analysis.background))
    return results


@dataclass(frozen=True)
class TypeScore:
    edit_type: str
    n: int
    success: float
    preservation: float
    score: float


@dataclass(frozen=True)
class ImgEditSummary:
    types: tuple[TypeScore, ...]
    unscorable: int

    def _mean(self, field: str) -> float:
        vals = [getattr(t, field) for t in self.types]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def success(self) -> float:
        return self._mean("success")

    @property
    def preservation(self) -> float:
        return self._mean("preservation")

    @property
    def score(self) -> float:
        return self._mean("score")

    def format(self) -> str:
        lines = [f"{t.edit_type:<12} success {t.success:7.2%}  preservation {t.preservation:.3f}  "
                 f"score {t.score:.2f}  ({t.n})" for t in self.types]
        if self.unscorable:
            lines.append(f"unscorable: {self.unscorable} edits (no target scene)")
        lines.append(f"Overall: success {self.success:.4f}, preservation {self.preservation:.4f}, "
                     f"score {self.score:.3f}")
        return "\n".join(lines)


def summarise(results: Sequence[EditResult]) -> ImgEditSummary:
    by_type: dict[str, list[EditScore]] = {}
    for r in results:
        if r.score is not None:
            by_type.setdefault(r.edit_type, []).append(r.score)
    types = tuple(TypeScore(t, len(s), float(np.mean([x.success for x in s])),
                            float(np.mean([x.preservation for x in s])), float(np.mean([x.score_1_5 for x in s])))
                  for t, s in by_type.items())
    return ImgEditSummary(types, sum(r.score is None for r in results))


def run(items: Sequence[EditItem], outdir: Path, edit_fn: EditFn | None = None, images_dir: Path | None = None,
        seed: int = 0, limit: int | None = None, batch_size: int = 16) -> ImgEditSummary:
    """Edit every item into ``outdir`` with ``edit_fn`` (or score the finished ``images_dir``), write
    ``outdir/results.jsonl`` and return the summary."""
    if (edit_fn is None) == (images_dir is None):
        raise ValueError("give exactly one of edit_fn and images_dir")
    items = list(items)[:limit]
    if edit_fn is not None:
        generate(items, outdir, edit_fn, seed, batch_size)
        images_dir = outdir
    results = score_folder(items, Path(images_dir))
    images.write_text(outdir / "results.jsonl", "".join(json.dumps(r.to_dict()) + "\n" for r in results))
    return summarise(results)
