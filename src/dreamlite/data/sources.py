"""Real training data: image-caption pairs and (source, instruction, target) triplets from three kinds of source.

One frozen ``DataSourceConfig`` describes a source; ``DataConfig`` (a small JSON file) lists the sources of a run
plus its bucket settings. Key / field / column names are configurable; the defaults are:

============  ===========================================  =============================================
kind          pairs (task "t2i")                           triplets (task "edit")
============  ===========================================  =============================================
webdataset    image ``jpg;jpeg;png;webp``, text ``txt``    ``src.png;src.jpg;...``, ``tgt.png;...``, ``txt``
folder        ``metadata.jsonl`` rows                      ``{"source": .., "target": .., "instruction": ..}``
              ``{"image": "a.png", "caption": ".."}``
hf            columns ``image``, ``caption``               columns ``source``, ``target``, ``instruction``
============  ===========================================  =============================================

A key with ``;`` lists alternatives, the first present wins (WebDataset extensions: sample ``k.jpg`` has key
``jpg``). Folder paths are relative to the folder. ``hf`` is a ``datasets`` dataset saved with ``save_to_disk``
(a ``DatasetDict`` needs ``split``, default ``train``); image columns may be ``Image`` features, paths or bytes.
Optional ``width``/``height`` fields (folder rows, hf columns) give the target size without opening the image.

Bad input, by design:
- a malformed ``metadata.jsonl`` line (not JSON, not an object, a missing or non-string field) is an error that
  names ``file:line`` - the metadata is authored, fix it;
- a missing hf column or an unknown split is an error listing what exists;
- a single unreadable or missing image, or a WebDataset sample lacking a key, is *skipped* with a counted warning
  (``SkipLog``): large crawled datasets always hold a few, and one must not stop a long run.

Folder and hf sources are *indexed* (random access, sizes known up front: exact resume); WebDataset shards are
*streamed* in a shard order drawn from the training generator (resume restarts the stream, see streaming.py).
"""

from __future__ import annotations

import glob
import io
import json
import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
from PIL import Image, UnidentifiedImageError

from dreamlite.imageio import MAX_PIXELS, ImageError, to_rgb

SourceKind = Literal["webdataset", "folder", "hf"]
SourceTask = Literal["t2i", "edit"]
KINDS: tuple[str, ...] = ("webdataset", "folder", "hf")
SOURCE_TASKS: tuple[str, ...] = ("t2i", "edit")
_WDS_IMAGE = "jpg;jpeg;png;webp"
_DEFAULT_KEYS: Mapping[str, Mapping[str, str]] = {
    "webdataset": {"image_key": _WDS_IMAGE, "text_key": "txt",
                   "source_key": ";".join(f"src.{e}" for e in _WDS_IMAGE.split(";")),
                   "target_key": ";".join(f"tgt.{e}" for e in _WDS_IMAGE.split(";"))},
    "folder": {"image_key": "image", "source_key": "source", "target_key": "target"},
    "hf": {"image_key": "image", "source_key": "source", "target_key": "target"},
}
_DEFAULT_TEXT = {"t2i": "caption", "edit": "instruction"}


# ------------------------------------------------------------------------------------------------ configs
@dataclass(frozen=True)
class DataSourceConfig:
    """One source. ``weight`` mixes sources of one task; ``pool`` ("main" / "sft") picks the stages using it;
    ``name`` (default: the path's last part) is what ``DataMix.tag_weights`` / ``edit_weights`` refer to."""

    kind: SourceKind
    task: SourceTask
    path: str  # shards: brace pattern / glob / "a.tar::b.tar"; folder; saved dataset folder
    name: str = ""
    weight: float = 1.0
    pool: str = "main"
    image_key: str | None = None  # None = the kind's default (module docstring)
    text_key: str | None = None
    source_key: str | None = None
    target_key: str | None = None
    split: str | None = None  # hf DatasetDict split (None: "train", or the only split)
    shuffle_buffer: int = 1000  # webdataset: samples held to decorrelate a sequential stream

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"data source kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.task not in SOURCE_TASKS:
            raise ValueError(f"data source task must be 't2i' or 'edit', got {self.task!r}")
        if not self.path:
            raise ValueError("a data source needs a 'path'")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"source {self.path}: weight must be > 0, got {self.weight}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"source {self.path}: shuffle_buffer must be >= 1, got {self.shuffle_buffer}")
        if not self.name:
            object.__setattr__(self, "name", Path(self.path.split("::")[0].rstrip("/")).name or self.path)

    def key(self, which: str) -> str:
        """The configured key for ``which`` ("image_key", "text_key", "source_key", "target_key")."""
        value = getattr(self, which)
        if value:
            return value
        default = _DEFAULT_KEYS[self.kind].get(which)
        return default if default else _DEFAULT_TEXT[self.task] if which == "text_key" else ""

    @property
    def image_field(self) -> str:
        """The field holding the image that is trained on (the target of a triplet)."""
        return self.key("image_key" if self.task == "t2i" else "target_key")


