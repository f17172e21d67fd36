"""Shared fixtures: fixed seeds and the committed real-image fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
