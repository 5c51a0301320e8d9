r"""Collectives among ``m`` workers: the seam every method that is not GIST's central coordinator talks through.

A :class:`Collective` knows which workers live in this process
(:attr:`~Collective.local_workers`): all ``m`` for :class:`InProcessCollective`
(a deterministic simulation that runs them one after another), one for
:class:`gist.comm.dist_collective.DistCollective` (a rank of a ``torch.distributed``
job). A method hands it one tensor per local worker and gets the collective's
result, so the method's code is the same on both.

Ledger conventions (``kind="params"`` unless said otherwise):

- An all-reduce of a buffer of ``N`` values of ``s`` bytes among ``m``
  workers is counted as a ring all-reduce: every worker sends and receives
  ``(m-1)/m·N`` values (reduce-scatter plus all-gather), recorded per worker
  as ``from_worker = to_worker = ((m-1)·N // m)·s`` bytes
  (:func:`ring_allreduce_bytes`). By symmetry every worker's entries are
  equal, so every process records them for all workers, and each process's
  ledger is complete.
- The two halves of a ring all-reduce apart, as fully sharded data
  parallelism runs them, of a buffer of ``N`` values split into ``m`` equal
  shards: an all-gather is recorded ``to_worker`` (the ``N − N/m`` values a
  worker receives), a reduce-scatter ``from_worker`` (the ``N − N/m`` it
  sends), for every worker; so an all-reduce counts as one of each.
- A broadcast from worker 0 of ``N`` values is recorded ``to_worker`` for
  every worker ``i ≥ 1``.
- Stats reports (:class:`~gist.comm.WorkerStats`) gathered to worker 0:
  ``from_worker``, ``stats``, for every worker.
- The set-up handshake (:meth:`Collective.handshake`): ``control`` and
  ``data`` as in :func:`gist.comm.ledger.record_handshake`.
- Objects gathered or scattered for checkpoints are not training traffic
  and are not recorded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from torch import Tensor

from ..errors import ConfigError
from .ledger import FROM_WORKER, TO_WORKER, ByteLedger, handshake_header, handshake_reply, record_handshake
from .stats import WorkerStats


def ring_allreduce_bytes(numel: int, element_size: int, num_workers: int) -> int:
    """Bytes one worker sends (and, equally, receives) in a ring all-reduce of
    ``numel`` values of ``element_size`` bytes among ``num_workers`` workers:
    ``((m-1)·numel // m)·element_size``. Both directions together give
    ``2·(m-1)/m·numel·element_size`` when ``m`` divides ``(m-1)·numel``."""
    m = int(num_workers)
    return ((m - 1) * int(numel) // m) * int(element_size)


class Collective(ABC):
    """All-reduce, broadcast and gathers among ``num_workers`` workers, of
    which :attr:`local_workers` live in this process; all recorded in
    :attr:`ledger`."""

    def __init__(self, num_workers: int, local_workers: Sequence[int], ledger: Optional[ByteLedger] = None) -> None:
        if num_workers < 1:
            raise ConfigError(f"a collective needs at least one worker, got {num_workers}")
        self.num_workers = num_workers
        self.local_workers = tuple(local_workers)
        self.ledger = ledger if ledger is not None else ByteLedger()

    @property
    def is_coordinator(self) -> bool:
        """Whether worker 0 (which evaluates and keeps the log) is local."""
        return 0 in self.local_workers

    @property
    def sequential(self) -> bool:
        """Whether the local workers run one after another (a simulation)."""
        return len(self.local_workers) > 1

    # ---------------------------------------------------------- recording

    def _record_allreduce(self, round: int, numel: int, element_size: int, kind: str = "params") -> None:
        nbytes = ring_allreduce_bytes(numel, element_size, self.num_workers)
        for w in range(self.num_workers):
            self.ledger.record(round, w, TO_WORKER, kind, nbytes)
            self.ledger.record(round, w, FROM_WORKER, kind, nbytes)

    def _record_buffers(self, what: str, round: int, flats: Mapping[int, Tensor], kind: str) -> None:
        """Check that every local worker gave a buffer, and count their all-reduce."""
        if set(flats) != set(self.local_workers):
            raise ValueError(f"{what} needs a buffer from each local worker {self.local_workers}")
        first = flats[self.local_workers[0]]
        self._record_allreduce(round, first.numel(), first.element_size(), kind)

    def _record_broadcast(self, round: int, nbytes: int, kind: str) -> None:
        for w in range(1, self.num_workers):
            self.ledger.record(round, w, TO_WORKER, kind, nbytes)

    def _record_stats(self, round: int, nbytes: int) -> None:
        for w in range(self.num_workers):
            self.ledger.record(round, w, FROM_WORKER, "stats", nbytes)

    # ---------------------------------------------------------- operations

    def handshake(self, start_round: int, numel: int, data_bytes: Mapping[int, int]) -> int:
        """Set-up: worker 0 tells every worker ``[start_round, numel]``; every
        worker answers with the bytes of graph data it holds
        (``data_bytes[i]`` for each local worker). Returns worker 0's start
        round; raises if a worker's buffer size differs from worker 0's."""
        header = handshake_header(start_round, numel)
        header, replies = self._exchange_handshake(header, data_bytes)
        if int(header[1]) != numel:
            raise ConfigError(
                f"worker {self.local_workers[0]}: worker 0's buffer has {int(header[1])} values, this one's "
                f"{numel}: the workers were started with different settings"
            )
        for w in range(self.num_workers):
            record_handshake(self.ledger, w, header, replies[w])
        return int(header[0])

    @abstractmethod
    def _exchange_handshake(self, header: Tensor, data_bytes: Mapping[int, int]) -> tuple[Tensor, dict[int, Tensor]]:
        """Worker 0's header, and every worker's ``int64 [data bytes]`` reply."""

    def all_reduce_mean(
        self, round: int, flats: Mapping[int, Tensor], kind: str = "params", record: bool = True
    ) -> Tensor:
        r"""``Σ_i flats_i / m`` over all ``m`` workers (each local worker gives
        its own flat buffer; ``flats`` may be modified). Recorded as a ring
        all-reduce of ``kind`` for every worker, unless ``record`` is false
        (a simulation that counts the traffic it stands for itself)."""
        if record:
            self._record_buffers("all_reduce_mean", round, flats, kind)
        return self._all_reduce_mean(flats)

    @abstractmethod
    def _all_reduce_mean(self, flats: Mapping[int, Tensor]) -> Tensor: ...

    def all_reduce_sum(self, round: int, flats: Mapping[int, Tensor], kind: str) -> Tensor:
        r"""``Σ_i flats_i`` over all ``m`` workers (a new tensor), recorded as a
        ring all-reduce of ``kind`` for every worker."""
        self._record_buffers("all_reduce_sum", round, flats, kind)
        return self._all_reduce_sum(flats)

    @abstractmethod
    def _all_reduce_sum(self, flats: Mapping[int, Tensor]) -> Tensor: ...

    def record_all_gather(self, round: int, numel: int, element_size: int, kind: str = "params") -> None:
        """Count an all-gather into a buffer of ``numel`` values (``m`` equal
        shards) that the caller ran, or simulates: ``to_worker``, for every worker."""
        nbytes = (int(numel) - int(numel) // self.num_workers) * int(element_size)
        for w in range(self.num_workers):
            self.ledger.record(round, w, TO_WORKER, kind, nbytes)

    def record_reduce_scatter(self, round: int, numel: int, element_size: int, kind: str = "params") -> None:
        """Count a reduce-scatter of a buffer of ``numel`` values (``m`` equal
        shards) that the caller ran, or simulates: ``from_worker``, for every worker."""
        nbytes = (int(numel) - int(numel) // self.num_workers) * int(element_size)
        for w in range(self.num_workers):
            self.ledger.record(round, w, FROM_WORKER, kind, nbytes)

    def record_all_reduce(self, round: int, numel: int, element_size: int) -> None:
        """Count an all-reduce of ``numel`` values that the caller ran itself
        (``torch.nn.parallel.DistributedDataParallel``'s buckets), as
        :meth:`all_reduce_mean` counts its own."""
        self._record_allreduce(round, numel, element_size)

    def watched(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, which takes part in collectives (a wrapped model's
        backward pass): a worker that died or hung meanwhile is named."""
        return fn()

    def broadcast(self, round: int, flat: Tensor, kind: str = "params") -> Tensor:
        """Worker 0's ``flat`` on every process (``flat`` is this process's
        buffer of the right size; overwritten where worker 0 is not local)."""
        self._record_broadcast(round, flat.numel() * flat.element_size(), kind)
        return self._broadcast(flat)

    @abstractmethod
    def _broadcast(self, flat: Tensor) -> Tensor: ...

    def gather_stats(self, round: int, stats: Mapping[int, WorkerStats], dtype: Any) -> dict[int, WorkerStats]:
        """Every worker's report on the coordinator (only the local ones
        elsewhere); each travels as ``WorkerStats.slots(dtype)`` values of ``dtype``."""
        self._record_stats(round, WorkerStats.nbytes(dtype))
        return self._gather_stats(stats, dtype)

    @abstractmethod
    def _gather_stats(self, stats: Mapping[int, WorkerStats], dtype: Any) -> dict[int, WorkerStats]: ...

    @abstractmethod
    def all_to_all(
        self, sends: Mapping[int, Mapping[int, Tensor]], recv_numel: Mapping[int, Mapping[int, int]], what: str
    ) -> dict[int, dict[int, Tensor]]:
        """Each local worker ``s`` sends ``sends[s][d]`` (one flat buffer) to
        every worker ``d``; returns, for each local worker ``d``, what every
        worker sent it (``{d: {s: buffer}}``). ``recv_numel[d][s]`` is the
        size of each buffer a local worker receives (the senders' dtype).
        Not recorded: the caller counts what the buffers mean."""

    @abstractmethod
    def all_gather(self, flats: Mapping[int, Tensor], what: str) -> list[Tensor]:
        """Every worker's buffer (all of one size), in worker order. Not recorded."""

    @abstractmethod
    def broadcast_from(self, src: int, flat: Tensor, what: str) -> Tensor:
        """Worker ``src``'s ``flat`` on every process, every process calling it
        in the same order (``flat``: the buffer where ``src`` is local, else
        one of its size and dtype to receive into). Not recorded."""

    @abstractmethod
    def gather_objects(self, objects: Mapping[int, Any]) -> dict[int, Any]:
        """Every worker's object on the coordinator (``{}`` elsewhere); for checkpoints."""

    @abstractmethod
    def scatter_objects(self, objects: Optional[Mapping[int, Any]]) -> dict[int, Any]:
        """The coordinator's ``objects[i]`` delivered to each local worker ``i``."""

    def close(self) -> None:
        """Release resources (the process group is the caller's)."""

    def round_starts(self, round: int) -> None:
        """Called by every worker as it starts ``round``: a real process runs
        the round hook there (:mod:`gist.comm.hooks`)."""


class InProcessCollective(Collective):
    """All ``m`` workers in this process: every collective is computed here, in
    worker order, and recorded as if it had crossed a wire."""

    def __init__(self, num_workers: int, ledger: Optional[ByteLedger] = None) -> None:
        super().__init__(num_workers, range(num_workers), ledger)

    @property
    def sequential(self) -> bool:
        return True

    def _exchange_handshake(self, header: Tensor, data_bytes: Mapping[int, int]) -> tuple[Tensor, dict[int, Tensor]]:
        return header, {w: handshake_reply(n) for w, n in data_bytes.items()}

    def _all_reduce_mean(self, flats: Mapping[int, Tensor]) -> Tensor:
        total: Optional[Tensor] = None
        for w in self.local_workers:
            part = flats[w].div_(self.num_workers)
            total = part if total is None else total.add_(part)
        assert total is not None
        return total

    def _all_reduce_sum(self, flats: Mapping[int, Tensor]) -> Tensor:
        total = flats[self.local_workers[0]].clone()
        for w in self.local_workers[1:]:
            total.add_(flats[w])
        return total

    def _broadcast(self, flat: Tensor) -> Tensor:
        return flat

    def _gather_stats(self, stats: Mapping[int, WorkerStats], dtype: Any) -> dict[int, WorkerStats]:
        # as they would travel after a buffer of this dtype
        return {w: WorkerStats.from_tensor(stats[w].to_tensor(dtype)) for w in self.local_workers}

    def all_to_all(
        self, sends: Mapping[int, Mapping[int, Tensor]], recv_numel: Mapping[int, Mapping[int, int]], what: str
    ) -> dict[int, dict[int, Tensor]]:
        return {d: {s: sends[s][d] for s in self.local_workers} for d in self.local_workers}

    def all_gather(self, flats: Mapping[int, Tensor], what: str) -> list[Tensor]:
        return [flats[w] for w in range(self.num_workers)]

    def broadcast_from(self, src: int, flat: Tensor, what: str) -> Tensor:
        return flat

    def gather_objects(self, objects: Mapping[int, Any]) -> dict[int, Any]:
        return dict(objects)

    def scatter_objects(self, objects: Optional[Mapping[int, Any]]) -> dict[int, Any]:
        return dict(objects or {})
