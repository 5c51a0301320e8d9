"""``--method ddp``'s own settings (:class:`DDPConfig`), importable without torch
(the registry names this module as DDP's options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..settings import setting

if TYPE_CHECKING:
    from ..config import RunConfig

BATCH_NORM_STATS = ("synced", "own")


@dataclass
class DDPConfig:
    """The settings of ``--method ddp``."""

    batch_norm_stats: str = setting(
        "synced",
        choices=BATCH_NORM_STATS,
        help="synced: BatchNorm normalises with the statistics of every worker's batch together, as "
        "torch.nn.SyncBatchNorm does (3 small all-reduces per BatchNorm layer and step, counted as bn_sync); "
        "own: with its own batch's, as DDP without convert_sync_batchnorm (the model keeps worker 0's "
        "running statistics)",
    )

    ABSENT_MEANS: ClassVar[dict[str, Any]] = {"batch_norm_stats": "own"}
    """What a run log or checkpoint that records no ``batch_norm_stats`` was made with (it predates ``synced``)."""

    def check(self, cfg: RunConfig) -> None:
        """Nothing to check beyond the choices."""