@dataclass(frozen=True)
class DataConfig:
    """A run's data: the sources and the bucket settings (``dreamlite.data.buckets``). ``bucket_scale`` None
    means the recipe's resolution / 1024 (1.0 for a 1024-px recipe); ``bucket_multiple`` None means what the
    model needs (VAE factor x U-Net downsampling: 32 px for the 0.39B network with TAESDXL)."""

    sources: tuple[DataSourceConfig, ...]
    buckets: str | tuple[tuple[int, int], ...] = "v54"
    bucket_scale: float | None = None
    bucket_multiple: int | None = None
    decode_workers: int = 4  # threads decoding/resizing one batch's images (PIL releases the GIL)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("a data config needs at least one source")
        if isinstance(self.buckets, list):
            object.__setattr__(self, "buckets", tuple(tuple(b) for b in self.buckets))
        if self.decode_workers < 1:
            raise ValueError(f"decode_workers must be >= 1, got {self.decode_workers}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: Path | None = None) -> "DataConfig":
        """From JSON data; relative source paths are taken relative to ``base`` (the JSON file's folder)."""
        _check_keys(cls, d, "data config")
        if not isinstance(d.get("sources"), list):
            raise ValueError("data config: 'sources' must be a list of source objects")
        sources = []
        for i, s in enumerate(d["sources"]):
            if not isinstance(s, dict):
                raise ValueError(f"data config: sources[{i}] must be an object, got {s!r}")
            _check_keys(DataSourceConfig, s, f"data config sources[{i}]")
            s = dict(s)
            if base is not None and "path" in s and "://" not in str(s["path"]):
                s["path"] = "::".join(str(base / p) for p in str(s["path"]).split("::"))
            try:
                sources.append(DataSourceConfig(**s))
            except TypeError as e:
                raise ValueError(f"data config sources[{i}]: {e}") from None
        return cls(**{**d, "sources": tuple(sources)})

    @classmethod
    def from_json(cls, path: str | Path) -> "DataConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"data config not found: {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"data config {path} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"data config {path} must hold a JSON object")
        try:
            return cls.from_dict(d, base=path.resolve().parent)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _check_keys(cls: type, d: Mapping[str, Any], what: str) -> None:
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {sorted(unknown)}")


# ------------------------------------------------------------------------------------------------ samples
@dataclass(frozen=True)
class ImageRef:
    """An undecoded image (a file or encoded bytes); ``where`` names it in every error message."""

    where: str
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def _open(self) -> Image.Image:
        if self.path is not None:
            if not self.path.is_file():
                raise ImageError(f"image not found: {self.where}")
            return Image.open(self.path)
        if self.data is None:
            raise ImageError(f"{self.where}: no image data")
        return Image.open(io.BytesIO(self.data))

    def size(self) -> tuple[int, int]:
        """(width, height) from the header only (no pixel decoding)."""
        try:
            with self._open() as im:
                return im.size
        except ImageError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{self.where} is not a readable image: {e}") from None

    def load(self) -> Image.Image:
        """Decode to RGB (alpha on white), refusing decompression bombs."""
        try:
            with self._open() as im:
                if im.size[0] * im.size[1] > MAX_PIXELS:
                    raise ImageError(f"{self.where}: {im.size[0]}x{im.size[1]} exceeds {MAX_PIXELS:,} pixels")
                im.load()
                return to_rgb(im)
        except ImageError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageError(f"{self.where} is not a readable image: {e}") from None


@dataclass(frozen=True)
class RawSample:
    """One training sample before decoding: the image trained on, its text and (edits) the source image."""

    key: str
    text: str
    target: ImageRef
    source: ImageRef | None = None


class SkipLog:
    """Counts a source's skipped bad samples; warns for the first 10, then at every power of ten."""

    def __init__(self, name: str):
        self.name, self.count = name, 0

    def skip(self, where: str, reason: str) -> None:
        self.count += 1
        n = self.count
        if n <= 10 or math.log10(n).is_integer():
            warnings.warn(f"source {self.name!r}: skipped {where}: {reason} ({n} skipped so far)", stacklevel=3)


# ------------------------------------------------------------------------------------------------ indexed
class IndexedSource(ABC):
    """Random access with every sample's target size known (``sizes`` [N, 2] width, height)."""

    config: DataSourceConfig
    skips: SkipLog
    sizes: torch.Tensor

    def __len__(self) -> int:
        return len(self.sizes)

    @abstractmethod
    def get(self, index: int) -> RawSample:
        """Sample ``index`` in [0, len)."""


class FolderSource(IndexedSource):
    """``<folder>/metadata.jsonl``, one JSON object per line; image paths relative to the folder."""

    def __init__(self, config: DataSourceConfig):
        self.config, self.skips = config, SkipLog(config.name)
        self.folder = Path(config.path)
        meta = self.folder / "metadata.jsonl"
        if not meta.is_file():
            raise FileNotFoundError(f"folder source {config.name!r}: no metadata.jsonl in {self.folder}")
        self.samples: list[RawSample] = []
        sizes: list[tuple[int, int]] = []
        for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            sample, size = self._parse(line, f"{meta}:{number}")
            if size is None:
                try:
                    size = sample.target.size()
                except ImageError as e:
                    self.skips.skip(sample.key, str(e))
                    continue
            self.samples.append(sample)
            sizes.append(size)
        if not self.samples:
            raise ValueError(f"folder source {config.name!r} ({meta}) has no usable samples "
                             f"({self.skips.count} skipped)")
        self.sizes = torch.tensor(sizes, dtype=torch.long)

    def _parse(self, line: str, where: str) -> tuple[RawSample, tuple[int, int] | None]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        c = self.config
        names = [c.key("text_key"), c.image_field] + ([c.key("source_key")] if c.task == "edit" else [])
        for name in names:
            if not isinstance(row.get(name), str):
                raise ValueError(f"{where}: field {name!r} must be a string, got {row.get(name)!r} "
                                 f"(fields present: {sorted(row)})")
        ref = lambda name: ImageRef(f"{self.folder / row[name]} ({where})", path=self.folder / row[name])  # noqa
        sample = RawSample(key=where, text=row[c.key("text_key")], target=ref(c.image_field),
                           source=ref(c.key("source_key")) if c.task == "edit" else None)
        w, h = row.get("width"), row.get("height")
        size = (w, h) if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 else None
        return sample, size

    def get(self, index: int) -> RawSample:
        return self.samples[index]


class HFSource(IndexedSource):
    """A ``datasets`` dataset saved on disk (``load_from_disk``); rows with unreadable images are skipped."""

    def __init__(self, config: DataSourceConfig):
        import datasets

        self.config, self.skips = config, SkipLog(config.name)
        self.folder = Path(config.path)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"hf source {config.name!r}: no saved dataset folder at {self.folder}")
        ds = datasets.load_from_disk(str(self.folder))
        if isinstance(ds, datasets.DatasetDict):
            split = config.split or ("train" if "train" in ds or len(ds) != 1 else next(iter(ds)))
            if split not in ds:
                raise ValueError(f"hf source {config.name!r}: no split {split!r}; splits: {sorted(ds)}")
            ds = ds[split]
        c = config
        self.columns = [c.key("text_key"), c.image_field] + ([c.key("source_key")] if c.task == "edit" else [])
        missing = [col for col in self.columns if col not in ds.column_names]
        if missing:
            raise ValueError(f"hf source {config.name!r} ({self.folder}): missing column(s) {missing}; "
                             f"columns: {ds.column_names}")
        for col in self.columns[1:]:  # undecoded bytes: sizes from headers, decoding only when drawn
            if isinstance(ds.features[col], datasets.Image):
                ds = ds.cast_column(col, datasets.Image(decode=False))
        self.ds = ds
        self.rows, self.sizes = self._index()

    def _index(self) -> tuple[torch.Tensor, torch.Tensor]:
        have_size = {"width", "height"} <= set(self.ds.column_names)
        cols = ["width", "height"] if have_size else [self.config.image_field]
        rows, sizes, start = [], [], 0
        for batch in self.ds.select_columns(cols).iter(batch_size=256):
            n = len(batch[cols[0]])
            for j in range(n):
                i = start + j
                try:
                    size = ((int(batch["width"][j]), int(batch["height"][j])) if have_size
                            else self._ref(batch[cols[0]][j], i, cols[0]).size())
                except (ImageError, TypeError, ValueError) as e:
                    self.skips.skip(f"{self.folder} row {i}", str(e))
                    continue
                rows.append(i)
                sizes.append(size)
            start += n
        if not rows:
            raise ValueError(f"hf source {self.config.name!r} ({self.folder}) has no usable rows "
                             f"({self.skips.count} skipped)")
        return torch.tensor(rows, dtype=torch.long), torch.tensor(sizes, dtype=torch.long)

    def _ref(self, value: Any, row: int, column: str) -> ImageRef:
        where = f"{self.folder} row {row} column {column!r}"
        if isinstance(value, dict):  # an Image feature without decoding: {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return ImageRef(where, data=value["bytes"])
            value = value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return ImageRef(where, data=bytes(value))
        if isinstance(value, str) and value:
            p = Path(value)
            return ImageRef(where, path=p if p.is_absolute() else self.folder / p)
        if isinstance(value, Image.Image):
            buf = io.BytesIO()
            value.save(buf, format="PNG")
            return ImageRef(where, data=buf.getvalue())
        raise ValueError(f"{where}: cannot read an image from a {type(value).__name__}")

    def get(self, index: int) -> RawSample:
        row_index = int(self.rows[index])
        row = self.ds[row_index]
        c = self.config
        text = row[c.key("text_key")]
        if not isinstance(text, str):
            raise ValueError(f"{self.folder} row {row_index}: column {c.key('text_key')!r} is not a string")
        source = self._ref(row[c.key("source_key")], row_index, c.key("source_key")) if c.task == "edit" else None
        return RawSample(key=f"{self.folder} row {row_index}", text=text,
                         target=self._ref(row[c.image_field], row_index, c.image_field), source=source)


# ------------------------------------------------------------------------------------------------ streamed
class ShardSource:
    """WebDataset tar shards read sequentially with the ``webdataset`` package."""

    def __init__(self, config: DataSourceConfig):
        import webdataset as wds

        self.config, self.skips = config, SkipLog(config.name)
        urls: list[str] = []
        for part in wds.shardlists.expand_urls(config.path):
            local = "://" not in part and not part.startswith("pipe:")
            urls += sorted(glob.glob(part)) if local and any(ch in part for ch in "*?[") else [part]
        if not urls:
            raise FileNotFoundError(f"webdataset source {config.name!r}: no shards match {config.path}")
        absent = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
        if absent:
            raise FileNotFoundError(f"webdataset source {config.name!r}: shard(s) not found: {absent[:5]}")
        self.urls = urls

    def shards_for(self, rank: int, world_size: int) -> list[str]:
        """This rank's shards: a disjoint slice when there are enough, else all of them."""
        return self.urls[rank::world_size] if len(self.urls) >= world_size else list(self.urls)

    def samples(self, urls: Sequence[str]) -> Iterator[tuple[RawSample, tuple[int, int]]]:
        """Samples of ``urls`` in order, with their target sizes; bad samples and shards are skipped."""
        from webdataset import tariterators

        def handler(e: Exception) -> bool:
            self.skips.skip("a shard", f"{type(e).__name__}: {e}")
            return True  # keep going with the next sample / shard

        for raw in tariterators.tarfile_samples([{"url": u} for u in urls], handler=handler):
            sample = self._convert(raw)
            if sample is None:
                continue
            try:
                yield sample, sample.target.size()
            except ImageError as e:
                self.skips.skip(sample.key, str(e))

    def _convert(self, raw: Mapping[str, Any]) -> RawSample | None:
        c = self.config
        where = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
        found: dict[str, tuple[str, bytes]] = {}
        names = ["text_key", "image_key"] if c.task == "t2i" else ["text_key", "source_key", "target_key"]
        for name in names:
            options = c.key(name).split(";")
            hit = next((k for k in options if raw.get(k) is not None), None)
            if hit is None:
                self.skips.skip(where, f"no {'/'.join(options)} entry (keys: {sorted(k for k in raw if k[:2] != '__')})")
                return None
            found[name] = (hit, raw[hit])
        try:
            text = found["text_key"][1].decode("utf-8").strip()
        except UnicodeDecodeError as e:
            self.skips.skip(where, f"text is not UTF-8 ({e})")
            return None
        ref = lambda name: ImageRef(f"{where}.{found[name][0]}", data=found[name][1])  # noqa: E731
        if c.task == "t2i":
            return RawSample(key=where, text=text, target=ref("image_key"))
        return RawSample(key=where, text=text, target=ref("target_key"), source=ref("source_key"))


def open_source(config: DataSourceConfig) -> IndexedSource | ShardSource:
    if config.kind == "folder":
        return FolderSource(config)
    if config.kind == "hf":
        return HFSource(config)
    return ShardSource(config)
