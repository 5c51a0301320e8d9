"""``torch.distributed``: GIST's transport, the data-parallel collectives, process groups.

GIST (:class:`DistTransport`, :func:`serve_worker`): rank 0 owns the full
model, runs the round loop and is also worker 0 (as in the published setup);
rank ``i > 0`` holds only its current sub-network and its own graph data.
Each round rank 0 sends every worker one flat buffer (point-to-point, so a
failure names its rank) and receives one flat buffer back: the trained
parameters followed by a 3-value stats report. The width split never
travels: every rank derives it from ``(seed, round)``.

Start it with ``torchrun --nproc-per-node M -m gist train --backend dist ...``
or with ``gist train --procs M ...``, which spawns the M processes itself on
the loopback interface.

Data-parallel methods (:class:`DistCollective`): every rank is one worker and
runs the same round driver; all-reduces, broadcasts and gathers are
``torch.distributed`` collectives, recorded in the ledger exactly as the
in-process simulation records them.
"""

from __future__ import annotations

import functools
import inspect
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..devices import check_backend, default_backend, resolve_device
from .collective import Collective
from .ledger import (
    FROM_WORKER,
    SETUP_ROUND,
    TO_WORKER,
    ByteLedger,
    handshake_header,
    handshake_reply,
    record_handshake,
    tensor_nbytes,
)
from .liveness import Liveness, PeerSilent
from .transport import EVAL_COUNTS, Evaluation, SubnetWorker, Transport, WorkerReport, WorkerStats

DEFAULT_TIMEOUT_S = 60.0
PROCESS_GROUP_TIMEOUT = timedelta(hours=24)
"""gloo's own bound on one operation: long, because :class:`Liveness`, not
gloo, decides when a silent peer is dead or hung (a slow one is waited for)."""
T = TypeVar("T")


class WorkerFailure(RuntimeError):
    """A worker (or the coordinator) stopped answering or died."""

    def __init__(self, rank: int, what: str, cause: BaseException) -> None:
        super().__init__(f"rank {rank} failed during {what}: {type(cause).__name__}: {cause}")
        self.rank = rank


class CollectiveFailure(WorkerFailure):
    """A collective failed on this rank: another rank died or stopped answering
    (a collective cannot tell which)."""

    def __init__(self, rank: int, what: str, cause: BaseException) -> None:
        RuntimeError.__init__(
            self,
            f"rank {rank}: {what} failed, so another rank died or stopped answering: {type(cause).__name__}: {cause}",
        )
        self.rank = rank


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    timeout_s: float
    liveness: Optional[Liveness] = field(default=None, compare=False, repr=False)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where this rank computes (:func:`gist.devices.resolve_device`)."""
    """Heartbeats and watched waits; without it a wait is bounded by the
    process group's own timeout."""

    def wait_on(self, peers: Sequence[int], fn: Callable[[], T]) -> T:
        """``fn()``, a blocking call that waits on ``peers``, failing with
        :class:`~gist.comm.liveness.PeerSilent` if one of them is dead or hung."""
        return fn() if self.liveness is None else self.liveness.call(fn, peers)

    def close(self) -> None:
        if self.liveness is not None:
            self.liveness.stop()


def init_distributed(
    backend: Optional[str] = None, timeout_s: float = DEFAULT_TIMEOUT_S, device: str = "auto"
) -> DistContext:
    """Join the process group described by torchrun's environment variables
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

    ``device`` (a ``device`` setting) is where this rank computes; the
    backend defaults to NCCL for a CUDA device and gloo otherwise, and a CUDA
    rank makes its device the current one (NCCL's collectives use it).

    ``timeout_s`` bounds the rendezvous, and how long a rank waits on a
    peer that is dead (no heartbeat) or hung (alive, but idle and waiting on
    no one); a peer that is only slow is waited for (:mod:`.liveness`).
    """
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"--backend dist needs the torchrun environment ({', '.join(missing)} not set): start with "
            f"`torchrun --nproc-per-node M -m gist train --backend dist ...` or use `gist train --procs M`"
        )
    where = resolve_device(device)
    backend = backend or default_backend(where)
    check_backend(backend, where)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    if timeout_s <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout_s}")
    if not dist.is_initialized():
        store, rank, world_size = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout_s)))
        store.set_timeout(timedelta(seconds=timeout_s))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=PROCESS_GROUP_TIMEOUT)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    liveness = Liveness.from_environment(rank, timeout_s)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return DistContext(rank, world_size, local_rank, backend, timeout_s, liveness, where)


