"""Shapes-world datasets on disk: WebDataset shards or plain folders, and loaders that stream them back.

WebDataset layout (``<out>/t2i-000000.tar``, ``<out>/edit-000000.tar``, ...), one sample per key:

    t2i   __key__ t2i-000000042   png (image)   txt (prompt)        json {"metadata": GenEval row, "scene": ...}
    edit  __key__ edit-000000042  src.png tgt.png  txt (instruction)  json {"edit_type", "source", "target"}

Folder layout: ``<out>/t2i/images/<key>.png`` + ``<out>/t2i/metadata.jsonl`` (file, prompt, metadata, scene) and
``<out>/edit/{sources,targets}/<key>.png`` + ``<out>/edit/metadata.jsonl`` (source_file, target_file,
instruction, edit_type, source, target).

Everything is written under a temporary folder inside ``<out>`` and moved into place at the end, so an
interrupted run leaves no half-written dataset. Seeds must lie in the training range
(``dreamlite.shapes.tasks.check_training_seed``); t2i and edit use independent streams of one seed.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from dreamlite.shapes.scene import Scene
from dreamlite.shapes.tasks import check_training_seed, sample_edit, sample_t2i

TASKS: tuple[str, ...] = ("t2i", "edit", "both")
FORMATS: tuple[str, ...] = ("wds", "folder")
_BATCH = 256  # samples rendered per call


@dataclass(frozen=True)
class T2ISample:
    key: str
    image: np.ndarray  # uint8 [H, W, 3]
    prompt: str
    metadata: dict  # GenEval metadata row
    scene: Scene


@dataclass(frozen=True)
class EditSample:
    key: str
    source: np.ndarray  # uint8 [H, W, 3]
    target: np.ndarray
    instruction: str
    edit_type: str
    source_scene: Scene
    target_scene: Scene


@dataclass(frozen=True)
class WriteReport:
    paths: tuple[Path, ...]  # shards, or the task folders
    samples: int


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)  # speed over size
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _records(task: str, n: int, size: int, seed: int) -> Iterator[dict]:
    """Raw records (key, bytes and JSON fields) of one task, rendered in batches."""
    rng = np.random.default_rng([seed, TASKS.index(task)])  # one seed, independent streams per task
    bar = tqdm(total=n, desc=f"shapes {task}", unit="sample", leave=False)
    for start in range(0, n, _BATCH):
        m = min(_BATCH, n - start)
        if task == "t2i":
            b = sample_t2i(rng, m, size)
            for j in range(m):
                yield {"__key__": f"t2i-{start + j:09d}", "png": _png(b.images[j]), "txt": b.prompts[j],
                       "json": {"metadata": b.metadata[j], "scene": b.scenes[j].to_dict()}}
        else:
            e = sample_edit(rng, m, size)
            for j in range(m):
                yield {"__key__": f"edit-{start + j:09d}", "src.png": _png(e.sources[j]),
                       "tgt.png": _png(e.targets[j]), "txt": e.instructions[j],
                       "json": {"edit_type": e.edit_types[j], "source": e.source_scenes[j].to_dict(),
                                "target": e.target_scenes[j].to_dict()}}
        bar.update(m)
    bar.close()


def _write_wds(task: str, n: int, size: int, seed: int, tmp: Path, shard_size: int) -> None:
    with wds.ShardWriter(str(tmp / f"{task}-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
        for rec in _records(task, n, size, seed):
            sink.write({**rec, "txt": rec["txt"].encode("utf-8"), "json": json.dumps(rec["json"]).encode("utf-8")})


def _write_folder(task: str, n: int, size: int, seed: int, tmp: Path) -> None:
    root = tmp / task
    with open(root.parent / f"{task}.jsonl.part", "w", encoding="utf-8") as meta:
        for rec in _records(task, n, size, seed):
            key = rec["__key__"]
            if task == "t2i":
                (root / "images").mkdir(parents=True, exist_ok=True)
                (root / "images" / f"{key}.png").write_bytes(rec["png"])
                row = {"file": f"images/{key}.png", "prompt": rec["txt"], **rec["json"]}
            else:
                for sub, field in (("sources", "src.png"), ("targets", "tgt.png")):
                    (root / sub).mkdir(parents=True, exist_ok=True)
                    (root / sub / f"{key}.png").write_bytes(rec[field])
                row = {"source_file": f"sources/{key}.png", "target_file": f"targets/{key}.png",
                       "instruction": rec["txt"], **rec["json"]}
            meta.write(json.dumps(row) + "\n")
    root.mkdir(parents=True, exist_ok=True)
    os.replace(root.parent / f"{task}.jsonl.part", root / "metadata.jsonl")


def write_shapes(out: Path, n: int, task: str = "both", size: int = 64, seed: int = 0, fmt: str = "wds",
                 shard_size: int = 10_000) -> WriteReport:
    """Write ``n`` samples of each requested task ("t2i", "edit" or "both") to ``out``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    check_training_seed(seed)
    tasks = ("t2i", "edit") if task == "both" else (task,)
    out.mkdir(parents=True, exist_ok=True)
    clashes = [p.name for t in tasks for p in out.glob(f"{t}-*.tar" if fmt == "wds" else t)]
    if clashes:
        raise ValueError(f"{out} already holds {', '.join(sorted(clashes)[:3])}: choose an empty folder")
    tmp = Path(tempfile.mkdtemp(prefix=".shapes-", dir=out))
    try:
        for t in tasks:
            if fmt == "wds":
                _write_wds(t, n, size, seed, tmp, shard_size)
            else:
                _write_folder(t, n, size, seed, tmp)
        made = []
        for p in sorted(tmp.iterdir()):
            os.replace(p, out / p.name)
            made.append(out / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return WriteReport(tuple(made), n * len(tasks))


def _sample(raw: dict) -> T2ISample | EditSample:
    key = raw["__key__"]
    meta = json.loads(raw["json"])
    text = raw["txt"].decode("utf-8")
    if "png" in raw:
        return T2ISample(key, _unpng(raw["png"]), text, meta["metadata"], Scene.from_dict(meta["scene"]))
    return EditSample(key, _unpng(raw["src.png"]), _unpng(raw["tgt.png"]), text, meta["edit_type"],
                      Scene.from_dict(meta["source"]), Scene.from_dict(meta["target"]))


def load_shards(pattern: str) -> Iterator[T2ISample | EditSample]:
    """Stream samples from shards: a glob (``out/t2i-*.tar``) or WebDataset brace pattern
    (``out/t2i-{000000..000003}.tar``), in shard order."""
    urls: str | list[str] = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else pattern
    if not urls:
        raise FileNotFoundError(f"no shards match {pattern}")
    for raw in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        yield _sample(raw)


def load_folder(root: Path) -> Iterator[T2ISample | EditSample]:
    """Stream samples from a folder written with ``fmt="folder"`` (``<out>/t2i`` or ``<out>/edit``)."""
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} does not exist")
    with meta.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{meta}:{lineno}: not valid JSON ({e.msg})") from None
            key = Path(row.get("file") or row["source_file"]).stem
            if "file" in row:
                yield T2ISample(key, _unpng((root / row["file"]).read_bytes()), row["prompt"], row["metadata"],
                                Scene.from_dict(row["scene"]))
            else:
                yield EditSample(key, _unpng((root / row["source_file"]).read_bytes()),
                                 _unpng((root / row["target_file"]).read_bytes()), row["instruction"],
                                 row["edit_type"], Scene.from_dict(row["source"]), Scene.from_dict(row["target"]))
