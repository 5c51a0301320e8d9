"""Training methods and their registry: the one list of methods.

A method is a :class:`~gist.engine.RoundDriver` subclass with a ``name``;
``@register_method`` adds it to :data:`gist.registry.METHODS` (which lists
the shipped names without importing torch). The CLI's ``--method`` choices,
:mod:`gist.run`, sweeps and tables (their order and colours) all read it::

    from gist.engine import RoundDriver, RoundWork
    from gist.methods import register_method

    @register_method
    class MyMethod(RoundDriver):
        name = "my-method"
        ...

Shipped: ``full`` (the full model on one worker: GIST at ``m = 1``, a plain
PyG training loop), ``ddp`` (gradients averaged every step), ``local-sgd``
(parameters averaged every ``ζ`` steps), ``gist`` (with ``--coordinator sharded``,
:class:`ShardedGIST`: no process holds the full model).
"""

from __future__ import annotations

from typing import Optional, TypeVar

from ..engine import RoundDriver
from ..registry import METHODS
from .data_parallel import DataParallelMethod
from .ddp import DDP
from .full import FullModel
from .gist import GIST
from .local_sgd import LocalSGD
from .sharded import ShardedGIST

M = TypeVar("M", bound=type[RoundDriver])


def register_method(cls: M) -> M:
    """Class decorator: add ``cls`` to :data:`METHODS` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a class attribute `name` to be registered")
    METHODS.register(cls.name, cls, replace=False)
    return cls


def unregister_method(name: str) -> None:
    """Remove a registered method (tests, plugins)."""
    METHODS.unregister(name)


def get_method(name: str) -> type[RoundDriver]:
    """The method registered as ``name``; ``ValueError`` listing the choices otherwise."""
    cls = METHODS.get(name)
    if cls is None:
        raise ValueError(f"method must be one of {METHODS.names()}, got {name!r}")
    return cls


def method_names() -> list[str]:
    return METHODS.names()


def default_subnets(name: str, default: int) -> int:
    """``m`` for method ``name`` when none is given: its fixed value, else ``default``."""
    fixed: Optional[int] = get_method(name).fixed_subnets
    return fixed if fixed is not None else default


for _shipped in (FullModel, DDP, LocalSGD, GIST):  # the order of tables
    register_method(_shipped)


__all__ = [
    "DDP",
    "GIST",
    "DataParallelMethod",
    "METHODS",
    "FullModel",
    "LocalSGD",
    "ShardedGIST",
    "default_subnets",
    "get_method",
    "method_names",
    "register_method",
    "unregister_method",
]