def comm_device(ctx: DistContext) -> torch.device:
    """Where message buffers live: the rank's GPU for NCCL, the CPU for gloo."""
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


def _send(tensor: Tensor, dst: int, ctx: DistContext, what: str) -> None:
    buf = tensor.to(comm_device(ctx))
    try:
        ctx.wait_on([dst], lambda: dist.send(buf, dst=dst))
    except Exception as exc:  # noqa: BLE001 - gloo raises RuntimeError/DistBackendError
        raise WorkerFailure(dst, what, exc) from exc


def _recv(like: Tensor, src: int, ctx: DistContext, what: str, on_device: bool = False) -> Tensor:
    """A message like ``like`` from ``src``: on the CPU, or (``on_device``)
    where it arrived (a parameter buffer, loaded straight into a model there)."""
    buf = torch.empty(like.shape, dtype=like.dtype, device=comm_device(ctx))
    try:
        ctx.wait_on([src], lambda: dist.recv(buf, src=src))
    except Exception as exc:  # noqa: BLE001
        raise WorkerFailure(src, what, exc) from exc
    return buf if on_device else buf.cpu()


def collective(ctx: DistContext, what: str, fn: Callable[[], T]) -> T:
    """``fn()``, a collective every rank takes part in, watched like every
    wait: a peer judged dead or hung is named (:class:`WorkerFailure`); any
    other failure is a :class:`CollectiveFailure`."""
    try:
        return ctx.wait_on(range(ctx.world_size), fn)
    except PeerSilent as exc:
        raise WorkerFailure(exc.rank, what, exc) from exc
    except Exception as exc:  # noqa: BLE001 - gloo raises RuntimeError/DistBackendError
        raise CollectiveFailure(ctx.rank, what, exc) from exc


def _post(op, tensor: Tensor, peer: int, what: str):
    try:
        return op(tensor, peer)
    except Exception as exc:  # noqa: BLE001
        raise WorkerFailure(peer, what, exc) from exc


