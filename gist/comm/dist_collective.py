"""The collectives of :class:`~gist.comm.collective.Collective` on ``torch.distributed``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .collective import Collective
from .group import DistContext, comm_device, run_collective
from .hooks import round_starts
from .ledger import ByteLedger, handshake_reply
from .p2p import post, wait
from .stats import WorkerStats


class DistCollective(Collective):
    """This process is worker ``ctx.rank`` of ``ctx.world_size``; every
    operation is a ``torch.distributed`` collective on the rank's device
    (NCCL), or through host memory (gloo).

    A collective that fails (a rank died or hung past the timeout) raises
    :class:`~gist.comm.group.CollectiveFailure`; one whose peer the liveness
    checker finds dead or hung names it (:class:`~gist.comm.group.WorkerFailure`)."""

    def __init__(self, ctx: DistContext, ledger: Optional[ByteLedger] = None) -> None:
        super().__init__(ctx.world_size, [ctx.rank], ledger)
        self.ctx = ctx
        self.device = comm_device(ctx)

    @property
    def sequential(self) -> bool:
        return False

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return run_collective(self.ctx, what, fn)

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

    def _all_reduce_sum(self, flats: Mapping[int, Tensor]) -> Tensor:
        own = flats[self.ctx.rank]
        flat = own.to(self.device, copy=True).contiguous()
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
        round_starts(self.ctx.rank, round)

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
            recvs[peer] = post(dist.irecv, bufs[peer], peer, what)
            sends_out[peer] = post(dist.isend, mine[peer].to(self.device).contiguous(), peer, what)
        for peer in sends_out:
            wait(sends_out[peer], peer, self.ctx, what)
            wait(recvs[peer], peer, self.ctx, what)
        received = {peer: buf.to(mine[me].device) for peer, buf in bufs.items()}
        received[me] = mine[me]
        return {me: dict(sorted(received.items()))}

    def all_gather(self, flats: Mapping[int, Tensor], what: str) -> list[Tensor]:
        own = flats[self.ctx.rank]
        mine = own.to(self.device).contiguous()
        out = [torch.empty_like(mine) for _ in range(self.num_workers)]
        self._call(what, lambda: dist.all_gather(out, mine))
        return [t.to(own.device) for t in out]

    def broadcast_from(self, src: int, flat: Tensor, what: str) -> Tensor:
        buf = flat.to(self.device).contiguous()
        self._call(what, lambda: dist.broadcast(buf, src=src))
        return buf.to(flat.device)

    def gather_objects(self, objects: Mapping[int, Any]) -> dict[int, Any]:
        out: Optional[list[Any]] = [None] * self.num_workers if self.ctx.rank == 0 else None
        self._call("gathering a checkpoint", lambda: dist.gather_object(objects[self.ctx.rank], out, dst=0))
        return dict(enumerate(out)) if out is not None else {}

    def scatter_objects(self, objects: Optional[Mapping[int, Any]]) -> dict[int, Any]:
        inputs = [objects[w] for w in range(self.num_workers)] if self.ctx.rank == 0 and objects else None
        received: list[Any] = [None]
        self._call("restoring a checkpoint", lambda: dist.scatter_object_list(received, inputs, src=0))
        return {self.ctx.rank: received[0]}
