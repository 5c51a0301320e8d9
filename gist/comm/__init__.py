"""Communication: the byte ledger and the primitives every method sends through.

* :mod:`gist.comm.ledger`: :class:`ByteLedger`, every message in bytes, by kind and direction.
* :mod:`gist.comm.stats`: :class:`WorkerStats`, what a worker reports after a round.
* :mod:`gist.comm.collective`: :class:`Collective` (handshake, all-reduce,
  broadcasts, gathers, all-to-all) and :class:`InProcessCollective`, its
  simulation in one process; :mod:`gist.comm.dist_collective` on
  ``torch.distributed``.
* :mod:`gist.comm.group`: joining a ``torch.distributed`` job
  (:class:`~gist.comm.group.DistContext`) and its failures;
  :mod:`gist.comm.p2p`: point-to-point messages.
* :mod:`gist.comm.liveness`: heartbeats; a dead or hung peer is named.
* :mod:`gist.comm.launch`: start ``m`` local processes; :mod:`gist.comm.netns`:
  shaped links between network namespaces; :mod:`gist.comm.hooks`: the round hook.

What only one method sends (GIST's sub-network buffers, its evaluation
protocol) lives with that method (:mod:`gist.methods.gist`).
"""

from .collective import Collective, InProcessCollective, ring_allreduce_bytes
from .ledger import FROM_WORKER, KINDS, SETUP_ROUND, TO_WORKER, ByteLedger, Transfer, tensor_nbytes
from .stats import WorkerStats

__all__ = [
    "FROM_WORKER",
    "KINDS",
    "SETUP_ROUND",
    "TO_WORKER",
    "ByteLedger",
    "Collective",
    "InProcessCollective",
    "Transfer",
    "WorkerStats",
    "ring_allreduce_bytes",
    "tensor_nbytes",
]