def _wait(work, peer: int, ctx: DistContext, what: str) -> None:
    try:
        ctx.wait_on([peer], work.wait)
    except Exception as exc:  # noqa: BLE001
        raise WorkerFailure(peer, what, exc) from exc


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
        for rank in range(1, self.num_subnets):
            _send(header, rank, self.ctx, "set-up")
        for rank in range(1, self.num_subnets):
            reply = _recv(torch.zeros(1, dtype=torch.int64), rank, self.ctx, "set-up")
            record_handshake(self.ledger, rank, header, reply)

    def run_round(self, round: int, payloads: Sequence[Tensor]) -> list[WorkerReport]:
        if len(payloads) != self.num_subnets:
            raise ValueError(f"expected {self.num_subnets} payloads, got {len(payloads)}")
        device = comm_device(self.ctx)
        numel = payloads[0].numel()
        # Post every send and receive at once, so that one slow or dead
        # worker cannot hold up the others' messages and is the one named.
        sends, recvs, bufs = {}, {}, {}
        dtype = payloads[0].dtype
        for rank in range(1, self.num_subnets):
            self.ledger.record(round, rank, TO_WORKER, "params", payloads[rank])
            sends[rank] = _post(dist.isend, payloads[rank].to(device), rank, f"round {round} (sending parameters)")
            bufs[rank] = (
                torch.empty(numel, dtype=dtype, device=device),
                torch.empty(WorkerStats.slots(dtype), dtype=dtype, device=device),
            )
            recvs[rank] = [
                _post(dist.irecv, buf, rank, f"round {round} (waiting for its parameters)") for buf in bufs[rank]
            ]
        self.ledger.record(round, 0, TO_WORKER, "params", payloads[0])
        own = self.worker0.train_round(round, payloads[0].clone())
        reports = [WorkerReport(own.params, WorkerStats.from_tensor(own.stats.to_tensor(own.params.dtype)))]
        for rank in range(1, self.num_subnets):
            _wait(sends[rank], rank, self.ctx, f"round {round} (sending parameters)")
            for work in recvs[rank]:
                _wait(work, rank, self.ctx, f"round {round} (waiting for its parameters)")
            params, stats = bufs[rank]
            reports.append(WorkerReport(params, WorkerStats.from_tensor(stats.cpu())))
        stats_bytes = WorkerStats.nbytes(payloads[0].dtype)
        for rank, report in enumerate(reports):
            self.ledger.record(round, rank, FROM_WORKER, "params", report.params)
            self.ledger.record(round, rank, FROM_WORKER, "stats", stats_bytes)
        return reports

    def share_label_counts(self, num_classes: int) -> Tensor:
        counts = [self.worker0.label_counts(num_classes)]
        for rank in range(1, self.num_subnets):
            counts.append(_recv(torch.zeros(num_classes, dtype=torch.int64), rank, self.ctx, "set-up (label counts)"))
        total = torch.stack(counts).sum(0)
        for rank in range(1, self.num_subnets):
            _send(total, rank, self.ctx, "set-up (label counts)")
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
        for rank in range(1, self.num_subnets):
            self.ledger.record(round, rank, TO_WORKER, "eval", flat_model)
            sends[rank] = _post(dist.isend, flat_model.to(device), rank, what)
        self.ledger.record(round, 0, TO_WORKER, "eval", flat_model)
        if model is None or not self.worker0.lend_eval_model(model):
            self.worker0.load_eval_model(flat_model.clone())
        try:
            for rank in range(1, self.num_subnets):
                _wait(sends[rank], rank, self.ctx, what)
            totals = []
            for k in range(batch_norms):
                mine = self.worker0.batch_norm_moments(k)
                moments = [mine] + [
                    _recv(mine, rank, self.ctx, f"round {round} (BatchNorm statistics)")
                    for rank in range(1, self.num_subnets)
                ]
                total = torch.stack(moments).sum(0)
                for rank in range(1, self.num_subnets):
                    _send(total, rank, self.ctx, f"round {round} (BatchNorm statistics)")
                for rank, c in enumerate(moments):
                    self.ledger.record(round, rank, FROM_WORKER, "bn_stats", c)
                    self.ledger.record(round, rank, TO_WORKER, "bn_stats", total)
                self.worker0.set_batch_norm_moments(k, total.clone())
                totals.append(total)
            counts = []
            if score:
                counts.append(self.worker0.score())
                for rank in range(1, self.num_subnets):
                    like = torch.zeros(EVAL_COUNTS, dtype=torch.int64)
                    counts.append(_recv(like, rank, self.ctx, f"round {round} (waiting for its evaluation)"))
                for rank, c in enumerate(counts):
                    self.ledger.record(round, rank, FROM_WORKER, "eval", c)
        finally:
            self.worker0.drop_eval_model()
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


