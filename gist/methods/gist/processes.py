"""GIST's central coordinator on ``torch.distributed``: rank 0's transport and the other ranks' loop.

Rank 0 owns the full model, runs the round loop and is also worker 0 (as in
the published setup; :class:`DistTransport`); rank ``i > 0`` holds only its
current sub-network and its own graph data (:func:`serve_worker`). Each
round rank 0 sends every worker one flat buffer (point-to-point, so a
failure names its rank) and receives one flat buffer back: the trained
parameters followed by a 3-value stats report. The width split never
travels: every rank derives it from ``(seed, round)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ...comm import FROM_WORKER, SETUP_ROUND, TO_WORKER, ByteLedger, WorkerStats, tensor_nbytes
from ...comm.group import DistContext, comm_device
from ...comm.hooks import round_starts
from ...comm.ledger import handshake_header, handshake_reply, record_handshake
from ...comm.p2p import post, recv, send, wait
from ...errors import ConfigError
from .messages import EVAL_COUNTS, Evaluation, WorkerReport
from .transport import SubnetWorker, Transport


class DistTransport(Transport):
    """Rank 0's side: sends each worker its buffer, trains worker 0 itself."""

    def __init__(self, worker0: SubnetWorker, ctx: DistContext, ledger: Optional[ByteLedger] = None) -> None:
        if ctx.rank != 0:
            raise ValueError("DistTransport runs on rank 0; other ranks call serve_worker")
        super().__init__(ctx.world_size, ledger)
        self.worker0 = worker0
        self.ctx = ctx

    @property
    def local_worker(self) -> Optional[SubnetWorker]:
        return self.worker0

    def start(self, start_round: int, numel: int) -> None:
        self.worker0.fast_forward(start_round)
        header = handshake_header(start_round, numel)
        record_handshake(self.ledger, 0, header, handshake_reply(tensor_nbytes(self.worker0.data_tensors())))
        for rank in range(1, self.num_workers):
            send(header, rank, self.ctx, "set-up")
        for rank in range(1, self.num_workers):
            reply = recv(torch.zeros(1, dtype=torch.int64), rank, self.ctx, "set-up")
            record_handshake(self.ledger, rank, header, reply)

    def run_round(
        self, round: int, payloads: Sequence[Tensor], optim: Optional[Sequence[Tensor]] = None
    ) -> list[WorkerReport]:
        if len(payloads) != self.num_workers:
            raise ValueError(f"expected {self.num_workers} payloads, got {len(payloads)}")
        device = comm_device(self.ctx)
        numel, dtype = payloads[0].numel(), payloads[0].dtype
        # Post every send and receive at once, so that one slow or dead
        # worker cannot hold up the others' messages and is the one named.
        sends, recvs, bufs = {}, {}, {}
        out, back = f"round {round} (sending parameters)", f"round {round} (waiting for its parameters)"
        for rank in range(1, self.num_workers):
            self.ledger.record(round, rank, TO_WORKER, "params", payloads[rank])
            sends[rank] = [post(dist.isend, payloads[rank].to(device), rank, out)]
            bufs[rank] = [torch.empty(numel, dtype=dtype, device=device)]
            if optim is not None:
                self.ledger.record(round, rank, TO_WORKER, "optim", optim[rank])
                sends[rank].append(post(dist.isend, optim[rank].to(device), rank, out))
                bufs[rank].append(torch.empty(optim[rank].numel(), dtype=optim[rank].dtype, device=device))
            bufs[rank].append(torch.empty(WorkerStats.slots(dtype), dtype=dtype, device=device))
            recvs[rank] = [post(dist.irecv, buf, rank, back) for buf in bufs[rank]]
        self.ledger.record(round, 0, TO_WORKER, "params", payloads[0])
        if optim is not None:
            self.ledger.record(round, 0, TO_WORKER, "optim", optim[0])
        own = self.worker0.train_round(round, payloads[0].clone(), optim[0].clone() if optim is not None else None)
        stats0 = WorkerStats.from_tensor(own.stats.to_tensor(own.params.dtype))
        reports = [WorkerReport(own.params, stats0, own.optim)]
        for rank in range(1, self.num_workers):
            for work in sends[rank]:
                wait(work, rank, self.ctx, out)
            for work in recvs[rank]:
                wait(work, rank, self.ctx, back)
            params, *state, stats = bufs[rank]
            reports.append(WorkerReport(params, WorkerStats.from_tensor(stats.cpu()), state[0] if state else None))
        stats_bytes = WorkerStats.nbytes(dtype)
        for rank, report in enumerate(reports):
            self.ledger.record(round, rank, FROM_WORKER, "params", report.params)
            if report.optim is not None:
                self.ledger.record(round, rank, FROM_WORKER, "optim", report.optim)
            self.ledger.record(round, rank, FROM_WORKER, "stats", stats_bytes)
        return reports

    def share_label_counts(self, num_classes: int) -> Tensor:
        counts = [self.worker0.label_counts(num_classes)]
        for rank in range(1, self.num_workers):
            counts.append(recv(torch.zeros(num_classes, dtype=torch.int64), rank, self.ctx, "set-up (label counts)"))
        total = torch.stack(counts).sum(0)
        for rank in range(1, self.num_workers):
            send(total, rank, self.ctx, "set-up (label counts)")
        for rank, c in enumerate(counts):
            self.ledger.record(SETUP_ROUND, rank, FROM_WORKER, "prior", c)
            self.ledger.record(SETUP_ROUND, rank, TO_WORKER, "prior", total)
        self.worker0.set_label_prior(total.clone())
        return total

    def evaluate(
        self, round: int, flat_model: Tensor, batch_norms: int, score: bool, model: Optional[nn.Module] = None
    ) -> Evaluation:
        device = comm_device(self.ctx)
        what = f"round {round} (sending the model to evaluate)"
        sends = {}
        for rank in range(1, self.num_workers):
            self.ledger.record(round, rank, TO_WORKER, "eval", flat_model)
            sends[rank] = post(dist.isend, flat_model.to(device), rank, what)
        self.ledger.record(round, 0, TO_WORKER, "eval", flat_model)
        if model is None or not self.worker0.scorer.lend(model):
            self.worker0.scorer.load(flat_model.clone())
        try:
            for rank in range(1, self.num_workers):
                wait(sends[rank], rank, self.ctx, what)
            totals = []
            for k in range(batch_norms):
                mine = self.worker0.scorer.batch_norm_moments(k)
                moments = [mine] + [
                    recv(mine, rank, self.ctx, f"round {round} (BatchNorm statistics)")
                    for rank in range(1, self.num_workers)
                ]
                total = torch.stack(moments).sum(0)
                for rank in range(1, self.num_workers):
                    send(total, rank, self.ctx, f"round {round} (BatchNorm statistics)")
                for rank, c in enumerate(moments):
                    self.ledger.record(round, rank, FROM_WORKER, "bn_stats", c)
                    self.ledger.record(round, rank, TO_WORKER, "bn_stats", total)
                self.worker0.scorer.set_batch_norm_moments(k, total.clone())
                totals.append(total)
            counts = []
            if score:
                counts.append(self.worker0.scorer.score())
                for rank in range(1, self.num_workers):
                    like = torch.zeros(EVAL_COUNTS, dtype=torch.int64)
                    counts.append(recv(like, rank, self.ctx, f"round {round} (waiting for its evaluation)"))
                for rank, c in enumerate(counts):
                    self.ledger.record(round, rank, FROM_WORKER, "eval", c)
        finally:
            self.worker0.scorer.drop()
        return Evaluation(totals, counts)


