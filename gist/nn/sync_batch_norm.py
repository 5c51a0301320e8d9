r"""BatchNorm whose batch statistics are those of every worker's batch together.

What ``torch.nn.SyncBatchNorm`` computes, on any device and with the sum
across workers supplied by the caller (``torch.nn.SyncBatchNorm`` runs only on
accelerators): in training, each worker normalises its own nodes with the
mean and variance of the union of all ``m`` workers' batches,

.. math::

    \mu = \frac{\sum_i \sum_{n \in B_i} x_n}{N},\quad
    \sigma^2 = \frac{\sum_i \sum_{n \in B_i} (x_n - \mu)^2}{N},\quad
    y_n = \gamma \frac{x_n - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta,
    \quad N = \sum_i |B_i|,

and the backward pass sums ``Σ dy`` and ``Σ dy·x̂`` across workers, so that
worker ``i``'s input gradient is that of the sum of all workers' losses:

.. math::

    \frac{\partial L}{\partial x_n} = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}
    \Big(dy_n - \frac{\sum dy}{N} - \hat x_n \frac{\sum dy\,\hat x}{N}\Big).

``γ`` and ``β`` get each worker's own share (``Σ_{B_i} dy·x̂``, ``Σ_{B_i}
dy``), which data parallelism then averages like every other gradient. The
sums travel as three all-reduces per layer and step: ``[Σx, |B_i|]`` and
``Σ(x-μ)²`` forward (``C + 1`` and ``C`` values), ``[Σdy, Σdy·x̂]`` backward
(``2C``). The running statistics follow the global ``μ`` and the unbiased
``σ²·N/(N-1)``, so every worker's running statistics are the same.

A :class:`SyncBatchNorm1d` is a ``torch.nn.BatchNorm1d`` (same parameters,
buffers and ``state_dict``) that synchronises only inside
:func:`synchronised` on the thread that runs it; elsewhere, and in
evaluation, it is plain BatchNorm.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch
from torch import Tensor, nn

SumAcross = Callable[[Tensor], Tensor]
"""``f(values) -> Σ over workers of values`` (a 1-D tensor of the same length)."""

_bound = threading.local()


@contextlib.contextmanager
def synchronised(sum_across: SumAcross, update_running_stats: bool = True) -> Iterator[None]:
    """Inside: every :class:`SyncBatchNorm1d` in training mode run by this
    thread sums its statistics with ``sum_across``; ``update_running_stats``
    ``False`` leaves the running statistics alone (a replica that another
    worker sharing it updates)."""
    outer = getattr(_bound, "value", None)
    _bound.value = (sum_across, update_running_stats)
    try:
        yield
    finally:
        _bound.value = outer


class _SyncBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, sum_across: SumAcross
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c = x.shape[1]
        first = sum_across(torch.cat([x.sum(0), x.new_tensor([x.shape[0]])]))
        count = first[c]
        mean = first[:c] / count
        centred = x - mean
        var = sum_across((centred * centred).sum(0)) / count
        invstd = torch.rsqrt(var + eps)
        xhat = centred * invstd
        y = xhat if weight is None else xhat * weight
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(xhat, invstd, weight, count)
        ctx.sum_across = sum_across
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    def backward(ctx: Any, dy: Tensor, *unused: Any) -> tuple[Optional[Tensor], ...]:
        xhat, invstd, weight, count = ctx.saved_tensors
        c = xhat.shape[1]
        local = torch.cat([dy.sum(0), (dy * xhat).sum(0)])
        total = ctx.sum_across(local)
        scale = invstd if weight is None else invstd * weight
        dx = scale * (dy - total[:c] / count - xhat * (total[c:] / count))
        dweight = local[c:] if weight is not None else None
        dbias = local[:c] if ctx.has_bias else None
        return dx, dweight, dbias, None, None


class SyncBatchNorm1d(nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` that synchronises its batch statistics inside
    :func:`synchronised` (see the module docstring); 2-D input ``[nodes, C]``."""

    def forward(self, x: Tensor) -> Tensor:
        bound = getattr(_bound, "value", None)
        if not self.training or bound is None:
            return super().forward(x)
        if x.dim() != 2:
            raise ValueError(f"SyncBatchNorm1d takes [nodes, channels] input, got shape {tuple(x.shape)}")
        sum_across, update = bound
        y, mean, var, count = _SyncBatchNorm.apply(x, self.weight, self.bias, self.eps, sum_across)
        if update and self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(mean, var, count)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        assert self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / (count - 1)) if float(count) > 1 else var
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)


def convert_sync_batch_norm(module: nn.Module) -> int:
    """Replace every ``torch.nn.BatchNorm1d`` inside ``module`` (PyG's
    ``BatchNorm`` wraps one) by a :class:`SyncBatchNorm1d` holding the same
    parameters and buffers, in place; the number replaced. Build the
    optimizer afterwards or before: the parameters are the same objects."""
    replaced = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm1d:
            sync = SyncBatchNorm1d.__new__(SyncBatchNorm1d)
            sync.__dict__.update(child.__dict__)
            setattr(module, name, sync)
            replaced += 1
        else:
            replaced += convert_sync_batch_norm(child)
    return replaced


def sync_batch_norm_layers(module: nn.Module) -> list[SyncBatchNorm1d]:
    """The :class:`SyncBatchNorm1d` layers of ``module``, in module order."""
    return [m for m in module.modules() if isinstance(m, SyncBatchNorm1d)]
