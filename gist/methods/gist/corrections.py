r"""Corrections for workers that each hold only their own part of the graph.

* **Label-prior correction** (logit adjustment): worker ``i`` trains on
  :math:`f(x) + \log \pi_i - \log \pi`, where :math:`\pi_i` are the label
  frequencies of its own training nodes and :math:`\pi` those of all training
  nodes. The model :math:`f` itself is unchanged, so the merged model predicts
  with the global prior. Costs one vector of class counts per worker each way,
  once.
* **BatchNorm re-estimation**: the merged model's running statistics, which
  come from narrow sub-networks on skewed parts, are replaced by the exact
  mean and (unbiased) variance of its own activations over every worker's
  nodes, pooled from per-worker sums, layer by layer (each layer's inputs
  depend on the statistics of the layers before it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor, nn
from torch_geometric.data import Data


def label_counts(data: Data, num_classes: int) -> Tensor:
    """``int64 [num_classes]`` (on the CPU): how many of the graph's training nodes hold each label."""
    return torch.bincount(data.y[data.train_mask].view(-1), minlength=num_classes)[:num_classes].cpu()


def prior_offset(own_counts: Tensor, total_counts: Tensor) -> Tensor:
    r""":math:`\log \pi_i - \log \pi` per class, with :math:`\pi_i` and
    :math:`\pi` the label frequencies of a worker's training nodes and of all
    training nodes. A class absent from a part counts as half a node there.
    Frequencies are left unnormalised: a constant added to every logit does
    not change the loss."""
    own = own_counts.to(torch.float64).clamp_min(0.5)
    total = total_counts.to(torch.float64).clamp_min(0.5)
    offset = own.log() - total.log()
    return (offset - offset.mean()).to(torch.float32)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm modules in definition order (the forward order
    of PyG's ``BasicGNN``)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def batch_norm_moments(model: nn.Module, index: int, data: Data, adj: Tensor, nodes: Optional[Tensor]) -> Tensor:
    """``float64 [count, sum_1..d, sumsq_1..d]`` of the inputs of the model's
    ``index``-th BatchNorm over ``nodes`` (default all), in an eval-mode
    forward pass (earlier BatchNorms use their running statistics); on the CPU."""
    norm = batch_norms(model)[index]
    captured: list[Tensor] = []
    handle = norm.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        model(data.x, adj)
    finally:
        handle.remove()
        model.train(was_training)
    return activation_moments(captured[0], nodes)


def activation_moments(x: Tensor, nodes: Optional[Tensor] = None) -> Tensor:
    """``float64 [count, sum_1..d, sumsq_1..d]`` of the rows ``nodes`` (default all) of ``x``, on the CPU."""
    x = (x if nodes is None else x[nodes]).to(torch.float64)
    count = torch.tensor([x.shape[0]], dtype=torch.float64, device=x.device)
    return torch.cat([count, x.sum(0), x.pow(2).sum(0)]).cpu()


def pooled_batch_norm_stats(moments: Sequence[Tensor]) -> Tensor:
    """``float64 [mean_1..d, var_1..d]`` (unbiased variance, as BatchNorm keeps
    it) of the activations of every worker, from their :func:`batch_norm_moments`."""
    total = torch.stack(list(moments)).sum(0)
    count, d = total[0], (total.numel() - 1) // 2
    mean = total[1 : 1 + d] / count
    var = (total[1 + d :] - count * mean.pow(2)) / (count - 1).clamp_min(1)
    return torch.cat([mean, var.clamp_min(0)])


def set_batch_norm_stats(model: nn.Module, index: int, stats: Tensor) -> None:
    """Write :func:`pooled_batch_norm_stats` into the ``index``-th BatchNorm."""
    norm = batch_norms(model)[index]
    d = stats.numel() // 2
    with torch.no_grad():
        norm.running_mean.copy_(stats[:d])
        norm.running_var.copy_(stats[d:])
