"""Evaluation: accuracy of the full-width model, and ``ogb.nodeproppred.Evaluator`` for OGB data.

How a dataset is scored is its registry entry's ``metric``
(:func:`dataset_metric`): OGB node-property datasets by OGB's own
``Evaluator(name)`` (:func:`ogb_evaluator`), the others by accuracy, the mean
of ``y_pred == y_true`` (:func:`evaluate`), which is the same number.
The workers of ``partitioned`` runs score their own nodes as correct/total
counts that are summed: the same accuracy, without moving predictions.
:func:`graph_evaluator` is the one place that picks a run's evaluator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from ..config import RunConfig
from ..devices import resolve_device
from ..errors import ConfigError
from ..graph import AdjacencyFormat, adjacency, with_sparse_features
from ..nn.models import takes_normalized_adjacency
from ..registry import dataset_metric as declared_metric

Evaluator = Callable[[nn.Module, Data], dict[str, float]]
"""``f(model, data) -> {"train", "val", "test"}``."""

SPLITS = ("train", "val", "test")


@torch.no_grad()
def correct_counts(model: nn.Module, data: Data, adj: Optional[Tensor] = None) -> Tensor:
    """``int64 [correct_train, n_train, correct_val, n_val, correct_test, n_test]``
    of the model's predictions on the graph's masks (``adj``: the graph's
    :func:`~gist.graph.adjacency`, default ``data.edge_index``, or the
    normalised adjacency for a :class:`~gist.nn.PrenormalizedGCN`)."""
    if adj is None:
        adj = adjacency(data, normalized=True) if takes_normalized_adjacency(model) else data.edge_index
    was_training = model.training
    model.eval()
    with torch.no_grad():  # no autograd graph: scoring a wide model needs no more memory than its forward pass
        pred = model(data.x, adj).argmax(dim=-1)
    model.train(was_training)
    counts = []
    for split in SPLITS:
        mask = data[f"{split}_mask"]
        counts += [int((pred[mask] == data.y[mask]).sum()), int(mask.sum())]
    return torch.tensor(counts, dtype=torch.int64)


def accuracy_from_counts(counts: Tensor) -> dict[str, float]:
    """Accuracies from (summed) :func:`correct_counts`; NaN for an empty split."""
    out = {}
    for i, split in enumerate(SPLITS):
        correct, total = int(counts[2 * i]), int(counts[2 * i + 1])
        out[split] = correct / total if total else float("nan")
    return out


def evaluate(model: nn.Module, data: Data, adj: Optional[Tensor] = None) -> dict[str, float]:
    """Accuracy of the full-width model on the train/val/test masks."""
    return accuracy_from_counts(correct_counts(model, data, adj))


def accuracy_evaluator(data: Data, sparse_adjacency: bool = True) -> Evaluator:
    """:func:`evaluate` with ``data``'s adjacency, in the format the model
    takes (:class:`~gist.graph.AdjacencyFormat`), built once."""
    adjacency_of = _adjacency_cache(data, sparse_adjacency)
    return lambda model, graph: evaluate(model, graph, adjacency_of(model))


def _adjacency_cache(data: Data, sparse: bool) -> Callable[[nn.Module], Tensor]:
    """``f(model)``: ``data``'s adjacency in the format ``model`` takes, built once per format."""
    built: dict[AdjacencyFormat, Tensor] = {}

    def adjacency_of(model: nn.Module) -> Tensor:
        fmt = AdjacencyFormat.for_model(model, sparse)
        if fmt not in built:
            built[fmt] = fmt.of(data)
        return built[fmt]

    return adjacency_of


