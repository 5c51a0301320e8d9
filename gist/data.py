"""Dataset registry: node-classification graphs behind one call, offline-safe.

``load_dataset(name, root=None, seed=0, **kwargs)`` returns a :class:`NodeDataset`
whose ``data`` always has ``x`` (float32 ``[N, F]``), ``edge_index`` (long
``[2, E]``, both directions), ``y`` (long, 1-D ``[N]``) and boolean
``train_mask`` / ``val_mask`` / ``test_mask``.

Registered names:

* ``csbm`` -- synthetic contextual stochastic block model (:func:`make_csbm`);
  needs no files, kwargs go to :func:`make_csbm`. Seeded random 60/20/20 split.
* ``cora``, ``citeseer``, ``pubmed`` -- PyG ``Planetoid(root/"planetoid", ...)``,
  public Planetoid split.
* ``coauthor-cs``, ``coauthor-physics`` -- PyG ``Coauthor(root/"coauthor", ...)``;
  ``amazon-computers``, ``amazon-photo`` -- PyG ``Amazon(root/"amazon", ...)``.
  No split ships with these: a seeded random 60/20/20 per-node split from
  :func:`random_split` ``(N, seed)`` is used.
* ``ogbn-arxiv``, ``ogbn-products`` -- ``ogb.nodeproppred.PygNodePropPredDataset``
  with files under ``root/ogbn_<name>/``; official OGB split. ogbn-arxiv is a
  directed citation graph and is made undirected here (``to_undirected``).

The root layout matches a copy of the shared data folder, so ``root`` can point
at such a copy. The default root is ``$GIST_DATA_ROOT`` or ``./datasets``.

Offline behaviour: before a PyG/OGB loader runs, the expected raw files are
checked. If they are missing, a download is attempted (unless
``GIST_OFFLINE=1``); any failure raises :class:`DatasetNotFoundError` that names
every expected file and the folder to put it in. Files and empty folders that a
failed attempt created are removed again. Console prompts are never answered
from stdin: ``input()`` raises while a loader runs, ogb's "download > 1 GB?"
question is answered *yes* only during a user-requested download, and an OGB
folder without ``RELEASE_v1.txt`` (which would make ogb ask on the console) is
reported as an error instead. ogb's ``torch.load`` of its processed file runs
with weights-only loading kept on, inside ``torch.serialization.safe_globals``
listing the PyG data classes that file contains.

Present files that cannot be read raise :class:`DatasetCorruptError`, naming
the file and what to do (re-copy a raw file, delete ``processed/``). Loading
holds a lock file beside the dataset folder, so processes started together
(``--procs``, torchrun) process a fresh copy once and the others then read it.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import numbers
import os
import shutil
import socket
import threading
import types
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data

from .files import exclusive_lock
from .registry import DATASETS

__all__ = [
    "DEFAULT_ROOT_ENV",
    "OFFLINE_ENV",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "NodeDataset",
    "available_datasets",
    "default_root",
    "load_dataset",
    "make_csbm",
    "random_split",
    "register_dataset",
]

DEFAULT_ROOT_ENV = "GIST_DATA_ROOT"
OFFLINE_ENV = "GIST_OFFLINE"
_DOWNLOAD_SOCKET_TIMEOUT = 20.0  # seconds per socket operation while downloading
_DNS_PROBE_TIMEOUT = 5.0  # seconds allowed to resolve the download host


def default_root() -> Path:
    """Data root: ``$GIST_DATA_ROOT`` if set (and non-empty), else ``Path("datasets")``."""
    env = os.environ.get(DEFAULT_ROOT_ENV, "")
    return Path(env).expanduser() if env else Path("datasets")


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class DatasetNotFoundError(FileNotFoundError):
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


class DatasetCorruptError(ValueError):
    """A dataset file is present but cannot be read (truncated or damaged).

    Attributes: ``dataset`` (registry name), ``path`` (the file, or the folder
    when the loader does not say which of its files failed)."""

    def __init__(self, message: str, dataset: str, path: Path) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.path = path


@dataclass
class NodeDataset:
    """One node-classification graph plus its split and metric.

    ``data``: ``x`` float32 ``[N, F]``, ``edge_index`` long ``[2, E]`` (both
    directions), ``y`` long ``[N]``, ``train_mask``/``val_mask``/``test_mask``
    bool ``[N]``. ``split`` describes the split; ``metric`` is ``"accuracy"`` or
    ``"ogb:<name>"`` (use the OGB evaluator of that name).
    """

    name: str
    data: Data
    num_features: int
    num_classes: int
    split: str
    metric: str = "accuracy"

    @property
    def num_nodes(self) -> int:
        return int(self.data.num_nodes)


# --------------------------------------------------------------------------- registry


def available_datasets() -> list[str]:
    """Sorted registry names accepted by :func:`load_dataset` (:data:`gist.registry.DATASETS`)."""
    return sorted(DATASETS.names())


def register_dataset(name: str, loader: Callable[..., NodeDataset]) -> None:
    """Register (or replace) ``loader(root: Path, seed: int, **kwargs) -> NodeDataset``.

    Names are case-insensitive and ``_`` is treated as ``-``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if not callable(loader):
        raise ValueError(f"loader for {name!r} must be callable, got {loader!r}")
    DATASETS.register(name, loader)


