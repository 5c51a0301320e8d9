"""Node-classification metrics through ``ogb.nodeproppred.Evaluator``.

OGB node-property datasets are scored by OGB's own ``Evaluator(name)``;
every dataset we train here (ogbn-arxiv, ogbn-products, the PyG ones and the
synthetic one) is scored by accuracy, the mean of ``y_pred == y_true``. For
``ogbn-*`` datasets :func:`node_evaluator` calls the ``Evaluator`` itself;
for the others accuracy is :func:`gist.train.evaluate`, which computes the
same number. The workers of ``partitioned`` runs score their own nodes as
correct/total counts that are summed: the same accuracy, without moving
predictions.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from torch_geometric.data import Data

from .train import SPLITS, adjacency

Evaluator = Callable[[nn.Module, Data], dict[str, float]]


def ogb_metric(dataset: str) -> Optional[str]:
    """``Evaluator(dataset).eval_metric`` for ``ogbn-*`` names, else ``None``.

    Raises ``ValueError`` for an OGB dataset not scored by accuracy: the
    models here predict one class per node."""
    if not dataset.startswith("ogbn-"):
        return None
    from ogb.nodeproppred import Evaluator as OGBEvaluator

    metric = OGBEvaluator(dataset).eval_metric
    if metric != "acc":
        raise ValueError(f"{dataset} is scored by {metric!r}; GIST's models here predict one class per node "
                         f"and are scored by accuracy")
    return metric


def node_evaluator(dataset: str, data: Optional[Data], sparse_adjacency: bool = True) -> Optional[Evaluator]:
    """For ``ogbn-*`` datasets: ``f(model, data) -> {"train", "val", "test"}``
    scoring the full model's predictions with ``ogb.nodeproppred.Evaluator``.
    ``None`` for other datasets (or without the graph): the trainers' default
    accuracy applies."""
    if ogb_metric(dataset) is None or data is None:
        return None
    from ogb.nodeproppred import Evaluator as OGBEvaluator

    ogb_eval = OGBEvaluator(dataset)
    adj = adjacency(data, sparse_adjacency)

    @torch.no_grad()
    def evaluate(model: nn.Module, graph: Data) -> dict[str, float]:
        was_training = model.training
        model.eval()
        pred = model(graph.x, adj).argmax(dim=-1, keepdim=True)
        model.train(was_training)
        y = graph.y.view(-1, 1)
        out = {}
        for split in SPLITS:
            mask = graph[f"{split}_mask"]
            out[split] = (float(ogb_eval.eval({"y_true": y[mask], "y_pred": pred[mask]})["acc"])
                          if int(mask.sum()) else float("nan"))
        return out

    return evaluate
