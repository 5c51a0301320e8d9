"""Files that are never seen half-written, and locks that leave nothing behind.

* :func:`atomic_write`: write into a temporary file beside the target and move
  it into place with :func:`os.replace`; whatever goes wrong, the target keeps
  its old content and the temporary file is removed.
* :func:`exclusive_lock`: an ``fcntl.flock`` on a lock file that is deleted
  when the lock is released (local filesystems; on network filesystems run
  the step that needs the lock once, before starting the workers);
  :func:`lock_holder` says who holds one, without taking it.
* :func:`private_tempdir`: a temporary folder for everything a command and
  the processes it starts write there, removed when the command ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import GistError

__all__ = ["LockHeld", "OutputError", "atomic_write", "exclusive_lock", "fsync_dir", "private_tempdir", "write_output"]


@contextlib.contextmanager
def atomic_write(path: Path | str, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an
    error, the temporary file replaces ``path`` (``durable``: flushed to disk
    first, and the folder entry too). On an error (a full disk, Ctrl-C) the
    temporary file is removed and ``path`` is untouched.

    ``with atomic_write(p) as tmp: torch.save(obj, tmp)``
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


class OutputError(GistError):
    """An output of a running command (a checkpoint, the log, the model) that
    could not be written: a full disk, a folder gone. The file that was there
    before is kept (:func:`write_output`)."""

    exit_status = 1


def write_output(flag: str, path: Path | str, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, moved into place
    (:func:`atomic_write`); an ``OSError`` (or a ``RuntimeError``, what
    ``torch.save`` raises when the disk fills) becomes one
    :class:`OutputError` naming ``flag``, the path and the reason."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            write(tmp)
    except (OSError, RuntimeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        kept = "the file written there before is kept" if path.exists() else "nothing was written there"
        raise OutputError(f"{flag} {path} could not be written ({reason}); {kept}") from exc
    return path


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LockHeld(GistError):
    """Another process holds a lock that :func:`exclusive_lock` was told not to wait for."""

    def __init__(self, lock_path: Path, holder: str) -> None:
        self.lock_path, self.holder = lock_path, holder
        super().__init__(f"{lock_path} is held by {holder or 'another process'}")


def lock_holder(lock_path: Path | str) -> str | None:
    """What the process holding :func:`exclusive_lock` on ``lock_path`` wrote
    as its holder ("" if nothing), or ``None`` where no process holds it. Never
    creates the file; it probes with a shared lock released at once."""
    try:
        handle = open(lock_path)
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip()
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


@contextlib.contextmanager
def exclusive_lock(lock_path: Path | str, required: bool = True, wait: bool = True, holder: str = "") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` for the block, then delete it.

    Deleting a lock file races with a process that opened it just before:
    that process would lock an orphaned file. So after locking, the holder
    checks that the path still names the file it locked, and starts again if
    not. ``required=False``: where the lock file cannot be created (a
    read-only folder), run the block without a lock. ``wait=False``: if
    another process holds it, raise :class:`LockHeld` with what that process
    wrote as ``holder`` (say its pid and command) instead of waiting.
    """
    lock_path = Path(lock_path)
    while True:
        try:
            handle = open(lock_path, "a+")
        except OSError:
            if required:
                raise
            yield
            return
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                raise LockHeld(lock_path, handle.read().strip()) from None
            try:
                current = os.stat(lock_path)
            except FileNotFoundError:
                continue  # the previous holder deleted it after we opened it
            if not os.path.samestat(current, os.fstat(handle.fileno())):
                continue
            if holder:
                handle.truncate(0)
                handle.write(holder)
                handle.flush()
            try:
                yield
            finally:
                lock_path.unlink(missing_ok=True)
                fcntl.flock(handle, fcntl.LOCK_UN)
            return


@contextlib.contextmanager
def private_tempdir(prefix: str = "gist-") -> Iterator[Path]:
    """Point ``tempfile`` and ``TMPDIR`` (so also the processes started
    meanwhile) at a new folder inside the current temporary folder, and
    remove it afterwards. PyG writes a Python module per message-passing
    layer class into the temporary folder and never deletes it; with this,
    a ``gist`` command leaves nothing there (unless it is killed)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    saved_env, saved_module = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(path)
    try:
        yield path
    finally:
        tempfile.tempdir = saved_module
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(path, ignore_errors=True)
