"""gist.files: atomic writes that leave nothing behind, locks that are removed."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from gist.files import atomic_write, exclusive_lock, lock_holder


def test_atomic_write_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible before the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_atomic_write_keeps_the_old_content_and_removes_the_temporary(tmp_path, error):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(type(error)), atomic_write(target, durable=True) as tmp:
        tmp.write_text("half")
        raise error
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_lock_file_is_removed_after_use(tmp_path):
    lock = tmp_path / "x.lock"
    with exclusive_lock(lock):
        assert lock.exists()
    assert not lock.exists()
    with exclusive_lock(lock):  # and can be taken again
        pass
    assert list(tmp_path.iterdir()) == []


def test_lock_holder_names_who_holds_a_lock_without_taking_or_creating_it(tmp_path):
    lock = tmp_path / "x.lock"
    assert lock_holder(lock) is None and not lock.exists()
    with exclusive_lock(lock, wait=False, holder="pid 7 on here"):
        assert lock_holder(lock) == "pid 7 on here"
    assert lock_holder(lock) is None and not lock.exists()
    lock.write_text("stale")  # a file nobody locks: no holder, and the lock can still be taken
    assert lock_holder(lock) is None
    with exclusive_lock(lock, wait=False):
        pass


def test_unwritable_lock_is_an_error_unless_optional(tmp_path):
    missing = tmp_path / "no-such-folder" / "x.lock"
    with pytest.raises(OSError), exclusive_lock(missing):
        pass
    ran = []
    with exclusive_lock(missing, required=False):
        ran.append(True)
    assert ran == [True]


def _hold(lock: str, log: str, name: str, hold: float) -> None:
    with exclusive_lock(Path(lock)):
        with open(log, "a") as fh:
            fh.write(f"{name} in\n")
        time.sleep(hold)
        with open(log, "a") as fh:
            fh.write(f"{name} out\n")


def test_lock_excludes_other_processes_even_as_its_file_is_deleted(tmp_path):
    """Four processes contend; deleting the file on release must never let two in at once."""
    lock, log = tmp_path / "x.lock", tmp_path / "log"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hold, args=(str(lock), str(log), f"p{i}", 0.2)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = log.read_text().split()
    events = list(zip(lines[0::2], lines[1::2]))
    assert len(events) == 8
    for enter, leave in zip(events[0::2], events[1::2]):  # strictly nested: in, out, in, out, ...
        assert enter[1] == "in" and leave[1] == "out" and enter[0] == leave[0]
    assert not lock.exists() and os.listdir(tmp_path) == ["log"]


def test_private_tempdir_collects_and_removes_what_is_written_there(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    from gist.files import private_tempdir

    with private_tempdir() as inner:
        assert inner.parent == tmp_path and tempfile.gettempdir() == str(inner)
        tempfile.NamedTemporaryFile(delete=False).close()  # what PyG does with its generated modules
        child = subprocess.run(
            [sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"], capture_output=True, text=True
        )
        assert child.stdout.strip() == str(inner)  # and processes started meanwhile
    assert list(tmp_path.iterdir()) == []
    assert tempfile.tempdir == str(tmp_path) and os.environ["TMPDIR"] == str(tmp_path)
