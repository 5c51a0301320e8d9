"""The byte ledger: every tensor that goes to or comes from a worker, in bytes.

Transports (GIST) and collectives (data-parallel methods) record what they
move here, by round, worker, direction and kind; the round driver reads the
per-round totals, and run logs keep the records.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import Tensor

TO_WORKER = "to_worker"
FROM_WORKER = "from_worker"
DIRECTIONS = (TO_WORKER, FROM_WORKER)
KINDS = ("params", "data", "stats", "control", "eval", "prior", "bn_stats", "optim", "bn_sync")
SETUP_ROUND = -1


def tensor_nbytes(tensors: Tensor | Iterable[Tensor]) -> int:
    """Bytes of a tensor's (or several tensors') elements; of a sparse
    tensor, its stored values and indices."""
    if isinstance(tensors, Tensor):
        if tensors.layout == torch.sparse_coo:
            return tensor_nbytes([tensors._values(), tensors._indices()])
        if tensors.layout == torch.sparse_csr:
            return tensor_nbytes([tensors.values(), tensors.crow_indices(), tensors.col_indices()])
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
    returns), ``prior`` (GIST's label-prior correction: each worker's
    training-label counts out, the summed counts back, once at set-up),
    ``bn_stats`` (GIST's BatchNorm re-estimation: per-unit sums and squared
    sums of each worker's activations, and the pooled statistics back),
    ``optim`` (optimizer state carried or averaged with the parameters),
    ``bn_sync`` (DDP's synchronised BatchNorm: each layer's batch sums,
    every step),
    ``control`` (the set-up handshake: the round
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

    def record(
        self, round: int, worker: int, direction: str, kind: str, payload: Tensor | Iterable[Tensor] | int
    ) -> int:
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

    def total(
        self,
        *,
        round: Optional[int] = None,
        worker: Optional[int] = None,
        direction: Optional[str] = None,
        kind: Optional[str] = None,
    ) -> int:
        """Sum of bytes over the transfers matching every given filter."""
        if worker is None and round is None and direction is None:
            return self._by_kind[kind] if kind is not None else sum(self._by_kind.values())
        if worker is None and round is not None:
            return sum(
                n
                for (d, k), n in self._by_round.get(round, {}).items()
                if (direction is None or d == direction) and (kind is None or k == kind)
            )
        return sum(
            t.nbytes
            for t in self.transfers
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


def handshake_header(start_round: int, numel: int) -> Tensor:
    """What the coordinator tells each worker before the first round."""
    return torch.tensor([start_round, numel], dtype=torch.int64)


def handshake_reply(data_bytes: int) -> Tensor:
    """What a worker answers: ``int64 [bytes of graph data it holds]``."""
    return torch.tensor([int(data_bytes)], dtype=torch.int64)


def record_handshake(ledger: ByteLedger, worker: int, header: Tensor, reply: Tensor) -> None:
    ledger.record(SETUP_ROUND, worker, TO_WORKER, "control", header)
    ledger.record(SETUP_ROUND, worker, FROM_WORKER, "control", reply)
    ledger.record(SETUP_ROUND, worker, TO_WORKER, "data", int(reply[0]))
