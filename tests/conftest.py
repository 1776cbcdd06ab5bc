"""Shared pytest setup: fixed thread count, paths to the real Ego4D samples."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_EGO4D = REPO.parent / "shared" / "ego4d"

try:  # keep torch from oversubscribing the 2 CI cores when pytest-xdist runs 2 workers
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def ego4d_samples() -> Path:
    """Folder of the real Ego4D annotation samples (``../shared/ego4d``)."""
    assert SHARED_EGO4D.is_dir(), f"real Ego4D samples not found at {SHARED_EGO4D}"
    return SHARED_EGO4D