def load_dataset(name: str, root: str | Path | None = None, seed: int = 0, **kwargs: Any) -> NodeDataset:
    """Load a registered dataset.

    ``root`` defaults to :func:`default_root` and is made absolute; ``seed`` drives random splits
    (and the synthetic graph for ``csbm``); ``kwargs`` go to the loader.
    Raises ``ValueError`` for unknown names (listing the available ones) and
    :class:`DatasetNotFoundError` when files are missing and cannot be fetched.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available datasets: {', '.join(available_datasets())}")
    root_path = (Path(root).expanduser() if root is not None else default_root()).absolute()
    ds = DATASETS[name](root_path, seed, **kwargs)
    if not isinstance(ds, NodeDataset):
        raise TypeError(f"loader for {name!r} returned {type(ds).__name__}, not NodeDataset")
    _check(ds)
    return ds


def _check(ds: NodeDataset) -> None:
    d = ds.data
    n = d.num_nodes
    problems = []
    if d.x is None or d.x.dim() != 2 or d.x.size(0) != n:
        problems.append("x must be [N, F]")
    if d.y is None or d.y.dim() != 1 or d.y.size(0) != n:
        problems.append("y must be 1-D [N]")
    if d.edge_index is None or d.edge_index.dim() != 2 or d.edge_index.size(0) != 2:
        problems.append("edge_index must be [2, E]")
    for m in ("train_mask", "val_mask", "test_mask"):
        t = getattr(d, m, None)
        if t is None or t.dtype != torch.bool or t.shape != (n,):
            problems.append(f"{m} must be bool [N]")
    if problems:
        raise ValueError(f"dataset {ds.name!r} is malformed: " + "; ".join(problems))


def _make_dataset(
    name: str,
    x: Tensor,
    edge_index: Tensor,
    y: Tensor,
    masks,
    split: str,
    metric: str = "accuracy",
    num_classes: int | None = None,
) -> NodeDataset:
    y = y.reshape(-1).long()
    train, val, test = (m.reshape(-1).bool() for m in masks)
    data = Data(x=x.float(), edge_index=edge_index.long(), y=y, train_mask=train, val_mask=val, test_mask=test)
    data.num_nodes = y.numel()
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.numel() else 0
    return NodeDataset(
        name=name, data=data, num_features=int(x.size(1)), num_classes=int(num_classes), split=split, metric=metric
    )


# --------------------------------------------------------------------------- splits


def random_split(num_nodes: int, seed: int, train: float = 0.6, val: float = 0.2) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded random per-node split into disjoint, covering bool masks.

    ``round(train*N)`` training nodes, ``round(val*N)`` validation nodes, the
    rest test; the permutation comes from ``torch.Generator().manual_seed(seed)``.
    """
    if not isinstance(num_nodes, numbers.Integral) or isinstance(num_nodes, bool) or num_nodes < 1:
        raise ValueError(f"num_nodes must be a positive int, got {num_nodes!r}")
    if not (0.0 < train <= 1.0) or not (0.0 <= val <= 1.0) or train + val > 1.0 + 1e-9:
        raise ValueError(f"need 0 < train, 0 <= val, train + val <= 1; got {train}, {val}")
    num_nodes = int(num_nodes)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(num_nodes, generator=gen)
    n_train = int(round(train * num_nodes))
    n_val = min(int(round(val * num_nodes)), num_nodes - n_train)
    masks = []
    for idx in (perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]):
        m = torch.zeros(num_nodes, dtype=torch.bool)
        m[idx] = True
        masks.append(m)
    return masks[0], masks[1], masks[2]


