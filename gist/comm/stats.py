"""What every worker reports after its local steps of a round: :class:`WorkerStats`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class WorkerStats:
    """A worker's report on its local steps of one round."""

    loss: float
    """Mean training loss over the steps taken (NaN if none)."""
    steps: int
    """Optimizer steps taken (steps on batches without training nodes are skipped)."""
    seconds: float
    """Wall time of the worker's round."""

    NUM_VALUES = 3
    """Values reported: ``[loss, steps, seconds]``, in the buffer dtype, or,
    for a 16-bit buffer, as the bits of three float32 values (exact)."""

    def to_tensor(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The report as it travels after a buffer of ``dtype`` (:meth:`slots` values)."""
        narrow = dtype.itemsize < 4
        values = torch.tensor([self.loss, float(self.steps), self.seconds], dtype=torch.float32 if narrow else dtype)
        return values.view(dtype) if narrow else values

    @classmethod
    def from_tensor(cls, values: Tensor) -> WorkerStats:
        if values.element_size() < 4:
            values = values.clone().view(torch.float32)
        if values.numel() != cls.NUM_VALUES:
            raise ValueError(f"a stats report has {cls.NUM_VALUES} values, got {values.numel()}")
        loss, steps, seconds = (float(v) for v in values)
        return cls(loss, int(round(steps)), seconds)

    @staticmethod
    def slots(dtype: torch.dtype = torch.float32) -> int:
        """Values of ``dtype`` a report takes on the wire."""
        return WorkerStats.NUM_VALUES * max(1, 4 // dtype.itemsize)

    @staticmethod
    def nbytes(dtype: torch.dtype = torch.float32) -> int:
        return WorkerStats.slots(dtype) * dtype.itemsize
