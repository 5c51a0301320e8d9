"""Every committed result is still what the code makes of its logs: each
results folder written by ``gist sweep`` re-tabulates byte for byte."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from gist.harness.sweep import CONFIG_COPY, sweep_in_progress
from gist.harness.tables import tabulate

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p.parent for p in (REPO / "results").rglob(CONFIG_COPY))


def test_there_are_committed_results():
    assert len(COMMITTED) >= 6


@pytest.mark.parametrize("folder", COMMITTED, ids=[str(p.relative_to(REPO / "results")) for p in COMMITTED])
def test_committed_results_retabulate_byte_for_byte(folder, tmp_path):
    holder = sweep_in_progress(folder)
    if holder is not None:  # never in CI: a fresh clone has no sweep running
        pytest.skip(f"a gist sweep is writing {folder.name} ({holder}); its table is checked once the sweep ends")
    table_md = (folder / "table.md").read_text()
    command = re.search(r"^Made by `([^`]+)`", table_md, flags=re.M).group(1)
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.png"))
    text, _ = tabulate(copy, command, plots=False)
    # the table names the folder it was tabulated from only when `gist table` made it
    assert text.replace(str(copy), str(folder.relative_to(REPO))) == table_md
    pd.testing.assert_frame_equal(pd.read_csv(copy / "table.csv"), pd.read_csv(folder / "table.csv"))
