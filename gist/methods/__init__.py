"""Training methods and their registry: the one list of methods.

A method is a :class:`~gist.engine.RoundDriver` subclass with a ``name``. A
shipped method is one module here plus one line in
:data:`gist.registry.METHODS` (where it lives, and its options class if it
has one); a plug-in registers its class with ``@register_method``. The CLI's
``--method`` choices and flags, :mod:`gist.run`, sweeps, tables (their order,
colours and reference methods) and the docs all read the registry::

    from gist.engine import RoundDriver, RoundWork
    from gist.methods import register_method

    @register_method
    class MyMethod(RoundDriver):
        name = "my-method"
        ...

Shipped: ``full`` (the full model on one worker: GIST at ``m = 1``, a plain
PyG training loop), ``ddp`` (gradients averaged every step), ``local-sgd``
(parameters averaged every ``ζ`` steps), ``gist`` (:mod:`gist.methods.gist`).

This module imports no torch; the method classes import on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, TypeVar

from ..errors import ConfigError
from ..registry import METHODS, import_path

if TYPE_CHECKING:
    from ..engine import RoundDriver

M = TypeVar("M")


def register_method(cls: M) -> M:
    """Class decorator: add ``cls`` to :data:`METHODS` under ``cls.name``
    (its ``Options`` become its settings)."""
    name = getattr(cls, "name", "")
    if not name:
        raise ConfigError(f"{cls.__name__} needs a class attribute `name` to be registered")
    METHODS.register(name, cls, replace=False)
    return cls


def unregister_method(name: str) -> None:
    """Remove a registered method (tests, plugins)."""
    METHODS.unregister(name)


def get_method(name: str) -> type[RoundDriver]:
    """The method registered as ``name``; :class:`~gist.errors.ConfigError` listing the choices otherwise."""
    cls = METHODS.get(name)
    if cls is None:
        raise ConfigError(f"method must be one of {METHODS.names()}, got {name!r}")
    return cls


def method_names() -> list[str]:
    return METHODS.names()


def methods_with_role(role: str) -> list[str]:
    """The registered methods that play ``role`` in the tables (:data:`gist.engine.ROLES`), in registry order."""
    return [name for name, cls in METHODS.items() if getattr(cls, "role", None) == role]


def default_subnets(name: str, default: int) -> int:
    """``m`` for method ``name`` when none is given: its fixed value, else ``default``."""
    fixed: Optional[int] = get_method(name).fixed_subnets
    return fixed if fixed is not None else default


_BASES = {
    "DataParallelMethod": "gist.methods.data_parallel:DataParallelMethod",
    "CentralGIST": "gist.methods.gist.central:CentralGIST",
    "ShardedGIST": "gist.methods.gist.sharded:ShardedGIST",
}
"""Classes other than the registry's that this module exports: the data-parallel base, GIST's coordinators."""


def _class_names() -> dict[str, str]:
    """The shipped methods' class names and where they live (from the registry), and :data:`_BASES`."""
    out = {}
    for name in METHODS.names():
        path = METHODS.path(name)
        if path:
            out[path.rpartition(":")[2].rpartition(".")[2]] = path
    return {**out, **_BASES}


def __getattr__(name: str) -> Any:
    """The shipped method classes (``gist.methods.GIST``, ``gist.methods.DDP``, ...), imported on first use."""
    path = _class_names().get(name)
    if path is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return import_path(path)


__all__ = [
    "METHODS",
    "default_subnets",
    "get_method",
    "method_names",
    "methods_with_role",
    "register_method",
    "unregister_method",
]