def _split_name(seed: int) -> str:
    return f"seeded random 60/20/20 (seed={seed})"


# --------------------------------------------------------------------------- CSBM


def make_csbm(
    num_nodes: int = 3000,
    num_classes: int = 5,
    num_features: int = 128,
    avg_degree: float = 10.0,
    homophily: float = 0.6,
    signal: float = 0.07,
    seed: int = 0,
    communities: int = 0,
    locality: float = 0.0,
) -> NodeDataset:
    """Contextual stochastic block model, fully determined by ``seed``.

    Labels are uniform over ``num_classes``. Every node draws ``avg_degree/2``
    neighbours on average (the integer part always, one more with probability
    of the fractional part); each is a uniform node of its own class with
    probability ``homophily``, else a uniform node of another class. With
    ``communities = K > 1`` every node also belongs to one of ``K`` uniform
    communities (independent of its class), and each neighbour is drawn, with
    probability ``locality``, from the node's own community only (same class
    with probability ``homophily`` as before): real graphs' locality, which a
    METIS partition keeps and a plain SBM lacks. Edges are
    made undirected, deduplicated, self loops dropped (so the mean degree is
    slightly below ``avg_degree``). Class means are drawn once from
    ``N(0, I) * signal``; node features are ``mean[y] + N(0, I)``.
    Split: seeded random 60/20/20 (:func:`random_split` with the same seed).

    The defaults make a graph where features alone are weak (an MLP-like
    model without edges reaches about 0.33 test accuracy) and message passing
    is needed (a 3-layer GCN reaches about 0.89).
    """

    def _is_int(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    def _is_real(v: Any) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    if not _is_int(num_nodes) or num_nodes < 2:
        raise ValueError(f"num_nodes must be an int >= 2, got {num_nodes!r}")
    if not _is_int(num_classes) or not 2 <= num_classes <= num_nodes:
        raise ValueError(f"num_classes must be an int in [2, num_nodes], got {num_classes!r}")
    if not _is_int(num_features) or num_features < 1:
        raise ValueError(f"num_features must be an int >= 1, got {num_features!r}")
    if not _is_real(avg_degree) or not 0 < avg_degree <= num_nodes - 1:
        raise ValueError(f"avg_degree must be in (0, num_nodes - 1], got {avg_degree!r}")
    if not _is_real(homophily) or not 0.0 <= homophily <= 1.0:
        raise ValueError(f"homophily must be in [0, 1], got {homophily!r}")
    if not _is_real(signal) or not 0.0 <= signal < float("inf"):
        raise ValueError(f"signal must be a finite number >= 0, got {signal!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not _is_int(communities) or communities < 0:
        raise ValueError(f"communities must be an int >= 0, got {communities!r}")
    if not _is_real(locality) or not 0.0 <= locality <= 1.0:
        raise ValueError(f"locality must be in [0, 1], got {locality!r}")

    num_nodes, num_classes, num_features, seed = (int(num_nodes), int(num_classes), int(num_features), int(seed))
    gen = torch.Generator().manual_seed(seed)
    n, c = num_nodes, num_classes
    y = torch.randint(0, c, (n,), generator=gen)

    # Nodes sorted by class: class k occupies order[offset[k] : offset[k] + count[k]].
    order = torch.argsort(y, stable=True)
    count = torch.bincount(y, minlength=c)
    offset = torch.cumsum(count, 0) - count

    half = avg_degree / 2.0
    k_int = int(half)
    extra = torch.rand(n, generator=gen) < (half - k_int)
    src = torch.cat([torch.arange(n).repeat(k_int), torch.nonzero(extra).view(-1)])
    cs = y[src]
    cnt, off = count[cs], offset[cs]
    same = torch.rand(src.numel(), generator=gen) < homophily
    same |= cnt == n  # every node in one class: no other class to pick from
    u = torch.rand(src.numel(), generator=gen)
    pos_same = off + (u * cnt).long().clamp_max(cnt - 1)
    n_other = (n - cnt).clamp_min(1)
    pos_other = (u * n_other).long().clamp_max(n_other - 1)
    pos_other = pos_other + (pos_other >= off).long() * cnt  # skip over own class block
    dst = order[torch.where(same, pos_same, pos_other)]
    if communities > 1 and locality > 0:  # (no extra draws otherwise: the plain graph is unchanged)
        dst = torch.where(
            torch.rand(src.numel(), generator=gen) < locality,
            _community_neighbours(src, y, same, u, c, int(communities), gen),
            dst,
        )

    keep = src != dst
    ei = torch.stack([src[keep], dst[keep]])
    ei = torch.cat([ei, ei.flip(0)], 1)
    ei = torch.unique(ei[0] * n + ei[1])  # dedupe + sort by (row, col)
    edge_index = torch.stack([ei // n, ei % n])

    means = torch.randn(c, num_features, generator=gen) * float(signal)
    x = means[y] + torch.randn(n, num_features, generator=gen)

    ds = _make_dataset("csbm", x, edge_index, y, random_split(n, seed), _split_name(seed), num_classes=c)
    return ds


def _community_neighbours(
    src: Tensor, y: Tensor, same: Tensor, u: Tensor, num_classes: int, communities: int, gen: torch.Generator
) -> Tensor:
    """For each edge source, a uniform node of its own community: of its own
    class where ``same`` (else of another class, if the community has one),
    using the uniform draws ``u``. Nodes sorted by (community, class) make
    every such block, and every community, one contiguous range."""
    n = y.numel()
    community = torch.randint(0, communities, (n,), generator=gen)
    key = community * num_classes + y
    order = torch.argsort(key, stable=True)
    block_count = torch.bincount(key, minlength=communities * num_classes)
    block_offset = torch.cumsum(block_count, 0) - block_count
    group_count = torch.bincount(community, minlength=communities)
    group_offset = torch.cumsum(group_count, 0) - group_count
    kc, ko = block_count[key[src]], block_offset[key[src]]  # the source's (community, class) block
    gc, go = group_count[community[src]], group_offset[community[src]]  # its community
    same = same | (kc == gc)  # a community of one class: nothing else to pick
    pos_same = ko + (u * kc).long().clamp_max(kc - 1)
    n_other = (gc - kc).clamp_min(1)
    pos_other = go + (u * n_other).long().clamp_max(n_other - 1)
    pos_other = pos_other + (pos_other >= ko).long() * kc  # skip over its own class block
    return order[torch.where(same, pos_same, pos_other)]


def _load_csbm(root: Path, seed: int, **kwargs: Any) -> NodeDataset:
    return make_csbm(seed=seed, **kwargs)


CLUSTERED_CSBM: dict[str, Any] = {"communities": 32, "locality": 0.9, "signal": 0.15}
"""``csbm-clustered``: :func:`make_csbm` with 32 communities holding 90% of
the edges and class features about twice as strong (a linear model of the
features alone reaches 0.64 test accuracy for seed 0, a 3-layer GCN about
0.9): a graph that, like real ones, a METIS partition cuts in few places
(8 parts keep about 85% of the edges), each part holding every class."""


def _load_clustered_csbm(root: Path, seed: int, **kwargs: Any) -> NodeDataset:
    ds = make_csbm(seed=seed, **{**CLUSTERED_CSBM, **kwargs})
    ds.name = "csbm-clustered"
    return ds


# --------------------------------------------------------------------------- file checks


@dataclass
class _Files:
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
        return self.raw + [p for p in self.always if p not in self.raw]

    def ready(self) -> bool:
        if not all(p.exists() for p in self.always):
            return False
        if all(p.exists() for p in self.raw):
            return True
        return self.processed.exists() and all(p.exists() for p in self.probe)


def _not_found(files: _Files, reason: str) -> DatasetNotFoundError:
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


def _pyg_safe_globals() -> list[Any]:
    """PyG classes pickled in processed files (PyG's ``data.pt``, ogb's
    ``geometric_data_processed.pt``); allow-listed only while a loader runs so
    ``torch.load`` keeps ``weights_only=True`` (found by loading such files)."""
    from torch_geometric.data import HeteroData
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import EdgeStorage, GlobalStorage, NodeStorage

    return [Data, HeteroData, DataEdgeAttr, DataTensorAttr, GlobalStorage, NodeStorage, EdgeStorage]


def _fetch(
    files: _Files,
    construct: Callable[[], Any],
    download_ctx: Callable[[], contextlib.AbstractContextManager] | None = None,
    extra_paths: list[Path] = (),
) -> Any:
    """Run ``construct()`` if files are present (under :func:`_dataset_lock`),
    else try one guarded download."""
    if files.ready():
        with _dataset_lock(files.folder):
            return _construct_present(files, construct)
    return _download(files, construct, download_ctx, extra_paths)


def _dataset_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on ``.<folder>.lock`` beside the dataset folder, so
    that one process at a time processes or reads it (the file is removed
    afterwards); no lock where that file cannot be created (a read-only data
    root already holds its processed files)."""
    return exclusive_lock(folder.with_name(f".{folder.name}.lock"), required=False)


def _corrupt(files: _Files, exc: BaseException, had_processed: bool, which: Path | None) -> DatasetCorruptError:
    """The error for present files that failed to load (see :func:`_fetch`)."""
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


def _construct_present(files: _Files, construct: Callable[[], Any]) -> Any:
    """``construct()`` over present files; :class:`DatasetCorruptError` if they
    do not load (and a processed folder that this attempt created is removed)."""
    had_processed = files.processed.exists()
    processed_dir = files.processed.parent
    had_processed_dir = processed_dir.exists()
    try:
        with _no_stdin(), torch.serialization.safe_globals(_pyg_safe_globals()):
            return construct()
    except DatasetNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - present files that do not load
        if not had_processed_dir:
            shutil.rmtree(processed_dir, ignore_errors=True)
        which = None if had_processed else files.find_corrupt()
        raise _corrupt(files, exc, had_processed, which) from exc


def _download(
    files: _Files,
    construct: Callable[[], Any],
    download_ctx: Callable[[], contextlib.AbstractContextManager] | None,
    extra_paths: list[Path],
) -> Any:
    """One guarded download, then ``construct()``; anything it left behind is removed on failure."""
    if _offline():
        raise _not_found(files, f"{OFFLINE_ENV} is set, so no download was tried")
    if not _host_resolves(files.url):
        raise _not_found(files, f"download failed: cannot resolve {files.url} (no network?)")
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
            stack.enter_context(torch.serialization.safe_globals(_pyg_safe_globals()))
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
        raise _not_found(files, f"download failed: {reason}") from exc
    if not files.ready():
        raise _not_found(files, "download finished but files are still missing")
    return result


# --------------------------------------------------------------------------- PyG loaders

_PLANETOID = {"cora": "Cora", "citeseer": "CiteSeer", "pubmed": "PubMed"}
_COAUTHOR = {"coauthor-cs": ("CS", "ms_academic_cs.npz"), "coauthor-physics": ("Physics", "ms_academic_phy.npz")}
_AMAZON = {
    "amazon-computers": ("Computers", "amazon_electronics_computers.npz"),
    "amazon-photo": ("Photo", "amazon_electronics_photo.npz"),
}
_PLANETOID_SUFFIXES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def _load_planetoid(root: Path, seed: int, *, key: str) -> NodeDataset:
    from torch_geometric.datasets import Planetoid

    pyg_name = _PLANETOID[key]
    base = root / "planetoid"
    folder = base / pyg_name
    raw = [folder / "raw" / f"ind.{pyg_name.lower()}.{s}" for s in _PLANETOID_SUFFIXES]
    files = _Files(
        key, folder, raw, raw, folder / "processed" / "data.pt", [], Planetoid.url, check_raw=_read_planetoid_file
    )
    ds = _fetch(files, lambda: Planetoid(str(base), pyg_name))
    d = ds[0]
    return _make_dataset(key, d.x, d.edge_index, d.y, (d.train_mask, d.val_mask, d.test_mask), "public Planetoid split")


def _read_planetoid_file(path: Path) -> None:
    """Read one raw Planetoid file as PyG does (``read_file``)."""
    from torch_geometric.io.planetoid import read_file

    prefix, name = path.name[len("ind.") :].split(".", 1)
    read_file(str(path.parent), prefix, name)


def _load_npz_dataset(root: Path, seed: int, *, key: str) -> NodeDataset:
    from torch_geometric.datasets import Amazon, Coauthor

    if key in _COAUTHOR:
        cls, sub, (pyg_name, fname) = Coauthor, "coauthor", _COAUTHOR[key]
    else:
        cls, sub, (pyg_name, fname) = Amazon, "amazon", _AMAZON[key]
    base = root / sub
    folder = base / pyg_name
    raw = [folder / "raw" / fname]
    files = _Files(key, folder, raw, raw, folder / "processed" / "data.pt", [], cls.url)
    ds = _fetch(files, lambda: cls(str(base), pyg_name))
    d = ds[0]
    return _make_dataset(key, d.x, d.edge_index, d.y, random_split(int(d.num_nodes), seed), _split_name(seed))


# --------------------------------------------------------------------------- OGB loaders

_OGB = {
    "ogbn-arxiv": {
        "split": "time",
        "extra_raw": ["node_year.csv.gz"],
        "undirected": True,
        "download_name": "arxiv",
        "url": "http://snap.stanford.edu/ogb/data/nodeproppred/arxiv.zip",
    },
    "ogbn-products": {
        "split": "sales_ranking",
        "extra_raw": [],
        "undirected": False,
        "download_name": "products",
        "url": "http://snap.stanford.edu/ogb/data/nodeproppred/products.zip",
    },
}
_OGB_RAW = ["edge.csv.gz", "node-feat.csv.gz", "node-label.csv.gz", "num-node-list.csv.gz", "num-edge-list.csv.gz"]


@contextlib.contextmanager
def _ogb_allow_large_download() -> Iterator[None]:
    """Answer ogb's "> 1 GB, proceed? (y/N)" with yes, only while this runs."""
    import ogb.nodeproppred.dataset_pyg as mod

    saved = mod.decide_download
    mod.decide_download = lambda url: True
    try:
        yield
    finally:
        mod.decide_download = saved


def _load_ogb(root: Path, seed: int, *, key: str) -> NodeDataset:
    from ogb.nodeproppred import PygNodePropPredDataset

    spec = _OGB[key]
    dir_name = key.replace("-", "_")
    if (root / f"{dir_name}_pyg").exists():  # ogb prefers this folder when present
        dir_name += "_pyg"
    folder = root / dir_name
    raw = [folder / "raw" / f for f in _OGB_RAW + spec["extra_raw"]]
    split_dir = folder / "split" / spec["split"]
    splits = [split_dir / f"{s}.csv.gz" for s in ("train", "valid", "test")]
    release = folder / "RELEASE_v1.txt"
    files = _Files(
        key,
        folder,
        raw + splits,
        [folder / "raw" / "edge.csv.gz", folder / "raw" / "node-feat.csv.gz"],
        folder / "processed" / "geometric_data_processed.pt",
        splits + [release],
        spec["url"],
    )

    if folder.is_dir() and not release.exists():
        has_files = any(p.is_file() for p in folder.rglob("*"))
        if has_files:
            raise DatasetNotFoundError(
                f"{folder} exists but has no RELEASE_v1.txt, so ogb would stop and ask on the "
                f"console whether to delete it. If the files there are a complete OGB copy, "
                f"create {release} (an empty file is fine); otherwise delete {folder} so the "
                f"dataset can be downloaded again. Expected files:\n" + "\n".join(f"  {p}" for p in files.expected),
                key,
                folder,
                files.expected,
            )
        # Only empty folders (left by an interrupted attempt): clear them so ogb won't ask.
        for p in sorted(folder.rglob("*"), key=lambda q: len(q.parts), reverse=True):
            p.rmdir()
        folder.rmdir()

    def construct() -> Any:
        with warnings.catch_warnings():  # ogb's torch.from_numpy on read-only pandas arrays
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            ds = PygNodePropPredDataset(key, root=str(root))
            return ds, ds.get_idx_split()

    dl = spec["download_name"]
    ds, idx = _fetch(files, construct, _ogb_allow_large_download, extra_paths=[root / f"{dl}.zip", root / dl])
    d = ds[0]
    n = int(d.num_nodes)
    masks = []
    for part in ("train", "valid", "test"):
        m = torch.zeros(n, dtype=torch.bool)
        m[idx[part]] = True
        masks.append(m)
    edge_index = d.edge_index
    desc = f'official OGB "{spec["split"]}" split'
    if spec["undirected"]:
        from torch_geometric.utils import to_undirected

        edge_index = to_undirected(edge_index, num_nodes=n)
        desc += "; directed edges made undirected"
    return _make_dataset(key, d.x, edge_index, d.y, masks, desc, metric=f"ogb:{key}")


# --------------------------------------------------------------------------- registration

_LOADERS = types.SimpleNamespace(
    **{k.replace("-", "_"): functools.partial(_load_planetoid, key=k) for k in _PLANETOID},
    **{k.replace("-", "_"): functools.partial(_load_npz_dataset, key=k) for k in (*_COAUTHOR, *_AMAZON)},
    **{k.replace("-", "_"): functools.partial(_load_ogb, key=k) for k in _OGB},
)
"""The built-in loaders the registry (:data:`gist.registry.DATASETS`) points at."""
