"""The named choices of the package, known without importing torch.

Each registry lists its built-in names here; the module that implements
them (its *provider*) registers the objects when it is imported, and the
first lookup of an object imports the provider. So ``gist --help`` and the
config checks list and validate every choice without loading torch or PyG,
and plug-ins add their own with ``register``. A provider that fails to
register a name declared here fails its import (so the lists cannot drift).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Optional, TypeVar

__all__ = ["DATASETS", "METHODS", "MODELS", "NORMS", "PARTITIONERS", "Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names (in declaration, then registration order) mapped to objects that
    ``provider`` registers when imported. ``normalize`` maps a name as users
    spell it to its key (e.g. case-insensitive)."""

    def __init__(
        self,
        kind: str,
        provider: str,
        names: Iterable[str],
        normalize: Callable[[str], str] = lambda name: name,
    ) -> None:
        self.kind = kind
        self.provider = provider
        self.normalize = normalize
        self._declared = [normalize(n) for n in names]
        self._objects: dict[str, T] = {}
        self._order = list(self._declared)

    def names(self) -> list[str]:
        """Every name, declared or registered, without importing anything."""
        return list(self._order)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.normalize(name) in self._order

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._order)

    def register(self, name: str, obj: T, replace: bool = True) -> None:
        """Add (or, with ``replace``, replace) ``name``."""
        key = self.normalize(name)
        if not replace and key in self._objects and self._objects[key] is not obj:
            raise ValueError(f"a {self.kind} named {key!r} is already registered ({self._objects[key]!r})")
        self._objects[key] = obj
        if key not in self._order:
            self._order.append(key)

    def unregister(self, name: str) -> None:
        """Remove a name (tests, plug-ins); a built-in one comes back only with its provider's re-import."""
        key = self.normalize(name)
        self._objects.pop(key, None)
        if key in self._order:
            self._order.remove(key)

    def get(self, name: str) -> Optional[T]:
        """The object registered as ``name``, importing the provider if
        needed; ``None`` for a name no one registered."""
        key = self.normalize(name)
        if key not in self._order:
            return None
        if key not in self._objects:
            self.load()
        return self._objects.get(key)

    def __getitem__(self, name: str) -> T:
        obj = self.get(name)
        if obj is None:
            raise KeyError(name)
        return obj

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs in order (imports the provider)."""
        self.load()
        return [(n, self._objects[n]) for n in self._order if n in self._objects]

    def load(self) -> None:
        """Import the provider; ``RuntimeError`` if it left a declared name unregistered."""
        importlib.import_module(self.provider)
        missing = [n for n in self._declared if n in self._order and n not in self._objects]
        if missing:
            raise RuntimeError(f"{self.provider} did not register the {self.kind}(s) {missing}")


def _dataset_key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


METHODS: Registry[Any] = Registry("method", "gist.methods", ["full", "ddp", "local-sgd", "gist"])
"""Training methods (:class:`gist.engine.RoundDriver` subclasses), in the order of tables."""

DATASETS: Registry[Any] = Registry(
    "dataset",
    "gist.data",
    [
        "csbm",
        "csbm-clustered",
        "cora",
        "citeseer",
        "pubmed",
        "coauthor-cs",
        "coauthor-physics",
        "amazon-computers",
        "amazon-photo",
        "ogbn-arxiv",
        "ogbn-products",
    ],
    normalize=_dataset_key,
)
"""Dataset loaders ``loader(root, seed, **kwargs) -> gist.data.NodeDataset``;
names are case-insensitive and ``_`` reads as ``-``."""

MODELS: Registry[Any] = Registry("model", "gist.nn.models", ["gcn", "sage"])
"""Stock PyG model classes the harness builds (:func:`gist.nn.build_model`)."""

NORMS: dict[str, Optional[str]] = {"none": None, "batch_norm": "batch_norm", "layer_norm": "layer_norm"}
"""``--norm`` choices and what PyG's ``norm=`` argument gets for each."""

PARTITIONERS = ("metis", "random")
"""Node partitioners :func:`gist.graph.partition_nodes` knows."""
