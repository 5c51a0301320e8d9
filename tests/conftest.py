"""Shared fixtures (a writable copy of the real datasets in ../shared/data)
and the suite's own hygiene: it must leave no process and no temporary file
behind."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see gist/__init__.py

LEFTOVER_GRACE_S = 10.0
"""How long child processes get to exit once the last test is done."""
OWN_TEMP_PREFIXES = ("pytest-of-", "pymp-", "torch_")
"""Temporary entries that are not the tests' to clean: pytest's own base
folder (it keeps the last three runs) and those Python's multiprocessing and
torch remove when this process exits."""
PYG_GENERATED = re.compile(r"_(propagate|edge_updater)_\w+\.py$")
"""The modules PyG writes for each message-passing class, once per process,
and keeps (torch_geometric.template)."""
_TEMP_BEFORE = pytest.StashKey[set]()


def shared_data_dir() -> Path:
    """``$GIST_SHARED_DATA``, else ``shared/data`` beside the checkout."""
    env = os.environ.get("GIST_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def real_data_root(tmp_path_factory):
    """Return ``copy(folder)``: copies ``shared/data/<folder>`` into one
    session-wide temporary data root (loaders write ``processed/`` next to
    ``raw/``, and the shared folder must stay untouched) and returns the root.
    Skips when the shared data is absent. The copies are deleted at the end
    of the session."""
    root = tmp_path_factory.mktemp("data")

    def copy(folder: str) -> Path:
        src = shared_data_dir() / folder
        if not src.is_dir():
            pytest.skip(f"shared data is absent ({src} not found; set GIST_SHARED_DATA)")
        dst = root / folder
        if not dst.exists():
            shutil.copytree(src, dst)
        return root

    yield copy
    shutil.rmtree(root, ignore_errors=True)


def _temp_entries() -> set[str]:
    return {
        name
        for name in os.listdir(tempfile.gettempdir())
        if not name.startswith(OWN_TEMP_PREFIXES) and not PYG_GENERATED.search(name)
    }


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_TEMP_BEFORE] = _temp_entries()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test left a child process or a temporary file
    behind (the processes are killed, the files listed)."""
    problems = []
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    children = [c for c in psutil.Process().children(recursive=True) if _alive(c)]
    while children and time.monotonic() < deadline:
        time.sleep(0.5)
        children = [c for c in children if _alive(c)]
    for child in children:
        try:
            problems.append(f"child process {child.pid} still running: {' '.join(child.cmdline())[:200]}")
            child.kill()
        except psutil.Error:
            continue
    before = session.config.stash.get(_TEMP_BEFORE, None)
    if before is not None:
        for name in sorted(_temp_entries() - before):
            problems.append(f"left in the temporary folder: {Path(tempfile.gettempdir(), name)}")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for line in problems:
            if reporter is not None:
                reporter.write_line(f"LEFTOVER: {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
