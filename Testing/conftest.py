"""Shared fixtures. Tests that read the real data in ../shared/data skip cleanly where it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """../shared/data beside the repository, or $CARDIACAI_SHARED_DATA."""
    override = os.environ.get("CARDIACAI_SHARED_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(f"real data not available at {root} (set CARDIACAI_SHARED_DATA to its folder)")
    return root


@pytest.fixture(scope="session")
def acdc_root(shared_data_dir: Path) -> Path:
    root = shared_data_dir / "acdc" / "training"
    if not root.is_dir():
        pytest.skip(f"ACDC data not available at {root}")
    return root


@pytest.fixture(scope="session")
def emidec_root(shared_data_dir: Path) -> Path:
    root = shared_data_dir / "emidec-png"
    if not root.is_dir():
        pytest.skip(f"EMIDEC data not available at {root}")
    return root
