r"""The two exchanges of a sharded GIST round: sub-networks put together from the owners' pieces, and given back.

Each round every process knows, from the split alone, which *piece* of each
sub-network every owner holds (:meth:`~.shards.Ownership.plan`):
:class:`RoundPieces`. :class:`SubnetExchange` then moves them:

* :meth:`~SubnetExchange.assemble` (one all-to-all): owner ``o`` sends worker
  ``w`` its piece of group ``w mod s``; each local worker's sub-network is put
  together in place in its flat buffer (its own piece never travels);
* :meth:`~SubnetExchange.give_back` (one all-to-all and one all-gather):
  worker ``w`` sends each owner the owner's rows of what it trained; an owner
  averages a group's copies (float64, in member order, as the central
  coordinator does) into its shard; the shared tensors are averaged in two
  levels, within each group and across groups.

Ledger (``params``, in the wire dtype; ``optim`` for the exchange of the
carried optimizer state, which moves the same way): the pieces a worker
receives from other owners (``to_worker``); the pieces it returns to other
owners and its shared tensors to the ``m - 1`` others (``from_worker``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...comm import FROM_WORKER, TO_WORKER, Collective
from ...subnets import FlatLayout, RoundPlan, WidthPartition, average_states
from .messages import WorkerReport
from .shard_store import ShardStore
from .shards import Ownership, PiecePlan


@dataclass
class RoundPieces:
    """Who holds which piece of which sub-network in one round."""

    ownership: Ownership
    partition: WidthPartition
    plan: RoundPlan
    layout: FlatLayout
    """The round's sub-network layout (width ``d / s``)."""
    pieces: dict[tuple[int, int], PiecePlan] = field(init=False)
    """``(owner, group)`` -> that owner's piece of that group's sub-network."""
    numel: dict[tuple[int, int], int] = field(init=False)
    shapes: dict[str, tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:
        own, m = self.ownership, self.ownership.num_owners
        self.shapes = dict(zip(self.layout.names, self.layout.shapes))
        self.pieces = {(o, g): own.plan(self.partition, g, o) for o in range(m) for g in range(self.plan.groups)}
        self.numel = {key: own.piece_numel(p, self.shapes) for key, p in self.pieces.items()}

    def foreign_numel(self, worker: int) -> int:
        """Values of worker ``worker``'s sub-network that other owners hold."""
        g = self.plan.group_of(worker)
        return sum(self.numel[o, g] for o in range(self.ownership.num_owners) if o != worker)


class SubnetExchange:
    """Moves sub-networks between the owners' shards (``store``) and the workers
    (module docstring), counted in the ledger as ``kind`` (``params``; the
    carried optimizer state's exchange: ``optim``)."""

    def __init__(
        self, store: ShardStore, collective: Collective, wire: torch.dtype, dtype: torch.dtype, kind: str = "params"
    ) -> None:
        self.store, self.collective, self.wire, self.kind = store, collective, wire, kind
        self.ledger = collective.ledger
        shared = store.shared
        self.shared_layout = FlatLayout(
            tuple(shared), tuple(t.shape for t in shared.values()), tuple(t.dtype for t in shared.values()), dtype
        )

    def assemble(self, round: int, r: RoundPieces) -> tuple[dict[int, Tensor], float]:
        """Each local worker's sub-network, in the wire dtype, and the seconds spent in the exchange."""
        m, local, own, wire, plan = (
            r.ownership.num_owners,
            self.collective.local_workers,
            r.ownership,
            self.wire,
            r.plan,
        )
        shards = self.store.shards
        taken = {
            (o, g): own.take_from_shard(shards[o], r.pieces[o, g]).to(wire) for o in local for g in range(plan.groups)
        }
        sends = {o: {w: taken[o, plan.group_of(w)] for w in range(m)} for o in local}
        recv = {w: {o: r.numel[o, plan.group_of(w)] for o in range(m)} for w in local}
        start = time.perf_counter()
        got = self.collective.all_to_all(sends, recv, f"round {round} (assembling the sub-networks)")
        waited = time.perf_counter() - start
        for w in range(m):
            self.ledger.record(round, w, TO_WORKER, self.kind, r.foreign_numel(w) * wire.itemsize)
        payloads, layout = {}, r.layout
        for w in local:
            g = plan.group_of(w)
            flat = torch.empty(layout.numel, dtype=layout.dtype, device=self.store.device)
            sub = layout.views(flat)
            for o, piece in got[w].items():
                own.place_in_subnet(sub, own.unflatten(piece, r.pieces[o, g], r.shapes), r.pieces[o, g])
            with torch.no_grad():
                for n, value in self.store.shared.items():
                    sub[n].copy_(value)
            payloads[w] = layout.encode(flat, wire)  # as central's payload: shared values rounded too
            del sub, flat
        return payloads, waited

    def give_back(self, round: int, r: RoundPieces, reports: Mapping[int, WorkerReport]) -> float:
        """Write what the local workers trained into the owners' shards and the
        shared tensors; the seconds spent in the exchanges."""
        m, local, own, wire, plan = (
            r.ownership.num_owners,
            self.collective.local_workers,
            r.ownership,
            self.wire,
            r.plan,
        )
        layout = r.layout
        returned = {w: layout.unflatten(layout.decode(reports[w].params.to(self.store.device))) for w in local}
        sends = {
            w: {o: own.take_from_subnet(returned[w], r.pieces[o, plan.group_of(w)]).to(wire) for o in range(m)}
            for w in local
        }
        recv = {o: {w: r.numel[o, plan.group_of(w)] for w in range(m)} for o in local}
        start = time.perf_counter()
        got = self.collective.all_to_all(sends, recv, f"round {round} (returning the sub-networks)")
        waited = time.perf_counter() - start
        shared_bytes = self.shared_layout.wire_numel(wire) * wire.itemsize * (m - 1)
        for w in range(m):
            self.ledger.record(round, w, FROM_WORKER, self.kind, r.foreign_numel(w) * wire.itemsize + shared_bytes)
        for o in local:
            for g in range(plan.groups):
                copies = [own.unflatten(got[o][w].to(layout.dtype), r.pieces[o, g], r.shapes) for w in plan.members(g)]
                own.write_to_shard(self.store.shards[o], average_states(copies), r.pieces[o, g])
        shared = self.shared_layout
        mine = {w: shared.encode(shared.flatten({n: returned[w][n] for n in self.store.shared}), wire) for w in local}
        start = time.perf_counter()
        gathered = self.collective.all_gather(mine, f"round {round} (shared)")
        waited += time.perf_counter() - start
        every = [shared.unflatten(shared.decode(f)) for f in gathered]
        by_group = [average_states([every[w] for w in plan.members(g)]) for g in range(plan.groups)]
        with torch.no_grad():
            for n, value in average_states(by_group).items():
                self.store.shared[n].copy_(value)
        return waited