def serve_worker(worker: SubnetWorker, ctx: DistContext, protocol: WorkerProtocol) -> None:
    """Rank ``i > 0`` of a GIST job: answer the handshake (and share label
    counts), then train every round rank 0 sends until ``protocol.rounds``;
    after each round rank 0 evaluates, take the full model it sends, pool
    BatchNorm statistics with it and score the model on this worker's own
    nodes, as ``protocol`` says."""
    header = _recv(torch.zeros(2, dtype=torch.int64), 0, ctx, "set-up (waiting for rank 0)")
    start_round, numel = int(header[0]), int(header[1])
    if numel != worker.param_numel_at(start_round):
        raise RuntimeError(
            f"rank {ctx.rank}: rank 0 sends sub-networks of {numel} values but this rank's model has "
            f"{worker.param_numel_at(start_round)}: the ranks were started with different settings"
        )
    worker.fast_forward(start_round)
    _send(handshake_reply(tensor_nbytes(worker.data_tensors())), 0, ctx, "set-up")
    if protocol.label_classes is not None:
        _send(worker.label_counts(protocol.label_classes), 0, ctx, "set-up (label counts)")
        total = _recv(torch.zeros(protocol.label_classes, dtype=torch.int64), 0, ctx, "set-up (label counts)")
        worker.set_label_prior(total)
    for round in range(start_round, protocol.rounds):
        like = torch.empty(worker.param_numel_at(round), dtype=worker.param_dtype, device="meta")
        received = [_recv(like, 0, ctx, f"round {round} (waiting for rank 0)", on_device=True)]
        inject_fault(ctx.rank, round)
        # handed over, not kept: the worker frees the buffer once it is loaded
        report = worker.train_round(round, received.pop())
        what = f"round {round} (returning parameters)"
        _send(report.params, 0, ctx, what)
        _send(report.stats.to_tensor(report.params.dtype).to(report.params.device), 0, ctx, what)
        del report
        if protocol.evaluates_after is not None and protocol.evaluates_after(round):
            _serve_evaluation(worker, ctx, protocol, round)


def _serve_evaluation(worker: SubnetWorker, ctx: DistContext, protocol: WorkerProtocol, round: int) -> None:
    full = torch.empty(worker.full_numel, dtype=worker.param_dtype)
    worker.load_eval_model(_recv(full, 0, ctx, f"round {round} (waiting for the model to evaluate)", on_device=True))
    try:
        for k in range(protocol.batch_norms):
            mine = worker.batch_norm_moments(k)
            _send(mine, 0, ctx, f"round {round} (BatchNorm statistics)")
            worker.set_batch_norm_moments(k, _recv(mine, 0, ctx, f"round {round} (BatchNorm statistics)"))
        if protocol.score:
            _send(worker.score(), 0, ctx, f"round {round} (returning its evaluation)")
    finally:
        worker.drop_eval_model()


