"""The engine every method shares: the round driver, the worker, evaluation, checkpoints.

* :mod:`gist.engine.driver`: :class:`RoundDriver`, the base of every method.
* :mod:`gist.engine.records`: :class:`RoundRecord` and the run summary.
* :mod:`gist.engine.worker`: :class:`Worker` (a GIST sub-network and its
  data), RNG streams, local steps, batch sources.
* :mod:`gist.engine.evaluation`: accuracy, and OGB's ``Evaluator``.
* :mod:`gist.engine.checkpoint`: checkpoint files and ``--resume`` checks.
* :mod:`gist.engine.divergence`: :class:`TrainingDiverged`, raised when a
  round ends with a non-finite loss or parameter.
* :mod:`gist.engine.setup`: the dataset, model and per-process graph a run builds.
"""

from .checkpoint import Checkpointer
from .divergence import TrainingDiverged
from .driver import DriverSetup, RoundDriver, RoundWork
from .evaluation import (
    SPLITS,
    Evaluator,
    accuracy_evaluator,
    accuracy_from_counts,
    correct_counts,
    evaluate,
    node_evaluator,
    ogb_metric,
)
from .records import RoundRecord, history_summary, parallel_round_seconds
from .setup import RankSetup, build_stock_model, full_model, load_run_dataset
from .worker import (
    RNGStream,
    Worker,
    local_steps,
    make_batch_sources,
    make_optimizer,
    make_workers,
    training_loss,
    worker_graphs,
    worker_rng_state,
)

__all__ = [
    "SPLITS",
    "Checkpointer",
    "DriverSetup",
    "Evaluator",
    "RNGStream",
    "RankSetup",
    "RoundDriver",
    "RoundRecord",
    "RoundWork",
    "TrainingDiverged",
    "Worker",
    "accuracy_evaluator",
    "accuracy_from_counts",
    "build_stock_model",
    "correct_counts",
    "evaluate",
    "full_model",
    "history_summary",
    "load_run_dataset",
    "local_steps",
    "make_batch_sources",
    "make_optimizer",
    "make_workers",
    "node_evaluator",
    "ogb_metric",
    "parallel_round_seconds",
    "training_loss",
    "worker_graphs",
    "worker_rng_state",
]
