"""GIST's communication seam: one flat buffer per worker per direction per round.

The GIST method only ever calls :meth:`Transport.run_round` with one flat
parameter buffer per worker and gets one :class:`WorkerReport` per worker
back. How the buffers travel is the transport's business:
:class:`InProcessTransport` calls the workers one after another in this
process (a deterministic simulation of ``m`` machines);
:class:`~gist.methods.gist.processes.DistTransport` sends the same buffers
to real processes. Every transport records what it moves in a :class:`ByteLedger`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional, Protocol

import torch
from torch import Tensor, nn

from ...comm import FROM_WORKER, SETUP_ROUND, TO_WORKER, ByteLedger, WorkerStats, tensor_nbytes
from ...comm.ledger import handshake_header, handshake_reply, record_handshake
from ...subnets import FlatLayout
from .messages import Evaluation, WorkerReport

if TYPE_CHECKING:
    from .worker import PartScorer


class SubnetWorker(Protocol):
    """What a transport needs of a GIST worker (:class:`~gist.methods.gist.worker.Worker`)."""

    index: int

    def param_numel_at(self, round: int) -> int:
        """Values in its sub-network's flat buffer in round ``round``."""
        ...

    @property
    def param_dtype(self) -> torch.dtype:
        """The dtype of its flat buffers."""
        ...

    @property
    def full_numel(self) -> int:
        """Values in the full model's flat buffer (to evaluate it)."""
        ...

    def data_tensors(self) -> list[Tensor]: ...

    def fast_forward(self, start_round: int) -> None: ...

    def train_round(self, round: int, flat_params: Tensor, flat_optim: Optional[Tensor] = None) -> WorkerReport: ...

    def optim_layout_at(self, round: int) -> FlatLayout:
        """The layout of the optimizer state it carries in round ``round``."""
        ...

    def label_counts(self, num_classes: int) -> Tensor: ...

    def set_label_prior(self, total_counts: Tensor) -> None: ...

    @property
    def scorer(self) -> PartScorer:
        """Evaluates the merged model on the worker's own part."""
        ...


class Transport(ABC):
    """Moves one flat buffer per worker per direction each round."""

    is_coordinator = True
    """The transport is the coordinator's side (which evaluates and keeps the log)."""

    def __init__(self, num_workers: int, ledger: Optional[ByteLedger] = None) -> None:
        self.num_workers = num_workers
        self.ledger = ledger if ledger is not None else ByteLedger()

    def start(self, start_round: int, numel: int) -> None:
        """The set-up handshake, once before the first round this run trains:
        every worker is told ``[start_round, numel]`` (and skips the batches
        of earlier rounds when resuming) and answers with the bytes of graph
        data it holds."""

    @property
    def local_worker(self) -> Optional[SubnetWorker]:
        """Worker 0 when it lives in the coordinator's process."""
        return None

    @property
    def sequential(self) -> bool:
        """Whether workers train one after another (a simulation) rather
        than at the same time."""
        return False

    @abstractmethod
    def run_round(
        self, round: int, payloads: Sequence[Tensor], optim: Optional[Sequence[Tensor]] = None
    ) -> list[WorkerReport]:
        """Send ``payloads[i]`` (and ``optim[i]``, the optimizer state carried
        with it, ``optim`` bytes) to worker ``i``, let it train, return its report."""

    @abstractmethod
    def share_label_counts(self, num_classes: int) -> Tensor:
        """Set-up for the label-prior correction: every worker sends its
        training-label counts, and the sum goes back to every worker
        (``prior`` bytes). Returns the sum."""

    @abstractmethod
    def evaluate(
        self, round: int, flat_model: Tensor, batch_norms: int, score: bool, model: Optional[nn.Module] = None
    ) -> Evaluation:
        """Send the full model to every worker (``eval`` bytes). Then, for
        each of its first ``batch_norms`` BatchNorm layers in order, every
        worker sends its activation moments and receives their sum
        (``bn_stats`` bytes), from which it sets that layer's statistics.
        With ``score``, each worker returns correct/total counts on its own
        nodes (``eval`` bytes).

        ``model``: the coordinator's model, exactly what ``flat_model``
        holds; the workers of this process evaluate it in place (and set its
        BatchNorm statistics) instead of building a full-width copy each,
        where it lives on their device. The bytes are counted all the same."""

    def close(self) -> None:
        """Release resources (processes, process groups)."""


