"""``full``: the full-width model trained on one worker, the reference every table compares with.

It is GIST with ``m = 1``: the only sub-network is the full model, the worker
keeps its optimizer and RNG stream between rounds, and the run is step for
step a plain PyG training loop. ``ζ`` only sets how often it is evaluated
and how its log counts steps.
"""

from __future__ import annotations

from ..config import RunConfig
from .gist import GIST


class FullModel(GIST):
    """GIST at ``m = 1`` (see the module docstring)."""

    name = "full"
    fixed_subnets = 1
    color = "black"

    @property
    def label(self) -> str:
        return "full model"

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        super().check_config(cfg)
        if cfg.wire_dtype != "float32":
            raise ValueError(
                f"wire_dtype {cfg.wire_dtype}: the full model crosses no network (it is the float32 reference)"
            )
        if cfg.gist.coordinator != "central":
            raise ValueError("--coordinator sharded is gist's: the full model trains whole in one process")
