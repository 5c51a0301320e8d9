"""Noticing a diverged run: a non-finite loss or parameter stops it at the end of the round.

:meth:`~gist.engine.RoundDriver.run_round` calls :func:`check_round` after
every round's training, before the round is evaluated, recorded or
checkpointed, so the run log keeps every round before it and the last
checkpoint written stays the last good one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from ..comm import WorkerStats
from ..errors import GistError


class TrainingDiverged(GistError, RuntimeError):
    """A round ended with a non-finite (NaN or infinite) loss or parameter.

    Attributes: ``method``, ``round``, ``workers`` (the workers, i.e. ranks
    under ``torch.distributed``, whose mean loss was not finite; empty when
    only the parameters were), ``where`` (what was not finite, in words)."""

    def __init__(self, method: str, round: int, workers: Sequence[int], where: str) -> None:
        self.method = method
        self.round = round
        self.workers = list(workers)
        self.where = where
        who = f"worker{'s' if len(self.workers) > 1 else ''} {', '.join(map(str, self.workers))}" if workers else ""
        super().__init__(
            f"{method} diverged in round {round}: {where}"
            + (f" on {who} (rank = worker under torch.distributed)" if who else "")
            + "; lower --lr or check the data"
        )

    def record(self) -> dict[str, Any]:
        """The failure as the run log stores it."""
        return {
            "kind": "diverged",
            "method": self.method,
            "round": self.round,
            "workers": self.workers,
            "message": str(self),
        }


def non_finite_workers(stats: Mapping[int, WorkerStats]) -> list[int]:
    """The workers that took steps and reported a non-finite mean loss (a
    worker without steps reports NaN by design)."""
    return sorted(i for i, s in stats.items() if s.steps > 0 and not math.isfinite(s.loss))


def first_non_finite(states: Sequence[Mapping[str, Tensor]]) -> Optional[str]:
    """The name of the first floating-point tensor of ``states`` (``state_dict`` mappings)
    holding a NaN or infinity, ``None`` if all are finite."""
    for state in states:
        for name, tensor in state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return name
    return None


def check_round(
    method: str, round: int, stats: Mapping[int, WorkerStats], states: Sequence[Mapping[str, Tensor]]
) -> None:
    """Raise :class:`TrainingDiverged` if any worker in ``stats`` reported a
    non-finite loss or any of ``states`` holds a non-finite value."""
    workers = non_finite_workers(stats)
    tensor = first_non_finite(states)
    if workers:
        losses = ", ".join(f"{stats[i].loss}" for i in workers)
        noun = "loss" if len(workers) == 1 else "losses"
        raise TrainingDiverged(method, round, workers, f"the training {noun} became {losses}")
    if tensor is not None:
        raise TrainingDiverged(method, round, [], f"the model's {tensor!r} holds NaN or infinite values")