class InProcessTransport(Transport):
    """All workers live in this process and train one after another.

    Buffers are cloned on the way in and out, so a worker never aliases the
    coordinator's memory, exactly as if they had crossed a wire.
    """

    def __init__(self, workers: Sequence[SubnetWorker], ledger: Optional[ByteLedger] = None) -> None:
        super().__init__(len(workers), ledger)
        self.workers = list(workers)

    @property
    def local_worker(self) -> Optional[SubnetWorker]:
        return self.workers[0]

    @property
    def sequential(self) -> bool:
        return True

    def start(self, start_round: int, numel: int) -> None:
        for worker in self.workers:
            worker.fast_forward(start_round)
            record_handshake(
                self.ledger,
                worker.index,
                handshake_header(start_round, numel),
                handshake_reply(tensor_nbytes(worker.data_tensors())),
            )

    def run_round(
        self, round: int, payloads: Sequence[Tensor], optim: Optional[Sequence[Tensor]] = None
    ) -> list[WorkerReport]:
        if len(payloads) != self.num_workers:
            raise ValueError(f"expected {self.num_workers} payloads, got {len(payloads)}")
        reports = []
        for w, (worker, payload) in enumerate(zip(self.workers, payloads)):
            self.ledger.record(round, worker.index, TO_WORKER, "params", payload)
            state = None
            if optim is not None:
                self.ledger.record(round, worker.index, TO_WORKER, "optim", optim[w])
                state = optim[w].clone()
            report = worker.train_round(round, payload.clone(), state)
            stats = report.stats.to_tensor(payload.dtype)  # as it would travel
            back = report.optim.clone() if report.optim is not None else None
            report = WorkerReport(report.params.clone(), WorkerStats.from_tensor(stats), back)
            self.ledger.record(round, worker.index, FROM_WORKER, "params", report.params)
            if back is not None:
                self.ledger.record(round, worker.index, FROM_WORKER, "optim", back)
            self.ledger.record(round, worker.index, FROM_WORKER, "stats", stats)
            reports.append(report)
        return reports

    def share_label_counts(self, num_classes: int) -> Tensor:
        counts = [worker.label_counts(num_classes).clone() for worker in self.workers]
        total = torch.stack(counts).sum(0)
        for worker, c in zip(self.workers, counts):
            self.ledger.record(SETUP_ROUND, worker.index, FROM_WORKER, "prior", c)
            self.ledger.record(SETUP_ROUND, worker.index, TO_WORKER, "prior", total)
            worker.set_label_prior(total.clone())
        return total

    def evaluate(
        self, round: int, flat_model: Tensor, batch_norms: int, score: bool, model: Optional[nn.Module] = None
    ) -> Evaluation:
        for worker in self.workers:
            self.ledger.record(round, worker.index, TO_WORKER, "eval", flat_model)
            if model is None or not worker.scorer.lend(model):
                worker.scorer.load(flat_model.clone())
        try:
            totals = []
            for k in range(batch_norms):
                moments = [worker.scorer.batch_norm_moments(k).clone() for worker in self.workers]
                total = torch.stack(moments).sum(0)
                for worker, mine in zip(self.workers, moments):
                    self.ledger.record(round, worker.index, FROM_WORKER, "bn_stats", mine)
                    self.ledger.record(round, worker.index, TO_WORKER, "bn_stats", total)
                    worker.scorer.set_batch_norm_moments(k, total.clone())
                totals.append(total)
            counts = []
            if score:
                for worker in self.workers:
                    c = worker.scorer.score().clone()
                    self.ledger.record(round, worker.index, FROM_WORKER, "eval", c)
                    counts.append(c)
        finally:
            for worker in self.workers:
                worker.scorer.drop()
        return Evaluation(totals, counts)
