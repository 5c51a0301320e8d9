"""The named choices of the package, known without importing torch.

Each registry maps a name to *where its object lives* (``"module:attribute"``)
and a few facts about it that need no import (a method's options class, a
dataset's metric). The object is imported on its first lookup. So
``gist --help`` and the config checks list and validate every choice without
loading torch or PyG, a shipped choice is one line here (plus the module that
implements it), and plug-ins add their own objects with
:meth:`Registry.register`. A declared path that does not resolve fails its
first lookup, naming it (a test loads every one).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar

from .errors import ConfigError

__all__ = [
    "DATASETS",
    "METHODS",
    "MODELS",
    "NORMS",
    "PARTITIONERS",
    "Entry",
    "Registry",
    "dataset_metric",
    "import_path",
]

T = TypeVar("T")


def import_path(path: str) -> Any:
    """The object at ``"package.module:attribute"`` (``attribute`` may be dotted)."""
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Entry:
    """One declared name: where its object lives and what is known of it without importing it."""

    path: str
    """``"module:attribute"`` of the object."""
    info: Mapping[str, Any] = field(default_factory=dict)
    """Facts that need no import (read with :meth:`Registry.info`)."""


class Registry(Generic[T]):
    """Names (in declaration, then registration order) mapped to lazily imported
    objects. ``normalize`` maps a name as users spell it to its key (e.g.
    case-insensitive)."""

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, Entry | str],
        normalize: Callable[[str], str] = lambda name: name,
    ) -> None:
        self.kind = kind
        self.normalize = normalize
        self._entries: dict[str, Entry] = {
            normalize(n): e if isinstance(e, Entry) else Entry(e) for n, e in entries.items()
        }
        self._objects: dict[str, T] = {}
        self._order = list(self._entries)

    def names(self) -> list[str]:
        """Every name, declared or registered, without importing anything."""
        return list(self._order)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.normalize(name) in self._order

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._order)

    def info(self, name: str) -> Mapping[str, Any]:
        """What is known of ``name`` without importing it (``{}`` for an unknown name)."""
        entry = self._entries.get(self.normalize(name))
        return entry.info if entry is not None else {}

    def path(self, name: str) -> str:
        """Where ``name``'s object lives (``"module:attribute"``; ``""`` for one registered as an object)."""
        entry = self._entries.get(self.normalize(name))
        return entry.path if entry is not None else ""

    def loaded(self, name: str) -> Optional[T]:
        """``name``'s object if it was registered or already imported, without importing anything."""
        return self._objects.get(self.normalize(name))

    def declare(self, name: str, path: str, **info: Any) -> None:
        """Add ``name`` as living at ``path`` (``"module:attribute"``, imported on
        first use), as the built-in entries are; ``info`` as theirs."""
        key = self.normalize(name)
        if key in self._order:
            raise ConfigError(f"a {self.kind} named {key!r} is already declared")
        self._entries[key] = Entry(path, dict(info))
        self._order.append(key)

    def register(self, name: str, obj: T, replace: bool = True, **info: Any) -> None:
        """Add (or, with ``replace``, replace) ``name``; ``info`` as a declared entry's."""
        key = self.normalize(name)
        current = self.get(key) if not replace and key in self._order else None
        if current is not None and current is not obj:
            raise ConfigError(f"a {self.kind} named {key!r} is already registered ({current!r})")
        self._objects[key] = obj
        if info or key not in self._entries:
            self._entries[key] = Entry("", dict(info))
        if key not in self._order:
            self._order.append(key)

    def unregister(self, name: str) -> None:
        """Remove a name (tests, plug-ins)."""
        key = self.normalize(name)
        self._objects.pop(key, None)
        self._entries.pop(key, None)
        if key in self._order:
            self._order.remove(key)

    def get(self, name: str) -> Optional[T]:
        """The object registered as ``name``, imported on first use; ``None`` for a name no one declared."""
        key = self.normalize(name)
        if key not in self._order:
            return None
        if key not in self._objects:
            path = self._entries[key].path
            try:
                self._objects[key] = import_path(path)
            except (ImportError, AttributeError) as exc:
                raise RuntimeError(f"the {self.kind} {key!r} is declared at {path!r}, which does not import") from exc
        return self._objects[key]

    def __getitem__(self, name: str) -> T:
        obj = self.get(name)
        if obj is None:
            raise KeyError(name)
        return obj

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs in order (imports every object)."""
        return [(n, self[n]) for n in self._order]


def _dataset_key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


METHODS: Registry[Any] = Registry(
    "method",
    {
        "full": "gist.methods.full:FullModel",
        "ddp": Entry("gist.methods.ddp:DDP", {"options": "gist.methods.ddp_options:DDPConfig"}),
        "fsdp": "gist.methods.fsdp:FSDP",
        "local-sgd": "gist.methods.local_sgd:LocalSGD",
        "gist": Entry("gist.methods.gist:GIST", {"options": "gist.methods.gist.options:GistConfig"}),
    },
)
"""Training methods (:class:`gist.engine.RoundDriver` subclasses), in the order
of tables. ``info["options"]``: the method's own settings (a dataclass of
:func:`gist.settings.setting` fields, importable without torch)."""


def _dataset(path: str, metric: str, family: str, description: str) -> Entry:
    return Entry(path, {"metric": metric, "family": family, "description": description})


DATASETS: Registry[Any] = Registry(
    "dataset",
    {
        "csbm": _dataset(
            "gist.data.synthetic:load_csbm",
            "accuracy",
            "synthetic",
            "contextual SBM drawn from the seed (default 3,000 nodes, 5 classes, 128 features); no files",
        ),
        "csbm-clustered": _dataset(
            "gist.data.synthetic:load_clustered_csbm",
            "accuracy",
            "synthetic",
            "the contextual SBM with 32 communities holding 90% of the edges (METIS cuts few); no files",
        ),
        "cora": _dataset(
            "gist.data.planetoid:load_cora",
            "accuracy",
            "planetoid",
            "Cora citations: 2,708 nodes, 7 classes, public split; PyG Planetoid files in <root>/planetoid/Cora",
        ),
        "citeseer": _dataset(
            "gist.data.planetoid:load_citeseer",
            "accuracy",
            "planetoid",
            "CiteSeer citations: 3,327 nodes, 6 classes, public split; PyG Planetoid files in "
            "<root>/planetoid/CiteSeer",
        ),
        "pubmed": _dataset(
            "gist.data.planetoid:load_pubmed",
            "accuracy",
            "planetoid",
            "PubMed citations: 19,717 nodes, 3 classes, public split; PyG Planetoid files in <root>/planetoid/PubMed",
        ),
        "coauthor-cs": _dataset(
            "gist.data.npz:load_coauthor_cs",
            "accuracy",
            "coauthor",
            "Coauthor CS co-authorship: 18,333 nodes, 15 classes, seeded 60/20/20; PyG npz in <root>/coauthor/CS",
        ),
        "coauthor-physics": _dataset(
            "gist.data.npz:load_coauthor_physics",
            "accuracy",
            "coauthor",
            "Coauthor Physics co-authorship: 34,493 nodes, 5 classes, seeded 60/20/20; PyG npz in "
            "<root>/coauthor/Physics",
        ),
        "amazon-computers": _dataset(
            "gist.data.npz:load_amazon_computers",
            "accuracy",
            "amazon",
            "Amazon Computers co-purchases: 13,752 nodes, 10 classes, seeded 60/20/20; PyG npz in "
            "<root>/amazon/Computers",
        ),
        "amazon-photo": _dataset(
            "gist.data.npz:load_amazon_photo",
            "accuracy",
            "amazon",
            "Amazon Photo co-purchases: 7,650 nodes, 8 classes, seeded 60/20/20; PyG npz in <root>/amazon/Photo",
        ),
        "ogbn-arxiv": _dataset(
            "gist.data.ogb:load_ogbn_arxiv",
            "ogb:ogbn-arxiv",
            "ogb",
            "OGB arXiv citations (made undirected): 169,343 nodes, 40 classes, time split; OGB files in "
            "<root>/ogbn_arxiv",
        ),
        "ogbn-products": _dataset(
            "gist.data.ogb:load_ogbn_products",
            "ogb:ogbn-products",
            "ogb",
            "OGB Amazon co-purchases: 2,449,029 nodes, 47 classes, sales-rank split; OGB files in <root>/ogbn_products",
        ),
    },
    normalize=_dataset_key,
)
"""Dataset loaders ``loader(root, seed, **kwargs) -> gist.data.NodeDataset``;
names are case-insensitive and ``_`` reads as ``-``. ``info``: ``metric``
(``"accuracy"``, or ``"ogb:<name>"``: scored by ``ogb.nodeproppred.Evaluator(name)``;
the loader's datasets carry the same), ``family`` (``synthetic``,
``planetoid``, ``coauthor``, ``amazon``, ``ogb``, or ``plug-in``) and a
one-line ``description``. A shipped dataset is one entry here."""


def dataset_metric(name: str) -> str:
    """How the dataset ``name`` is scored: ``"accuracy"`` or ``"ogb:<evaluator name>"``
    (``"accuracy"`` for a dataset registered without one); no import."""
    return str(DATASETS.info(name).get("metric", "accuracy"))


MODELS: Registry[Any] = Registry(
    "model", {"gcn": "torch_geometric.nn.models:GCN", "sage": "torch_geometric.nn.models:GraphSAGE"}
)
"""Stock PyG model classes the harness builds (:func:`gist.nn.build_model`)."""

NORMS: dict[str, Optional[str]] = {"none": None, "batch_norm": "batch_norm", "layer_norm": "layer_norm"}
"""``--norm`` choices and what PyG's ``norm=`` argument gets for each."""

PARTITIONERS = ("metis", "random")
"""Node partitioners :func:`gist.graph.partition_nodes` knows."""
