"""Transports between the coordinator and its workers, and the byte ledger.

The round loop (:class:`gist.train.GISTTrainer`) only ever calls
:meth:`Transport.run_round` with one flat parameter buffer per worker and gets
one flat buffer per worker back. How the buffers travel is the transport's
business: :class:`InProcessTransport` calls the workers one after another in
this process (a deterministic simulation of ``m`` machines); a
``torch.distributed`` transport sends the same buffers to real processes.
Every transport records what it moves in a :class:`ByteLedger`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from .train import Worker

TO_WORKER = "to_worker"
FROM_WORKER = "from_worker"
DIRECTIONS = (TO_WORKER, FROM_WORKER)
KINDS = ("params", "data", "stats", "control", "eval")
SETUP_ROUND = -1


def tensor_nbytes(tensors: Tensor | Iterable[Tensor]) -> int:
    """Bytes of a tensor's (or several tensors') elements."""
    if isinstance(tensors, Tensor):
        return tensors.numel() * tensors.element_size()
    return sum(tensor_nbytes(t) for t in tensors)


@dataclass(frozen=True)
class Transfer:
    """One message: ``nbytes`` of ``kind`` moved in ``direction`` for ``worker``
    in ``round`` (``-1``: set-up, before the first round)."""

    round: int
    worker: int
    direction: str
    kind: str
    nbytes: int


class ByteLedger:
    """Every tensor that goes to or comes from a worker, counted in bytes.

    Kinds: ``params`` (sub-network state), ``stats`` (the small loss report a
    worker returns each round), ``eval`` (``partitioned`` mode: the full model
    sent to each worker to evaluate on its own nodes, and the counts it
    returns), ``control`` (the set-up handshake: the round
    to start from and the buffer size out, the worker's data size back), and
    ``data``: the graph bytes a worker holds, recorded once at set-up (round
    ``-1``). GIST never sends graph data: a worker loads it where it lives (in
    ``replicated`` mode every worker holds the whole graph), so ``data`` is
    reported apart from the communication totals.
    """

    def __init__(self, records: Iterable[dict] = ()) -> None:
        self.load_records(records)

    def load_records(self, records: Iterable[dict]) -> None:
        """Replace the contents with :meth:`records` (e.g. out of a checkpoint)."""
        self.transfers: list[Transfer] = []
        # running sums, so the per-round and per-kind totals the round loop
        # asks for every round do not rescan the whole history
        self._by_round: dict[int, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
        self._by_kind: dict[str, int] = defaultdict(int)
        for r in records:
            self.record(r["round"], r["worker"], r["direction"], r["kind"], int(r["nbytes"]))

    def record(self, round: int, worker: int, direction: str, kind: str,
               payload: Tensor | Iterable[Tensor] | int) -> int:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        nbytes = payload if isinstance(payload, int) else tensor_nbytes(payload)
        nbytes = int(nbytes)
        self.transfers.append(Transfer(round, worker, direction, kind, nbytes))
        self._by_round[round][(direction, kind)] += nbytes
        self._by_kind[kind] += nbytes
        return nbytes

    def total(self, *, round: Optional[int] = None, worker: Optional[int] = None,
              direction: Optional[str] = None, kind: Optional[str] = None) -> int:
        """Sum of bytes over the transfers matching every given filter."""
        if worker is None and round is None and direction is None:
            return self._by_kind[kind] if kind is not None else sum(self._by_kind.values())
        if worker is None and round is not None:
            return sum(n for (d, k), n in self._by_round.get(round, {}).items()
                       if (direction is None or d == direction) and (kind is None or k == kind))
        return sum(
            t.nbytes for t in self.transfers
            if (round is None or t.round == round)
            and (worker is None or t.worker == worker)
            and (direction is None or t.direction == direction)
            and (kind is None or t.kind == kind)
        )

    def by_worker(self, kind: str = "params") -> dict[int, int]:
        out: dict[int, int] = defaultdict(int)
        for t in self.transfers:
            if t.kind == kind:
                out[t.worker] += t.nbytes
        return dict(out)

    def records(self) -> list[dict]:
        return [asdict(t) for t in self.transfers]


@dataclass
class WorkerReport:
    """What a worker sends back after its local steps."""

    params: Tensor
    """The trained sub-network, as one flat buffer in the round's layout."""
    stats: Tensor
    """``[mean training loss, optimizer steps taken, seconds]`` in the buffer dtype."""


class Transport(ABC):
    """Moves one flat buffer per worker per direction each round."""

    def __init__(self, num_subnets: int, ledger: Optional[ByteLedger] = None) -> None:
        self.num_subnets = num_subnets
        self.ledger = ledger if ledger is not None else ByteLedger()

    def start(self, start_round: int, numel: int) -> None:
        """The set-up handshake, once before the first round this run trains:
        every worker is told ``[start_round, numel]`` (and skips the batches
        of earlier rounds when resuming) and answers with the bytes of graph
        data it holds."""

    @property
    def local_worker(self) -> Optional["Worker"]:
        """Worker 0 when it lives in the coordinator's process."""
        return None

    @property
    def sequential(self) -> bool:
        """Whether workers train one after another (a simulation) rather
        than at the same time."""
        return False

    @abstractmethod
    def run_round(self, round: int, payloads: Sequence[Tensor]) -> list[WorkerReport]:
        """Send ``payloads[i]`` to worker ``i``, let it train, return its report."""

    def evaluate(self, round: int, flat_model: Tensor) -> list[Tensor]:
        """Send the full model to every worker; each returns
        :func:`gist.train.correct_counts` on its own nodes."""
        raise NotImplementedError(f"{type(self).__name__} cannot evaluate on its workers")

    def close(self) -> None:
        """Release resources (processes, process groups)."""


EVAL_COUNTS = 6


class InProcessTransport(Transport):
    """All workers live in this process and train one after another.

    Buffers are cloned on the way in and out, so a worker never aliases the
    coordinator's memory, exactly as if they had crossed a wire.
    """

    def __init__(self, workers: Sequence["Worker"], ledger: Optional[ByteLedger] = None) -> None:
        super().__init__(len(workers), ledger)
        self.workers = list(workers)

    @property
    def local_worker(self) -> Optional["Worker"]:
        return self.workers[0]

    @property
    def sequential(self) -> bool:
        return True

    def start(self, start_round: int, numel: int) -> None:
        for worker in self.workers:
            worker.fast_forward(start_round)
            record_handshake(self.ledger, worker.index, handshake_header(start_round, numel),
                             handshake_reply(worker))

    def run_round(self, round: int, payloads: Sequence[Tensor]) -> list[WorkerReport]:
        if len(payloads) != self.num_subnets:
            raise ValueError(f"expected {self.num_subnets} payloads, got {len(payloads)}")
        reports = []
        for worker, payload in zip(self.workers, payloads):
            self.ledger.record(round, worker.index, TO_WORKER, "params", payload)
            report = worker.train_round(round, payload.clone())
            report = WorkerReport(report.params.clone(), report.stats.clone())
            self.ledger.record(round, worker.index, FROM_WORKER, "params", report.params)
            self.ledger.record(round, worker.index, FROM_WORKER, "stats", report.stats)
            reports.append(report)
        return reports

    def evaluate(self, round: int, flat_model: Tensor) -> list[Tensor]:
        counts = []
        for worker in self.workers:
            self.ledger.record(round, worker.index, TO_WORKER, "eval", flat_model)
            c = worker.evaluate(flat_model.clone()).clone()
            self.ledger.record(round, worker.index, FROM_WORKER, "eval", c)
            counts.append(c)
        return counts


def analytic_subnet_numel(spec, full_shapes: dict[str, torch.Size], num_subnets: int) -> int:
    """Values in one sub-network, from the widths alone (GUIDE §2):
    each split dimension of size ``d`` contributes ``d/m``."""
    total = 0
    for name, axes in spec.tensor_axes.items():
        n = 1
        for size, axis in zip(full_shapes[name], axes):
            n *= size // num_subnets if axis is not None else size
        total += n
    return total


def handshake_header(start_round: int, numel: int) -> Tensor:
    """What the coordinator tells each worker before the first round."""
    return torch.tensor([start_round, numel], dtype=torch.int64)


def handshake_reply(worker: "Worker") -> Tensor:
    """What a worker answers: the bytes of graph data it holds."""
    return torch.tensor([tensor_nbytes(worker.data_tensors())], dtype=torch.int64)


def record_handshake(ledger: ByteLedger, worker: int, header: Tensor, reply: Tensor) -> None:
    ledger.record(SETUP_ROUND, worker, TO_WORKER, "control", header)
    ledger.record(SETUP_ROUND, worker, FROM_WORKER, "control", reply)
    ledger.record(SETUP_ROUND, worker, TO_WORKER, "data", int(reply[0]))