def sampled_view(data: Data, nodes_per_split: int, layers: int, seed: int) -> Data:
    """The subgraph on which ``layers`` rounds of message passing give every
    one of a seeded sample of up to ``nodes_per_split`` nodes of each split
    the same output as on the whole graph: the graph induced by the samples'
    ``(layers + 1)``-hop neighbourhood (one hop more than the receptive field,
    so that every node within it keeps all its edges, and its degree). Its
    masks hold the sampled nodes only; ``n_id`` maps back to ``data``."""
    from torch_geometric.utils import k_hop_subgraph

    gen = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    chosen = []
    for split in SPLITS:
        nodes = data[f"{split}_mask"].nonzero().view(-1)
        chosen.append(nodes[torch.randperm(nodes.numel(), generator=gen)[:nodes_per_split]].sort().values)
    seeds = torch.cat(chosen).unique()
    subset, edge_index, _, _ = k_hop_subgraph(
        seeds, layers + 1, data.edge_index, relabel_nodes=True, num_nodes=data.num_nodes
    )
    view = Data(x=data.x[subset], y=data.y[subset], edge_index=edge_index, n_id=subset)
    position = torch.full((data.num_nodes,), -1, dtype=torch.long)
    position[subset] = torch.arange(subset.numel())
    for split, nodes in zip(SPLITS, chosen):
        mask = torch.zeros(subset.numel(), dtype=torch.bool)
        mask[position[nodes]] = True
        view[f"{split}_mask"] = mask
    return view


def dataset_metric(dataset: str) -> str:
    """How ``dataset`` is scored, as its registry entry says
    (:data:`gist.registry.DATASETS`): ``"accuracy"``, or ``"ogb:<name>"`` for
    ``ogb.nodeproppred.Evaluator(<name>)``. Raises
    :class:`~gist.errors.ConfigError` for an OGB dataset not scored by
    accuracy: the models here predict one class per node."""
    metric = declared_metric(dataset)
    if metric.startswith("ogb:"):
        from ogb.nodeproppred import Evaluator as OGBEvaluator  # heavy (pulls in scikit-learn): OGB runs only

        name = metric.removeprefix("ogb:")
        if OGBEvaluator(name).eval_metric != "acc":
            raise ConfigError(
                f"{dataset} is scored by {OGBEvaluator(name).eval_metric!r}; GIST's models here predict one class "
                f"per node and are scored by accuracy"
            )
    return metric


def ogb_evaluator(name: str, data: Data, sparse_adjacency: bool = True) -> Evaluator:
    """``f(model, data) -> {"train", "val", "test"}`` scoring the full model's
    predictions on ``data`` with ``ogb.nodeproppred.Evaluator(name)``."""
    from ogb.nodeproppred import Evaluator as OGBEvaluator

    ogb_eval = OGBEvaluator(name)
    adjacency_of = _adjacency_cache(data, sparse_adjacency)

    @torch.no_grad()
    def evaluate(model: nn.Module, graph: Data) -> dict[str, float]:
        was_training = model.training
        model.eval()
        pred = model(graph.x, adjacency_of(model)).argmax(dim=-1, keepdim=True)
        model.train(was_training)
        y = graph.y.view(-1, 1)
        out = {}
        for split in SPLITS:
            mask = graph[f"{split}_mask"]
            out[split] = (
                float(ogb_eval.eval({"y_true": y[mask], "y_pred": pred[mask]})["acc"])
                if int(mask.sum())
                else float("nan")
            )
        return out

    return evaluate


def graph_evaluator(cfg: RunConfig, data: Data, device: Optional[torch.device] = None) -> tuple[Evaluator, str]:
    """The evaluator of the full model on ``data`` for the run ``cfg``, and
    what it is called in the run log: the dataset's metric
    (:func:`dataset_metric`); with ``cfg.eval_nodes``, on a seeded sample of
    that many nodes per split (:func:`sampled_view`). The graph it scores on
    is moved to ``device`` (default the coordinator's), where the model must live."""
    where = ""
    if cfg.eval_nodes is not None:
        view = sampled_view(data, cfg.eval_nodes, cfg.model.layers, cfg.seed)
        where = (
            f" on {cfg.eval_nodes} sampled nodes per split (seed {cfg.seed}), computed on their "
            f"{cfg.model.layers + 1}-hop neighbourhood ({view.num_nodes} of {data.num_nodes} nodes)"
        )
        data = view
    data = data.to(device if device is not None else resolve_device(cfg.device))
    if cfg.data.sparse_features:
        data = with_sparse_features(data)
    metric = dataset_metric(cfg.data.dataset)
    if metric.startswith("ogb:"):
        name = metric.removeprefix("ogb:")
        score, scored_by = ogb_evaluator(name, data, cfg.data.sparse_adjacency), f"ogb.nodeproppred.Evaluator({name!r})"
    else:
        score, scored_by = accuracy_evaluator(data, cfg.data.sparse_adjacency), "correct / total"
    return (lambda model, _: score(model, data)), scored_by + where
