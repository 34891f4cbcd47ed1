"""Test configuration: the tests folder is importable (helpers, reference models)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    """Counts never depend on threads; one thread keeps the suite's timing stable on 2 cores."""
    import torch

    torch.set_num_threads(1)
