"""Tiny real-data datasets written into a test folder, in all three source kinds.

Every image is a solid colour, so a test can tell which sample it got (and whether source and target were
swapped) from one pixel. Also used by tests/train/test_streaming.py.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image


@dataclass(frozen=True)
class Pair:
    size: tuple[int, int]  # (width, height)
    colour: tuple[int, int, int]
    caption: str


@dataclass(frozen=True)
class Triplet:
    size: tuple[int, int]
    source: tuple[int, int, int]
    target: tuple[int, int, int]
    instruction: str


PAIRS = (Pair((40, 40), (255, 0, 0), "a red square"), Pair((40, 40), (0, 0, 255), "a blue square"),
         Pair((120, 68), (0, 255, 0), "a wide green field"), Pair((64, 64), (255, 255, 0), "a yellow square"))
TRIPLETS = (Triplet((48, 48), (255, 0, 0), (0, 0, 255), "make it blue"),
            Triplet((48, 48), (0, 255, 0), (255, 255, 255), "make it white"),
            Triplet((96, 54), (0, 0, 0), (255, 0, 255), "make it magenta"))


def solid(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", size, colour)


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    solid(size, colour).save(buf, format="PNG")
    return buf.getvalue()


def jpg(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    solid(size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_folder_pairs(root: Path, pairs=PAIRS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, p in enumerate(pairs):
        (root / f"{i}.png").write_bytes(png(p.size, p.colour))
        rows.append({"image": f"{i}.png", "caption": p.caption})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_folder_triplets(root: Path, triplets=TRIPLETS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, t in enumerate(triplets):
        (root / f"{i}_src.png").write_bytes(png(t.size, t.source))
        (root / f"{i}_tgt.png").write_bytes(png(t.size, t.target))
        rows.append({"source": f"{i}_src.png", "target": f"{i}_tgt.png", "instruction": t.instruction})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_wds_pairs(path: Path, pairs=PAIRS, image_key: str = "png", text_key: str = "txt") -> Path:
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for i, p in enumerate(pairs):
            sink.write({"__key__": f"s{i:04d}", image_key: png(p.size, p.colour), text_key: p.caption})
    return path


def write_wds_triplets(path: Path, triplets=TRIPLETS) -> Path:
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for i, t in enumerate(triplets):
            sink.write({"__key__": f"e{i:04d}", "src.png": png(t.size, t.source), "tgt.png": png(t.size, t.target),
                        "txt": t.instruction})
    return path


def write_hf_pairs(path: Path, pairs=PAIRS, image_column: str = "image", text_column: str = "caption") -> Path:
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({image_column: [solid(p.size, p.colour) for p in pairs],
                                     text_column: [p.caption for p in pairs]},
                                    features=datasets.Features({image_column: datasets.Image(),
                                                                text_column: datasets.Value("string")}))
    ds.save_to_disk(str(path))
    return path


def write_hf_triplets(path: Path, triplets=TRIPLETS) -> Path:
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({"source": [png(t.size, t.source) for t in triplets],
                                     "target": [png(t.size, t.target) for t in triplets],
                                     "instruction": [t.instruction for t in triplets]})
    datasets.DatasetDict({"train": ds}).save_to_disk(str(path))
    return path
