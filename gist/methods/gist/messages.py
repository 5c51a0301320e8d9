"""What GIST's workers send back besides the sub-network's buffer layout itself.

A round: the coordinator sends worker ``i`` one flat buffer (its
sub-network in the round's :class:`~gist.subnets.FlatLayout`, in the wire
dtype) and gets one :class:`WorkerReport` back. An evaluation of the
partitioned recipe: the full model out, per BatchNorm layer the activation
moments in and their sum out, and the correct/total counts in
(:class:`Evaluation`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from ...comm import WorkerStats

EVAL_COUNTS = 6
"""Values a worker returns from an evaluation: correct and total per split."""


@dataclass
class WorkerReport:
    """What a GIST worker sends back after its local steps."""

    params: Tensor
    """The trained sub-network, as one flat buffer in the round's layout."""
    stats: WorkerStats
    optim: Optional[Tensor] = None
    """With ``--optimizer-state carried``: the optimizer state it ends the round
    with, one flat buffer (:func:`gist.engine.optim.state_layout`)."""


@dataclass
class Evaluation:
    """What the workers return from :meth:`Transport.evaluate`."""

    moment_totals: list[Tensor]
    """Per BatchNorm layer: every worker's activation moments summed."""
    counts: list[Tensor]
    """Per worker: correct/total counts on its own nodes (empty unless asked)."""
