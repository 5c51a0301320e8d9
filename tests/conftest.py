"""Shared fixtures: a writable copy of the real datasets in ../shared/data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """``$GIST_SHARED_DATA``, else ``shared/data`` beside the checkout."""
    env = os.environ.get("GIST_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def real_data_root(tmp_path_factory):
    """Return ``copy(folder)``: copies ``shared/data/<folder>`` into one
    session-wide temporary data root (loaders write ``processed/`` next to
    ``raw/``, and the shared folder must stay untouched) and returns the root.
    Skips when the shared data is absent."""
    root = tmp_path_factory.mktemp("data")

    def copy(folder: str) -> Path:
        src = shared_data_dir() / folder
        if not src.is_dir():
            pytest.skip(f"shared data is absent ({src} not found; set GIST_SHARED_DATA)")
        dst = root / folder
        if not dst.exists():
            shutil.copytree(src, dst)
        return root

    return copy
