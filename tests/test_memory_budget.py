"""``benchmarks/memory_budget.py``: cells run under the cap (an out-of-memory
recorded as such and the method not tried wider), a report that answers the
question, a run that resumes where it stopped, and settings a resumed run
cannot change."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _memory  # noqa: E402
import memory_budget  # noqa: E402

pytestmark = pytest.mark.timeout(600)


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--root", str(tmp_path / "data"), "--dataset", "csbm", "--hidden", "8", "16", "--m", "2",
        "--methods", "full", "gist-sharded", "--rounds", "2", "--local-steps", "1",
        "--out", str(tmp_path / "budget.md"), *extra,
    ]  # fmt: skip


def test_the_learning_rate_shrinks_with_the_width():
    assert memory_budget.learning_rate(128, 0.01, 256) == 0.01
    assert memory_budget.learning_rate(1024, 0.01, 256) == pytest.approx(0.0025)


def test_cells_fit_the_report_answers_and_a_second_run_resumes(tmp_path, monkeypatch):
    memory_budget.main(_args(tmp_path))
    stored = json.loads((tmp_path / "budget.json").read_text())
    cells = {(c["hidden"], c["method"]): c for c in stored["cells"]}
    assert set(cells) == {(8, "full"), (16, "full"), (8, "gist-sharded"), (16, "gist-sharded")}
    for c in cells.values():
        assert c["outcome"] == "ok" and 0 < c["best_val"] <= 1 and c["peak"] > stored["bare"]
        assert len(c["curve"]) == 2 and c["s_to_best"] == c["curve"][c["best_round"]][0]
    assert cells[16, "gist-sharded"]["mb_per_round"] > cells[8, "gist-sharded"]["mb_per_round"] > 0
    assert all(0 <= c["others_cpu"] <= 1 for c in cells.values())
    text = (tmp_path / "budget.md").read_text()
    assert "## sage, replicated data, link none" in text
    assert "`gist-sharded`: widest that fits and finished 16" in text and "Most accurate under 2 GB per process" in text

    def no_more(*args, **kwargs):
        raise AssertionError("a cell already done was run again")

    monkeypatch.setattr(memory_budget, "attempt", no_more)
    memory_budget.main(_args(tmp_path))  # every cell is in the JSON: nothing runs
    assert (tmp_path / "budget.md").read_text() == text
    memory_budget.main(_args(tmp_path, "--retabulate"))
    assert (tmp_path / "budget.md").read_text() == text
    with pytest.raises(SystemExit):
        memory_budget.main(_args(tmp_path, "--rounds", "3"))  # cells made with --rounds 2


def test_over_the_cap_is_an_out_of_memory_and_wider_is_not_tried(tmp_path):
    memory_budget.main(_args(tmp_path, "--budget-gb", "0.1"))
    cells = {(c["hidden"], c["method"]): c for c in json.loads((tmp_path / "budget.json").read_text())["cells"]}
    assert cells[8, "full"]["outcome"].startswith("over budget")
    assert cells[16, "full"]["outcome"] == "not tried (over budget at 8)"
    text = (tmp_path / "budget.md").read_text()
    assert "No method fit the cap at any width tried." in text


def test_an_attempt_leaves_no_process_behind_even_one_its_parent_left(tmp_path):
    """``gist train``'s ranks run in process groups of their own: an attempt
    watches and ends the whole session, or a rank left behind would hold the
    output pipe open (and its memory) after the launcher is gone."""
    child = "import time; time.sleep(120)"
    parent = (
        "import os, subprocess, sys; "
        f"p = subprocess.Popen([sys.executable, '-c', {child!r}], preexec_fn=os.setpgrp); print(p.pid)"
    )
    start = time.perf_counter()
    result = _memory.attempt([sys.executable, "-c", parent], 4e9, 60)
    assert result["outcome"] == "ok" and time.perf_counter() - start < 30
    orphan = int(result["tail"].split()[-1])
    time.sleep(0.5)
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE


def test_a_process_in_a_session_of_its_own_is_watched_too():
    """With ``--bandwidth`` the ranks run in a network namespace, started in a
    session of their own: their memory counts against the cap all the same."""
    child = "import time; block = bytearray(400_000_000); time.sleep(30)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], start_new_session=True)"
    start = time.perf_counter()
    result = _memory.attempt([sys.executable, "-c", parent], 0.2e9, 60)
    assert result["outcome"].startswith("over budget") and time.perf_counter() - start < 20