class DistCollective(Collective):
    """This process is worker ``ctx.rank`` of ``ctx.world_size``; every
    operation is a ``torch.distributed`` collective on the rank's device
    (NCCL), or through host memory (gloo).

    A collective that fails (a rank died or hung past the timeout) raises
    :class:`CollectiveFailure`."""

    def __init__(self, ctx: DistContext, ledger: Optional[ByteLedger] = None) -> None:
        super().__init__(ctx.world_size, [ctx.rank], ledger)
        self.ctx = ctx
        self.device = comm_device(ctx)

    @property
    def sequential(self) -> bool:
        return False

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return collective(self.ctx, what, fn)

    def watched(self, what: str, fn: Callable[[], Any]) -> Any:
        return self._call(what, fn)

    def _exchange_handshake(self, header: Tensor, data_bytes: Mapping[int, int]) -> tuple[Tensor, dict[int, Tensor]]:
        header = header.to(self.device)
        self._call("set-up", lambda: dist.broadcast(header, src=0))
        gathered = [torch.zeros(1, dtype=torch.int64, device=self.device) for _ in range(self.num_workers)]
        mine = handshake_reply(data_bytes[self.ctx.rank]).to(self.device)
        self._call("set-up", lambda: dist.all_gather(gathered, mine))
        return header.cpu(), {w: t.cpu() for w, t in enumerate(gathered)}

    def _all_reduce_mean(self, flats: Mapping[int, Tensor]) -> Tensor:
        own = flats[self.ctx.rank]
        flat = own.div_(self.num_workers).to(self.device).contiguous()
        self._call("an all-reduce", lambda: dist.all_reduce(flat))
        return flat.to(own.device)

    def _broadcast(self, flat: Tensor) -> Tensor:
        buf = flat.to(self.device).contiguous()
        self._call("a broadcast", lambda: dist.broadcast(buf, src=0))
        return buf.to(flat.device)

    def _gather_stats(self, stats: Mapping[int, WorkerStats], dtype: Any) -> dict[int, WorkerStats]:
        mine = stats[self.ctx.rank].to_tensor(dtype).to(self.device)
        if self.ctx.rank != 0:
            self._call("gathering the stats", lambda: dist.gather(mine, None, dst=0))
            return {self.ctx.rank: WorkerStats.from_tensor(mine.cpu())}
        out = [torch.zeros(WorkerStats.slots(dtype), dtype=dtype, device=self.device) for _ in range(self.num_workers)]
        self._call("gathering the stats", lambda: dist.gather(mine, out, dst=0))
        return {w: WorkerStats.from_tensor(t.cpu()) for w, t in enumerate(out)}

    def round_starts(self, round: int) -> None:
        inject_fault(self.ctx.rank, round)

    def all_to_all(
        self, sends: Mapping[int, Mapping[int, Tensor]], recv_numel: Mapping[int, Mapping[int, int]], what: str
    ) -> dict[int, dict[int, Tensor]]:
        me = self.ctx.rank
        mine = sends[me]
        dtype = mine[me].dtype
        # every send and receive posted at once (a pair-wise exchange: gloo has no all-to-all of lists)
        sends_out, recvs, bufs = {}, {}, {}
        for peer in range(self.num_workers):
            if peer == me:
                continue
            bufs[peer] = torch.empty(recv_numel[me][peer], dtype=dtype, device=self.device)
            recvs[peer] = _post(dist.irecv, bufs[peer], peer, what)
            sends_out[peer] = _post(dist.isend, mine[peer].to(self.device).contiguous(), peer, what)
        for peer in sends_out:
            _wait(sends_out[peer], peer, self.ctx, what)
            _wait(recvs[peer], peer, self.ctx, what)
        received = {peer: buf.to(mine[me].device) for peer, buf in bufs.items()}
        received[me] = mine[me]
        return {me: dict(sorted(received.items()))}

    def all_gather(self, flats: Mapping[int, Tensor], what: str) -> list[Tensor]:
        own = flats[self.ctx.rank]
        mine = own.to(self.device).contiguous()
        out = [torch.empty_like(mine) for _ in range(self.num_workers)]
        self._call(what, lambda: dist.all_gather(out, mine))
        return [t.to(own.device) for t in out]

    def fetch(self, owner: int, key: int, like: Tensor, provide: Callable[[int, int], Tensor]) -> Tensor:
        if owner == self.ctx.rank:
            return provide(owner, key)
        what = "evaluation (fetching a shard)"
        _send(torch.tensor([key], dtype=torch.int64), owner, self.ctx, what)
        return _recv(like, owner, self.ctx, what, on_device=True).to(like.device)

    def broadcast_from(self, owner: int, key: int, like: Tensor, provide: Callable[[int, int], Tensor]) -> Tensor:
        if owner == self.ctx.rank:
            buf = provide(owner, key).to(self.device).contiguous()
        else:
            buf = torch.empty(like.shape, dtype=like.dtype, device=self.device)
        self._call("evaluation (sharing a shard)", lambda: dist.broadcast(buf, src=owner))
        return buf.to(like.device)

    def serve_fetches(self, provide: Callable[[int, int], Tensor]) -> None:
        what = "evaluation (sending a shard)"
        while True:
            key = int(_recv(torch.zeros(1, dtype=torch.int64), 0, self.ctx, what)[0])
            if key < 0:
                return
            _send(provide(self.ctx.rank, key), 0, self.ctx, what)

    def end_fetches(self) -> None:
        for rank in range(1, self.num_workers):
            _send(torch.tensor([-1], dtype=torch.int64), rank, self.ctx, "evaluation (done)")

    def gather_objects(self, objects: Mapping[int, Any]) -> dict[int, Any]:
        out: Optional[list[Any]] = [None] * self.num_workers if self.ctx.rank == 0 else None
        self._call("gathering a checkpoint", lambda: dist.gather_object(objects[self.ctx.rank], out, dst=0))
        return dict(enumerate(out)) if out is not None else {}

    def scatter_objects(self, objects: Optional[Mapping[int, Any]]) -> dict[int, Any]:
        inputs = [objects[w] for w in range(self.num_workers)] if self.ctx.rank == 0 and objects else None
        received: list[Any] = [None]
        self._call("restoring a checkpoint", lambda: dist.scatter_object_list(received, inputs, src=0))
        return {self.ctx.rank: received[0]}

    def data_parallel(self, module: nn.Module) -> Optional[nn.Module]:
        """On NCCL, ``module`` wrapped in ``torch.nn.parallel.DistributedDataParallel``
        (``device_ids`` on the rank's GPU); ``None`` on gloo, where the method
        all-reduces one flat gradient per step itself (:meth:`all_reduce_mean`):
        DDP's reducer over gloo deadlocked at teardown here (its destructor
        holds the GIL while a gloo thread finishing a work waits for it).

        With DDP, every backward pass averages the gradients,
        bucket by bucket, with DDP's own all-reduce, which scales each
        gradient by ``1/m`` as it copies it into its bucket and then sums the
        buckets: :meth:`all_reduce_mean`'s arithmetic (exactly so for ``m`` a
        power of two; otherwise ``x·(1/m)`` and ``x/m`` may differ in the
        last bit). The caller counts the bytes (one all-reduce of ``|θ|``
        values per step). Buffers are not broadcast (each worker's BatchNorm
        keeps its own running statistics), and the wrapper does not copy the
        model at construction: the method broadcasts worker 0's model itself
        (counted). No Python communication hook: its callbacks run on gloo's
        thread and deadlock with the process group's teardown."""
        from torch.nn.parallel import DistributedDataParallel

        if self.ctx.backend != "nccl":
            return None
        device_ids = [self.ctx.device] if self.ctx.device.type == "cuda" else None
        # torch >= 2.13 names "no buffer broadcast before each forward" forward_sync_buffers
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in _ddp_parameters() else "broadcast_buffers"
        return DistributedDataParallel(module, device_ids=device_ids, init_sync=False, **{no_sync: False})


