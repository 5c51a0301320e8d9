"""Shared fixtures (a writable copy of the real datasets in ../shared/data)
and the suite's own hygiene: it must leave no process and no temporary file
behind."""

from __future__ import annotations

import multiprocessing.util
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
PYTHON_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
"""Child processes of Python's own that exit with this process."""
NOT_OURS = re.compile(r"^(pytest-of-|torchinductor_|gist-tests-)|_(propagate|edge_updater)_\w+\.py$")
"""Temporary entries that are not the tests' to clean: pytest's base folder,
torch's compile cache, the modules PyG writes for each message-passing
class once per process (torch_geometric.template), and the folder of each
pytest-xdist worker's session (``-n``), which that worker checks itself."""
_PRIVATE_TEMP = pytest.StashKey[tuple]()
_WORKERS_PROBLEMS: list[str] = []
"""With pytest-xdist (``-n``), what each worker's session left behind, as the controller hears it."""


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


@pytest.fixture
def one_thread():
    """One torch thread for the test (sums in the order a 1-thread process uses), restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_python_helper(proc: psutil.Process) -> bool:
    try:
        return any(helper in " ".join(proc.cmdline()) for helper in PYTHON_HELPERS)
    except psutil.Error:
        return True


def pytest_sessionstart(session: pytest.Session) -> None:
    """Give the session (and every process it starts, through ``TMPDIR``) a
    temporary folder of its own, so that what the tests leave is theirs alone."""
    multiprocessing.util.get_temp_dir()  # removed by multiprocessing at exit: keep it outside
    private = tempfile.mkdtemp(prefix="gist-tests-")
    session.config.stash[_PRIVATE_TEMP] = (private, os.environ.get("TMPDIR"))
    os.environ["TMPDIR"] = private
    tempfile.tempdir = private


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """(pytest-xdist's controller) A worker is done: keep what it found left behind."""
    said = getattr(node, "workeroutput", {}).get("gist_leftovers", [])
    _WORKERS_PROBLEMS.extend(f"{node.gateway.id}: {line}" for line in said)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test left a child process (it is killed) or a
    temporary file (listed) behind; the session's temporary folder is removed
    when the run passed, and kept for a look when it did not. A pytest-xdist
    worker checks its own session and hands its findings to the controller,
    which fails the run for them."""
    problems = list(_WORKERS_PROBLEMS)
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    children = [c for c in psutil.Process().children(recursive=True) if _alive(c) and not _is_python_helper(c)]
    while children and time.monotonic() < deadline:
        time.sleep(0.5)
        children = [c for c in children if _alive(c)]
    for child in children:
        try:
            problems.append(f"child process {child.pid} still running: {' '.join(child.cmdline())[:200]}")
            child.kill()
        except psutil.Error:
            continue
    private, old_tmpdir = session.config.stash[_PRIVATE_TEMP]
    for name in sorted(os.listdir(private)):
        if not NOT_OURS.search(name):
            problems.append(f"left in the temporary folder: {Path(private, name)}")
    if old_tmpdir is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old_tmpdir
    tempfile.tempdir = None
    if hasattr(session.config, "workeroutput"):  # an xdist worker: the controller reports
        session.config.workeroutput["gist_leftovers"] = problems
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in problems:
        if reporter is not None:
            reporter.write_line(f"LEFTOVER: {line}", red=True)
    if problems:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if problems or session.exitstatus != pytest.ExitCode.OK:
        if reporter is not None:
            reporter.write_line(f"the session's temporary files are kept in {private}")
    else:
        shutil.rmtree(private, ignore_errors=True)
