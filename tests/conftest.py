import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
torch.backends.cuda.matmul.allow_tf32 = False

# shared/ sits beside the repository root (../shared), in CI too.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL = SHARED / "reference" / "official_unet"


@pytest.fixture(scope="session")
def official_dir() -> Path:
    assert OFFICIAL.is_dir(), f"reference data missing at {OFFICIAL}"
    return OFFICIAL


@pytest.fixture(autouse=True)
def _autograd_stays_enabled():
    """A library call that leaves autograd disabled breaks every later training test (and users' code): fail at
    the test that did it, not at an innocent one."""
    import torch

    yield
    assert torch.is_grad_enabled(), "this test (or the code it calls) left autograd disabled"
