"""The engine every method shares: the round driver, local training, evaluation, checkpoints.

* :mod:`gist.engine.driver`: :class:`RoundDriver`, the base of every method.
* :mod:`gist.engine.records`: :class:`RoundRecord` and the run summary.
* :mod:`gist.engine.training`: a worker's local steps, optimizer, RNG stream
  and batch sources.
* :mod:`gist.engine.evaluation`: accuracy, OGB's ``Evaluator``, and the one
  place a run's evaluator is chosen (:func:`graph_evaluator`).
* :mod:`gist.engine.checkpoint`: checkpoint files and ``--resume`` checks.
* :mod:`gist.engine.divergence`: :class:`TrainingDiverged`, raised when a
  round ends with a non-finite loss or parameter.
* :mod:`gist.engine.setup`: the dataset, model and per-process graph a run builds.
"""

from .checkpoint import Checkpointer, CheckpointError
from .divergence import TrainingDiverged
from .driver import ROLES, RoundDriver, RoundWork, WorkerGroup
from .evaluation import (
    SPLITS,
    Evaluator,
    accuracy_evaluator,
    accuracy_from_counts,
    correct_counts,
    dataset_metric,
    evaluate,
    graph_evaluator,
)
from .records import RoundRecord, history_summary, parallel_round_seconds
from .setup import RankSetup, build_stock_model, full_model, load_run_dataset
from .training import (
    RNGStream,
    WarnOnce,
    local_steps,
    make_batch_sources,
    make_optimizer,
    mean_or_nan,
    training_loss,
    worker_graphs,
    worker_rng_state,
)

__all__ = [
    "ROLES",
    "SPLITS",
    "CheckpointError",
    "Checkpointer",
    "Evaluator",
    "RNGStream",
    "RankSetup",
    "RoundDriver",
    "RoundRecord",
    "RoundWork",
    "TrainingDiverged",
    "WarnOnce",
    "WorkerGroup",
    "accuracy_evaluator",
    "accuracy_from_counts",
    "build_stock_model",
    "correct_counts",
    "dataset_metric",
    "evaluate",
    "full_model",
    "graph_evaluator",
    "history_summary",
    "load_run_dataset",
    "local_steps",
    "make_batch_sources",
    "make_optimizer",
    "mean_or_nan",
    "parallel_round_seconds",
    "training_loss",
    "worker_graphs",
    "worker_rng_state",
]
