"""What a run remembers: one :class:`RoundRecord` per round, and the summary of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from ..comm import FROM_WORKER, TO_WORKER, ByteLedger


@dataclass
class RoundRecord:
    """One round: time split, parameter bytes each way (all workers), the
    workers' mean loss, and metrics where evaluated."""

    round: int
    local_steps: int
    seconds: float
    split_seconds: float
    merge_seconds: float
    worker_seconds: float
    bytes_to_workers: int
    bytes_from_workers: int
    stats_bytes: int
    loss: float
    train: Optional[float] = None
    val: Optional[float] = None
    test: Optional[float] = None
    eval_seconds: Optional[float] = None
    eval_bytes: int = 0
    parts_val: Optional[float] = None
    """Partitioned GIST: validation accuracy with each worker scoring its own
    part (edges between parts missing), the counts summed."""
    parts_test: Optional[float] = None
    parallel_seconds: Optional[float] = None
    """The round's time with its workers in parallel (evaluation excluded):
    the wall time with real processes; in the in-process simulation, which
    runs workers one after another, the wall time less every worker's time
    plus the slowest worker's."""

    @classmethod
    def of_round(
        cls, round: int, local_steps: int, seconds: float, work: Any, ledger: ByteLedger, sequential: bool
    ) -> RoundRecord:
        """The record of round ``round``, which took ``seconds``: its
        :class:`~gist.engine.RoundWork` ``work`` (the workers' reports, split
        and merge seconds) and its parameter and stats bytes in ``ledger``;
        its metrics are set where it is evaluated."""
        worker_seconds = [s.seconds for s in work.stats.values()]
        losses = [s.loss for s in work.stats.values() if s.loss == s.loss]
        return cls(
            round=round,
            local_steps=local_steps,
            seconds=seconds,
            split_seconds=work.split_seconds,
            merge_seconds=work.merge_seconds,
            worker_seconds=max(worker_seconds),
            parallel_seconds=parallel_round_seconds(seconds, worker_seconds, sequential),
            bytes_to_workers=ledger.total(round=round, direction=TO_WORKER, kind="params"),
            bytes_from_workers=ledger.total(round=round, direction=FROM_WORKER, kind="params"),
            stats_bytes=ledger.total(round=round, kind="stats"),
            loss=sum(losses) / len(losses) if losses else float("nan"),
        )


def parallel_round_seconds(seconds: float, worker_seconds: Sequence[float], sequential: bool) -> float:
    """:attr:`RoundRecord.parallel_seconds` of a round that took ``seconds``
    with workers taking ``worker_seconds`` (one after another if ``sequential``)."""
    if not sequential:
        return seconds
    return seconds - sum(worker_seconds) + max(worker_seconds)


def history_summary(history: Sequence[RoundRecord], ledger: ByteLedger, num_workers: int) -> dict[str, Any]:
    """The summary every method shares: best validation and test there,
    final metrics, parameter bytes (total and per worker; the optimizer state
    carried with them and synchronised BatchNorm's sums included, also on
    their own as ``optim_bytes_total`` and ``bn_sync_bytes_total``), other byte kinds,
    seconds, and ``parallel_seconds``: the rounds' time with each round's
    workers in parallel (:attr:`RoundRecord.parallel_seconds`), evaluation included."""
    evaluated = [r for r in history if r.val is not None]
    best = max(evaluated, key=lambda r: r.val) if evaluated else None
    params_bytes = ledger.total(kind="params") + ledger.total(kind="optim") + ledger.total(kind="bn_sync")
    seconds = sum(r.seconds + (r.eval_seconds or 0.0) for r in history)
    parallel = sum(
        (r.seconds if r.parallel_seconds is None else r.parallel_seconds) + (r.eval_seconds or 0.0) for r in history
    )
    return {
        "best_val": best.val if best else None,
        "test_at_best_val": best.test if best else None,
        "best_round": best.round if best else None,
        "final_val": evaluated[-1].val if evaluated else None,
        "final_test": evaluated[-1].test if evaluated else None,
        "bytes_total": params_bytes,
        "bytes_per_worker": params_bytes / num_workers,
        "data_bytes_total": ledger.total(kind="data"),
        "stats_bytes_total": ledger.total(kind="stats"),
        "eval_bytes_total": ledger.total(kind="eval"),
        "optim_bytes_total": ledger.total(kind="optim"),
        "bn_sync_bytes_total": ledger.total(kind="bn_sync"),
        "rounds": len(history),
        "seconds": seconds,
        "parallel_seconds": parallel,
    }
