"""Where dataset files live, and loading them without surprises.

A loader describes its files (:class:`DatasetFiles`) and hands :func:`fetch`
the call that builds the PyG/OGB dataset. If the files are present, that call
runs under a lock beside the dataset folder (so processes started together
process a fresh copy once); present files that do not load raise
:class:`DatasetCorruptError`, naming the file and the fix. If they are
missing, one download is tried (unless ``$GIST_OFFLINE`` is set), with a
per-operation socket timeout; any failure raises :class:`DatasetNotFoundError`
naming every expected file, and what the attempt created is removed again.

While a loader runs, ``input()`` raises instead of reading stdin, and
``torch.load`` loads weights only, whatever its caller asks (:func:`weights_only_loads`:
PyG would otherwise retry with full unpickling), with the PyG data classes of
processed files allow-listed (:func:`pyg_safe_globals`).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import shutil
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, MissingFileError
from ..files import exclusive_lock

__all__ = [
    "DEFAULT_ROOT_ENV",
    "OFFLINE_ENV",
    "DatasetCorruptError",
    "DatasetFiles",
    "DatasetNotFoundError",
    "default_root",
    "fetch",
    "offline",
]

DEFAULT_ROOT_ENV = "GIST_DATA_ROOT"
OFFLINE_ENV = "GIST_OFFLINE"
_DOWNLOAD_SOCKET_TIMEOUT = 20.0  # seconds per socket operation while downloading
_DNS_PROBE_TIMEOUT = 5.0  # seconds allowed to resolve the download host


def default_root() -> Path:
    """Data root: ``$GIST_DATA_ROOT`` if set (and non-empty), else ``Path("datasets")``."""
    env = os.environ.get(DEFAULT_ROOT_ENV, "")
    return Path(env).expanduser() if env else Path("datasets")


def offline() -> bool:
    """Whether ``$GIST_OFFLINE`` forbids downloads (``1``, ``true``, ``yes`` or ``on``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class DatasetNotFoundError(MissingFileError):
    """Dataset files are missing and could not be downloaded.

    Attributes: ``dataset`` (registry name), ``folder`` (where files belong),
    ``expected_files`` (full paths of every file the loader needs).
    """

    def __init__(
        self,
        message: str,
        dataset: str = "",
        folder: Path | None = None,
        expected_files: list[Path] | None = None,
    ) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.folder = folder
        self.expected_files = list(expected_files or [])

    def __str__(self) -> str:  # FileNotFoundError's default would add errno noise
        return str(self.args[0])


class DatasetCorruptError(ConfigError):
    """A dataset file is present but cannot be read (truncated or damaged).

    Attributes: ``dataset`` (registry name), ``path`` (the file, or the folder
    when the loader does not say which of its files failed)."""

    def __init__(self, message: str, dataset: str, path: Path) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.path = path


# --------------------------------------------------------------------------- what a loader needs


@dataclass
class DatasetFiles:
    """The files of one dataset, as its loader reads them."""

    name: str  # registry name
    folder: Path  # dataset folder (contains raw/ ...)
    raw: list[Path]  # every file the loader needs to process from scratch
    probe: list[Path]  # files the loader itself checks before deciding to download
    processed: Path  # processed file written by the loader
    always: list[Path]  # needed even when processed exists (OGB splits)
    url: str  # download source (for the DNS probe)
    check_raw: Callable[[Path], None] | None = None  # reads one raw file, raising if it is damaged

    def find_corrupt(self) -> Path | None:
        """The first raw file that ``check_raw`` cannot read (``None`` if
        there is no checker, or each file reads)."""
        if self.check_raw is None:
            return self.raw[0] if len(self.raw) == 1 else None
        for path in self.raw:
            try:
                self.check_raw(path)
            except Exception:  # noqa: BLE001 - any failure marks the file
                return path
        return None

    @property
    def expected(self) -> list[Path]:
        """Every file a user must provide: the raw files, then the ones needed always."""
        return self.raw + [p for p in self.always if p not in self.raw]

    def ready(self) -> bool:
        """Whether the loader can run without a download."""
        if not all(p.exists() for p in self.always):
            return False
        if all(p.exists() for p in self.raw):
            return True
        return self.processed.exists() and all(p.exists() for p in self.probe)


def not_found(files: DatasetFiles, reason: str) -> DatasetNotFoundError:
    """The error for missing ``files``, listing each and where to put it."""
    lines = [
        f"dataset {files.name!r} not found under {files.folder} ({reason}).",
        f"Put these files into {files.folder} (keeping the sub-folders shown):",
    ]
    lines += [f"  {p}" for p in files.expected]
    lines.append(
        f"Or pass root=... / set ${DEFAULT_ROOT_ENV} to a folder that has them in the same "
        f"layout (e.g. a copy of a prepared data folder)."
    )
    return DatasetNotFoundError("\n".join(lines), files.name, files.folder, files.expected)


def fetch(
    files: DatasetFiles,
    construct: Callable[[], Any],
    download_ctx: Callable[[], contextlib.AbstractContextManager] | None = None,
    extra_paths: list[Path] = (),
) -> Any:
    """Run ``construct()`` if ``files`` are present (under :func:`dataset_lock`),
    else try one guarded download (``download_ctx`` wraps it; ``extra_paths``:
    what it may create outside the dataset folder, removed on failure)."""
    if files.ready():
        with dataset_lock(files.folder):
            return _construct_present(files, construct)
    return _download(files, construct, download_ctx, extra_paths)


def dataset_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``.<folder>.lock`` beside the dataset folder, so
    that one process at a time processes or reads it (the file is removed
    afterwards); no lock where that file cannot be created (a read-only data
    root already holds its processed files)."""
    return exclusive_lock(folder.with_name(f".{folder.name}.lock"), required=False)


def pyg_safe_globals() -> list[Any]:
    """PyG classes pickled in processed files (PyG's ``data.pt``, ogb's
    ``geometric_data_processed.pt``); allow-listed only while a loader runs so
    ``torch.load`` keeps ``weights_only=True`` (found by loading such files)."""
    from torch_geometric.data import Data, HeteroData
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import EdgeStorage, GlobalStorage, NodeStorage

    return [Data, HeteroData, DataEdgeAttr, DataTensorAttr, GlobalStorage, NodeStorage, EdgeStorage]


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` in the block loads weights only, whatever its
    caller asks: PyG's loader retries a failed weights-only load of a
    processed file with full unpickling, which would run whatever code a
    crafted file holds. Through torch's own switch
    (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), its opposite unset meanwhile."""
    keys = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ[keys[0]] = "1"
    os.environ.pop(keys[1], None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- present files


def _corrupt(files: DatasetFiles, exc: BaseException, had_processed: bool, which: Path | None) -> DatasetCorruptError:
    """The error for present files that failed to load (see :func:`fetch`)."""
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    reason = reason.splitlines()[0]
    if had_processed:
        path, fix = files.processed, f"delete {files.processed.parent} (it is rebuilt from raw/)"
    elif which is not None:
        path, fix = which, f"copy {which.name} again from a complete copy of the dataset"
    else:
        path, fix = files.folder / "raw", f"copy the files of {files.folder / 'raw'} again"
    return DatasetCorruptError(
        f"dataset {files.name!r}: {path} is corrupt or incomplete ({reason}); {fix}", files.name, path
    )


def _construct_present(files: DatasetFiles, construct: Callable[[], Any]) -> Any:
    """``construct()`` over present files; :class:`DatasetCorruptError` if they
    do not load (and a processed folder that this attempt created is removed)."""
    had_processed = files.processed.exists()
    processed_dir = files.processed.parent
    had_processed_dir = processed_dir.exists()
    try:
        with _no_stdin(), weights_only_loads(), torch.serialization.safe_globals(pyg_safe_globals()):
            return construct()
    except DatasetNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - present files that do not load
        if not had_processed_dir:
            shutil.rmtree(processed_dir, ignore_errors=True)
        which = None if had_processed else files.find_corrupt()
        raise _corrupt(files, exc, had_processed, which) from exc


# --------------------------------------------------------------------------- downloads


def _download(
    files: DatasetFiles,
    construct: Callable[[], Any],
    download_ctx: Callable[[], contextlib.AbstractContextManager] | None,
    extra_paths: list[Path],
) -> Any:
    """One guarded download, then ``construct()``; anything it left behind is removed on failure."""
    if offline():
        raise not_found(files, f"{OFFLINE_ENV} is set, so no download was tried")
    if not _host_resolves(files.url):
        raise not_found(files, f"download failed: cannot resolve {files.url} (no network?)")
    watch = [files.folder, *extra_paths]
    before = _snapshot(watch)
    ancestors = []
    p = files.folder
    while not p.exists():
        ancestors.append(p)
        if p.parent == p:
            break
        p = p.parent
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_no_stdin())
            stack.enter_context(weights_only_loads())
            stack.enter_context(torch.serialization.safe_globals(pyg_safe_globals()))
            stack.enter_context(_socket_timeout(float(_DOWNLOAD_SOCKET_TIMEOUT)))
            if download_ctx is not None:
                stack.enter_context(download_ctx())
            result = construct()
    except DatasetNotFoundError:
        _cleanup(watch, before, ancestors)
        raise
    except BaseException as exc:  # noqa: BLE001 - any failure means "not available"
        _cleanup(watch, before, ancestors)
        if isinstance(exc, KeyboardInterrupt):
            raise
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise not_found(files, f"download failed: {reason}") from exc
    if not files.ready():
        raise not_found(files, "download finished but files are still missing")
    return result


def _host_resolves(url: str, timeout: float = _DNS_PROBE_TIMEOUT) -> bool:
    """True if ``url``'s host resolves within ``timeout`` s (True if a proxy is set)."""
    if any(os.environ.get(k) for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")):
        return True
    host = urllib.parse.urlparse(url).hostname
    if not host:
        return True
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _snapshot(paths: list[Path]) -> set[Path]:
    seen: set[Path] = set()
    for p in paths:
        if p.is_dir():
            seen.add(p)
            for dirpath, dirnames, filenames in os.walk(p):
                seen.update(Path(dirpath) / f for f in dirnames + filenames)
        elif p.exists():
            seen.add(p)
    return seen


def _cleanup(paths: list[Path], before: set[Path], ancestors: list[Path]) -> None:
    """Remove what a failed attempt created: new files, then new empty folders."""
    after = _snapshot(paths)
    new = sorted(after - before, key=lambda p: len(p.parts), reverse=True)
    for p in new:
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                p.rmdir()  # only if empty
            else:
                p.unlink()
    for p in ancestors:  # deepest first; created by this attempt
        with contextlib.suppress(OSError):
            p.rmdir()


@contextlib.contextmanager
def _no_stdin() -> Iterator[None]:
    """Make ``input()`` raise instead of blocking on (or reading) stdin."""

    def refuse(prompt: object = "") -> str:
        raise RuntimeError(f"gist.data refuses to read from stdin (prompt was: {prompt!r})")

    saved = builtins.input
    builtins.input = refuse
    try:
        yield
    finally:
        builtins.input = saved


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Per-operation network timeout for urllib (socket default) and fsspec/aiohttp."""
    saved = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    conf = saved_conf = None
    try:  # PyG's fs.cp (Planetoid) downloads through fsspec's aiohttp client
        import aiohttp
        import fsspec.config

        conf = fsspec.config.conf
        saved_conf = {p: conf.get(p) for p in ("http", "https")}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
        for p in ("http", "https"):
            entry = dict(conf.get(p) or {})
            entry["client_kwargs"] = {**entry.get("client_kwargs", {}), "timeout": timeout}
            conf[p] = entry
    except ImportError:  # no fsspec/aiohttp: downloads go through urllib, bounded by the socket timeout
        conf = saved_conf = None
    try:
        yield
    finally:
        socket.setdefaulttimeout(saved)
        if conf is not None and saved_conf is not None:
            for p, v in saved_conf.items():
                if v is None:
                    conf.pop(p, None)
                else:
                    conf[p] = v
