"""``full``: the full-width model trained on one worker, the reference every table compares with.

It is GIST at ``m = 1`` with the central coordinator: the only sub-network is
the full model, the worker keeps its optimizer and RNG stream between rounds,
and the run is step for step a plain PyG training loop. ``ζ`` only sets how
often it is evaluated and how its log counts steps. It has no settings of
its own: GIST's (the wire dtype, the coordinator, the recipe) do not apply to
a model that never leaves its process.
"""

from __future__ import annotations

from ..config import NoOptions
from .gist.central import CentralGIST


class FullModel(CentralGIST):
    """GIST at ``m = 1`` (see the module docstring)."""

    name = "full"
    fixed_subnets = 1
    color = "black"
    label = "full model"
    Options = NoOptions
    role = "target"
    optimizer_states = ("kept",)