@dataclass(frozen=True)
class WorkerProtocol:
    """What a GIST worker process exchanges with rank 0 besides its
    sub-network (both sides derive it from the run config)."""

    rounds: int
    label_classes: Optional[int] = None
    """Share training-label counts of this many classes at set-up (label-prior correction)."""
    evaluates_after: Optional[Callable[[int], bool]] = None
    """After which rounds rank 0 sends the full model to evaluate."""
    batch_norms: int = 0
    """BatchNorm layers whose statistics are pooled before each evaluation."""
    score: bool = False
    """Whether the worker scores the full model on its own nodes."""
    carries_optimizer: bool = False
    """Whether its optimizer state travels with its sub-network each round (``optim`` messages)."""


def serve_worker(worker: SubnetWorker, ctx: DistContext, protocol: WorkerProtocol) -> None:
    """Rank ``i > 0`` of a GIST job: answer the handshake (and share label
    counts), then train every round rank 0 sends until ``protocol.rounds``;
    after each round rank 0 evaluates, take the full model it sends, pool
    BatchNorm statistics with it and score the model on this worker's own
    nodes, as ``protocol`` says."""
    header = recv(torch.zeros(2, dtype=torch.int64), 0, ctx, "set-up (waiting for rank 0)")
    start_round, numel = int(header[0]), int(header[1])
    if numel != worker.param_numel_at(start_round):
        raise ConfigError(
            f"rank {ctx.rank}: rank 0 sends sub-networks of {numel} values but this rank's model has "
            f"{worker.param_numel_at(start_round)}: the ranks were started with different settings"
        )
    worker.fast_forward(start_round)
    send(handshake_reply(tensor_nbytes(worker.data_tensors())), 0, ctx, "set-up")
    if protocol.label_classes is not None:
        send(worker.label_counts(protocol.label_classes), 0, ctx, "set-up (label counts)")
        total = recv(torch.zeros(protocol.label_classes, dtype=torch.int64), 0, ctx, "set-up (label counts)")
        worker.set_label_prior(total)
    for round in range(start_round, protocol.rounds):
        like = torch.empty(worker.param_numel_at(round), dtype=worker.param_dtype, device="meta")
        waiting = f"round {round} (waiting for rank 0)"
        received = [recv(like, 0, ctx, waiting, on_device=True)]
        if protocol.carries_optimizer:
            optim_like = torch.empty(worker.optim_layout_at(round).wire_numel(worker.param_dtype), dtype=like.dtype)
            received.append(recv(optim_like, 0, ctx, waiting, on_device=True))
        round_starts(ctx.rank, round)
        # handed over, not kept: the worker frees the buffers once they are loaded
        state = received.pop() if protocol.carries_optimizer else None
        report = worker.train_round(round, received.pop(), state)
        what = f"round {round} (returning parameters)"
        send(report.params, 0, ctx, what)
        if report.optim is not None:
            send(report.optim, 0, ctx, what)
        send(report.stats.to_tensor(report.params.dtype).to(report.params.device), 0, ctx, what)
        del report
        if protocol.evaluates_after is not None and protocol.evaluates_after(round):
            _serve_evaluation(worker, ctx, protocol, round)


def _serve_evaluation(worker: SubnetWorker, ctx: DistContext, protocol: WorkerProtocol, round: int) -> None:
    full = torch.empty(worker.full_numel, dtype=worker.full_dtype)  # the model as it is, whatever the wire
    scorer = worker.scorer
    scorer.load(recv(full, 0, ctx, f"round {round} (waiting for the model to evaluate)", on_device=True))
    try:
        for k in range(protocol.batch_norms):
            mine = scorer.batch_norm_moments(k)
            send(mine, 0, ctx, f"round {round} (BatchNorm statistics)")
            scorer.set_batch_norm_moments(k, recv(mine, 0, ctx, f"round {round} (BatchNorm statistics)"))
        if protocol.score:
            send(scorer.score(), 0, ctx, f"round {round} (returning its evaluation)")
    finally:
        scorer.drop()