@functools.cache
def _ddp_parameters() -> set[str]:
    """The keyword arguments ``DistributedDataParallel`` takes in this torch."""
    from torch.nn.parallel import DistributedDataParallel

    return set(inspect.signature(DistributedDataParallel.__init__).parameters)


FAULT_ENV = "GIST_INJECT_FAULT"
FAULT_STAMP_ENV = "GIST_FAULT_STAMP"
FAULT_KINDS = ("exit", "kill", "hang", "slow")


def inject_fault(rank: int, round: int) -> None:
    """For fault-tolerance tests: ``GIST_INJECT_FAULT=RANK:ROUND:KIND`` makes
    that rank, as it starts that round, die (``exit``: status 17; ``kill``:
    SIGKILL, as the out-of-memory killer does), stop answering (``hang``) or
    compute for a while before training (``slow=SECONDS``).
    With ``GIST_FAULT_STAMP=PATH`` it first writes the wall-clock time to PATH."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fault_rank, fault_round, fault = spec.split(":")
    kind, _, arg = fault.partition("=")
    if kind not in FAULT_KINDS:
        raise ValueError(f"{FAULT_ENV} kind must be one of {FAULT_KINDS}, got {fault!r}")
    if (int(fault_rank), int(fault_round)) != (rank, round):
        return
    stamp = os.environ.get(FAULT_STAMP_ENV)
    if stamp:
        with open(stamp, "w") as fh:
            fh.write(repr(time.time()))
    if kind == "exit":
        os._exit(17)
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "slow":  # busy, as local steps are, for longer than the timeout
        end = time.monotonic() + float(arg)
        x = torch.randn(256, 256)
        while time.monotonic() < end:
            x = torch.tanh(x @ x)
        return
    while True:
        time.sleep(60)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
