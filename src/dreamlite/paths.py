"""Where shipped artefacts live (one place). The repository's ``checkpoints/`` folder holds the shipped model."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = REPO_ROOT / "checkpoints"
SHIPPED_MODEL = CHECKPOINTS / "dreamlite-tiny-shapes"


def default_model() -> Path:
    """The shipped model folder; a clear error when it is missing (e.g. a wheel install without the repo)."""
    if not (SHIPPED_MODEL / "model_index.json").is_file():
        raise FileNotFoundError(f"the shipped model is not at {SHIPPED_MODEL}; pass --model PATH "
                                "(train one with `dreamlite train run --recipe shapes-tiny`)")
    return SHIPPED_MODEL
