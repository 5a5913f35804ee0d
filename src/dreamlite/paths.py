"""Where shipped artefacts live (one place; the repository's ``checkpoints/`` folder holds the shipped model), and how
a model folder is written so that it is either complete or absent (``atomic_folder``)."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = REPO_ROOT / "checkpoints"
SHIPPED_MODEL = CHECKPOINTS / "dreamlite-tiny-shapes"


def default_model() -> Path:
    """The shipped model folder; a clear error when it is missing (e.g. a wheel install without the repo)."""
    if not (SHIPPED_MODEL / "model_index.json").is_file():
        raise FileNotFoundError(f"the shipped model is not at {SHIPPED_MODEL}; pass --model PATH "
                                "(train one with `dreamlite train run --recipe shapes-tiny`)")
    return SHIPPED_MODEL


@contextmanager
def atomic_folder(dst: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst`` to write into; on success it is renamed to ``dst``, on any error it
    is removed, so ``dst`` is either complete or absent. An existing non-empty ``dst`` is refused up front."""
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} exists and is not empty; refusing to overwrite")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            dst.rmdir()
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
