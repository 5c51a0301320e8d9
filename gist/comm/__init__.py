"""Communication: the byte ledger, GIST's transports, the data-parallel
collectives, and their ``torch.distributed`` implementations.

* :mod:`gist.comm.ledger`: :class:`ByteLedger`, every message in bytes.
* :mod:`gist.comm.transport`: :class:`Transport` (one flat buffer per worker
  per direction) and :class:`InProcessTransport`.
* :mod:`gist.comm.collective`: :class:`Collective` (all-reduce, broadcast,
  gathers) and :class:`InProcessCollective`.
* :mod:`gist.comm.dist`: :class:`~gist.comm.dist.DistTransport`,
  :func:`~gist.comm.dist.serve_worker` and :class:`~gist.comm.dist.DistCollective`
  on ``torch.distributed``.
* :mod:`gist.comm.launch`: start ``m`` local processes.
"""

from .collective import Collective, InProcessCollective, ring_allreduce_bytes
from .ledger import FROM_WORKER, KINDS, SETUP_ROUND, TO_WORKER, ByteLedger, Transfer, tensor_nbytes
from .transport import EVAL_COUNTS, Evaluation, InProcessTransport, SubnetWorker, Transport, WorkerReport, WorkerStats

__all__ = [
    "EVAL_COUNTS",
    "Evaluation",
    "FROM_WORKER",
    "KINDS",
    "SETUP_ROUND",
    "TO_WORKER",
    "ByteLedger",
    "Collective",
    "InProcessCollective",
    "InProcessTransport",
    "SubnetWorker",
    "Transfer",
    "Transport",
    "WorkerReport",
    "WorkerStats",
    "ring_allreduce_bytes",
    "tensor_nbytes",
]
