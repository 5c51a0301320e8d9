"""The round driver every method shares.

A method subclasses :class:`RoundDriver` and implements one hook,
:meth:`RoundDriver.train_round`: train round ``r`` on every worker this
process holds and report each worker's :class:`~gist.comm.WorkerStats`. The
driver owns the rest: the round counter, the history of
:class:`RoundRecord`\\ s (bytes read from the ledger), the evaluation
schedule, the progress bar, the summary, checkpoints
(:meth:`~RoundDriver.state_dict` / :meth:`~RoundDriver.load_state_dict`) and
the set-up before the first round (:meth:`~RoundDriver.start`).

Methods are listed in :data:`gist.registry.METHODS`; the CLI, sweeps and
tables read that registry.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Protocol

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from tqdm.auto import tqdm

from ..comm import ByteLedger, WorkerStats
from ..config import NoOptions, RunConfig
from ..data import check_graph
from ..devices import check_devices, worker_device
from ..errors import ConfigError
from .checkpoint import Checkpointer, driver_state, load_driver_state
from .divergence import check_round
from .evaluation import Evaluator, graph_evaluator
from .optim import check_optimizer_state
from .records import RoundRecord, history_summary
from .setup import RankSetup

ROLES = ("target", "bytes", "budget")
"""The roles a method can play in the tables (:attr:`RoundDriver.role`)."""


@dataclass
class RoundWork:
    """What :meth:`RoundDriver.train_round` reports."""

    stats: Mapping[int, WorkerStats]
    """Every worker's report (on the coordinator; a worker process: its own)."""
    split_seconds: float = 0.0
    """Time spent preparing what the workers are sent."""
    merge_seconds: float = 0.0
    """Time spent combining what they return."""


class WorkerGroup(Protocol):
    """The workers a driver trains through (a :class:`~gist.comm.Collective`, GIST's transport)."""

    ledger: ByteLedger
    num_workers: int

    @property
    def is_coordinator(self) -> bool:
        """Whether this process holds worker 0: it evaluates and keeps the log."""
        ...

    @property
    def sequential(self) -> bool:
        """Whether this process runs its workers one after another (a simulation)."""
        ...


class RoundDriver(ABC):
    """Rounds of a training method over ``m`` workers (see the module docstring).

    Attributes: :attr:`model` (the full model, trained in place),
    :attr:`device` (where it lives),
    :attr:`data` (the graph evaluated on, ``None`` where this process does not
    hold it), :attr:`cfg`, :attr:`ledger`, :attr:`history`, :attr:`round`
    (the next round to train).
    """

    name: ClassVar[str] = ""
    """The method's registry name (``gist``, ``ddp``, ...)."""
    fixed_subnets: ClassVar[Optional[int]] = None
    """The number of workers the method always uses (``full``: 1), if fixed."""
    color: ClassVar[Optional[str]] = None
    """Its colour in plots (``None``: one is picked)."""
    label: ClassVar[str] = ""
    """Its name on the progress bar (default :attr:`name`)."""
    Options: ClassVar[type] = NoOptions
    """Its own settings (``cfg.options`` of its runs): a dataclass of
    :func:`gist.settings.setting` fields importable without torch; a shipped
    method also names it in :data:`gist.registry.METHODS`."""
    optimizer_states: ClassVar[tuple[str, ...]] = ("kept",)
    """The ``optimizer_state`` policies the method offers (:data:`gist.config.OPTIMIZER_STATES`), its default first."""
    role: ClassVar[Optional[str]] = None
    """What the tables compare with it (:data:`ROLES`): ``target`` (the
    reference whose best validation sets the target), ``bytes`` (the
    baseline of the bytes-to-target ratio), ``budget`` (the method whose
    bytes and seconds are the equal-budget columns' budget)."""

    @classmethod
    def check_run(cls, cfg: RunConfig) -> None:
        """``ValueError`` naming the first setting this method cannot run with:
        the config's own checks, the method's fixed ``m``, :meth:`check_config`."""
        cfg.check()
        check_devices(cfg, processes=cfg.dist.backend == "dist")
        if cls.fixed_subnets is not None and cfg.subnets != cls.fixed_subnets:
            raise ConfigError(
                f"{cls.name} trains {cls.fixed_subnets} worker(s): m must be {cls.fixed_subnets}, got {cfg.subnets}"
            )
        check_optimizer_state(cls.name, cls.optimizer_states, cfg.local)
        cls.check_config(cfg)

    def __init__(
        self,
        model: nn.Module,
        data: Optional[Data],
        cfg: RunConfig,
        group: WorkerGroup,
        evaluator: Optional[Evaluator] = None,
        scored_by: str = "correct / total",
        device: Optional[torch.device] = None,
    ) -> None:
        """``device``: where the (coordinator's) model lives, default the
        workers' (``cfg.device``). ``evaluator`` default: where this process is
        the coordinator and the method scores on the graph
        (:meth:`scores_on_graph`), the run's one evaluator of ``data``
        (:func:`~gist.engine.evaluation.graph_evaluator`) on ``device``."""
        self.check_run(cfg)
        if group.num_workers != cfg.subnets:
            raise ConfigError(f"{group.num_workers} workers given but the config asks m={cfg.subnets}")
        self.device = device if device is not None else worker_device(cfg)
        if data is not None:
            classes = getattr(model, "out_channels", None)
            check_graph(data, classes if isinstance(classes, int) else None)
        if evaluator is None and group.is_coordinator and self.scores_on_graph(cfg):
            if data is None:
                raise ConfigError(f"{self.name}: worker 0 needs the full graph (data=) to evaluate")
            evaluator, scored_by = graph_evaluator(cfg, data, self.device)
        self.model = model
        self.data = data
        self.cfg = cfg
        self.ledger = group.ledger
        self.is_coordinator = group.is_coordinator
        self.sequential = group.sequential
        self.evaluator = evaluator
        self.scored_by = scored_by
        """How metrics are computed (written to the run log)."""
        self.history: list[RoundRecord] = []
        self.round = 0
        self._started = False

    # ------------------------------------------------------------------ hooks

    @classmethod
    def distributed(cls, setup: RankSetup) -> Optional[RoundDriver]:
        """This process's part of a ``torch.distributed`` job: the driver to
        :meth:`fit` here, or ``None`` once the process has served as a worker
        of a driver elsewhere."""
        raise ConfigError(f"method {cls.name!r} has no torch.distributed form; run it with --backend local")

    @classmethod
    def optimizer_state(cls, cfg: RunConfig) -> str:
        """The run's ``optimizer_state`` policy: the setting, else the method's default."""
        return cfg.local.optimizer_state or cls.optimizer_states[0]

    @classmethod
    def resolved_settings(cls, cfg: RunConfig) -> dict[str, Any]:
        """The settings that ``cfg`` may leave to the method, by flat name, as the
        method resolves them (a sweep compares stored runs by these)."""
        return {"optimizer_state": cls.optimizer_state(cfg)}

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """Reject, with :class:`~gist.errors.ConfigError`, a config this method
        cannot run, before anything is built (sweeps check every grid point
        with it; the method's own options check themselves)."""

    @classmethod
    def scores_on_graph(cls, cfg: RunConfig) -> bool:
        """Whether the coordinator scores the model on the whole graph (else
        the workers score it on their own parts and no process loads the graph)."""
        return True

    def start(self) -> None:
        """Set-up before the first round this process trains (handshakes,
        initial broadcasts). A worker process may learn :attr:`round` here."""

    @abstractmethod
    def train_round(self, round: int) -> RoundWork:
        """Train round ``round`` on every worker of this process, leave the
        coordinator's :attr:`model` at the round's result, and report."""

    def prepare_evaluation(self, round: int) -> None:
        """Called on every process before round ``round`` is scored (a method
        whose coordinator must first collect the model does so here; its time
        is evaluation time)."""

    def evaluate(self, round: int) -> dict[str, float]:
        """``{"train", "val", "test"}`` of the full model (coordinator only)."""
        if self.evaluator is None:
            raise RuntimeError(f"{self.name}: no evaluator on this process")
        return self.evaluator(self.model, self.data)

    @property
    @abstractmethod
    def num_params(self) -> int:
        """``|θ|``: values in the buffer a worker exchanges (the summary's ``subnet_params``)."""

    def trained_states(self) -> list[Mapping[str, Tensor]]:
        """The tensors this process trains (checked for NaN after every round): the model's."""
        return [self.model.state_dict()]

    def model_state_dict(self) -> dict[str, Tensor]:
        """The full model's ``state_dict`` on the CPU (a copy), for checkpoints
        and ``--save-model`` (on the coordinator)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def load_model_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`model_state_dict`'s model (on the coordinator, before :meth:`fit`)."""
        self.model.load_state_dict(state)

    def model_checkpoint(self) -> dict[str, Tensor]:
        """What a checkpoint keeps of the model: :meth:`model_state_dict`
        (a method that holds its model in shards writes them itself)."""
        return self.model_state_dict()

    def method_state(self) -> dict[str, Any]:
        """What the method must keep for an exact resume beyond the full model
        (optimizers, RNG streams, batch streams). Called on every process at
        the same round; only the coordinator's result is saved."""
        return {}

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`method_state` on the coordinator (before :meth:`fit`)."""

    def close(self) -> None:
        """Release what the method holds (the process group is the caller's)."""

    # ------------------------------------------------------------------ driver

    def run_round(self) -> RoundRecord:
        """Train one round, evaluate it if scheduled, record it.

        Raises :class:`~gist.engine.divergence.TrainingDiverged`, before
        anything of the round is recorded, if a worker's loss or the model
        is no longer finite."""
        if not self._started:
            self.start()
            self._started = True
        r = self.round
        start = time.perf_counter()
        work = self.train_round(r)
        seconds = time.perf_counter() - start
        check_round(self.name, r, work.stats, self.trained_states())
        record = RoundRecord.of_round(r, self.cfg.local.local_steps, seconds, work, self.ledger, self.sequential)
        if self.cfg.is_eval_round(r):
            _score_round(self, record)
        self.history.append(record)
        self.round += 1
        return record

    def fit(
        self,
        progress: bool = True,
        callback: Optional[Callable[[RoundRecord], Any]] = None,
        checkpointer: Optional[Checkpointer] = None,
    ) -> list[RoundRecord]:
        """Run the remaining rounds with a progress bar showing the loss, the
        latest and best validation accuracy and the parameter megabytes moved;
        save a checkpoint where ``checkpointer`` says one is due."""
        bar = tqdm(
            total=self.cfg.rounds,
            initial=self.round,
            desc=f"{self.label or self.name} rounds",
            unit="round",
            disable=not progress,
            dynamic_ncols=True,
            leave=None,
        )
        try:
            while self.round < self.cfg.rounds:
                record = self.run_round()
                bar.set_postfix(_progress(self.history, self.ledger), refresh=False)
                bar.update(record.round + 1 - bar.n)
                if checkpointer is not None and checkpointer.due(record.round, self.cfg.rounds):
                    if self.is_coordinator:
                        checkpointer.save(self.state_dict())
                    else:  # take part in the method's collectives; only the coordinator saves
                        self.method_state()
                if callback is not None:
                    callback(record)
        finally:
            bar.close()
        return self.history

    def summary(self) -> dict[str, Any]:
        """``method``, ``best_val``, ``test_at_best_val``, byte and time totals,
        ``subnet_params``, ``eval_every`` (the rounds between evaluations used)
        and ``optimizer_state`` (what a worker's optimizer started each round from)."""
        return {
            "method": self.name,
            **history_summary(self.history, self.ledger, self.cfg.subnets),
            "subnet_params": self.num_params,
            "eval_every": self.cfg.eval_interval,
            "optimizer_state": self.optimizer_state(self.cfg),
        }

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (:func:`~gist.engine.checkpoint.driver_state`).
        Called on every process of a job at the same round."""
        return driver_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (on the coordinator, before :meth:`fit`)."""
        if self._started:
            raise RuntimeError("load a checkpoint before the first round")
        load_driver_state(self, state)


def _score_round(driver: RoundDriver, record: RoundRecord) -> None:
    """Evaluate ``record``'s round: every process prepares (:meth:`RoundDriver.prepare_evaluation`),
    the coordinator scores the model and fills in the record's metrics, seconds and ``eval`` bytes."""
    start = time.perf_counter()
    driver.prepare_evaluation(record.round)
    if driver.is_coordinator:
        metrics = driver.evaluate(record.round)
        record.train, record.val, record.test = metrics["train"], metrics["val"], metrics["test"]
        record.parts_val, record.parts_test = metrics.get("parts_val"), metrics.get("parts_test")
        record.eval_seconds = time.perf_counter() - start
        record.eval_bytes = driver.ledger.total(round=record.round, kind="eval")


def _progress(history: list[RoundRecord], ledger: ByteLedger) -> dict[str, str]:
    """The progress bar's figures after the last round of ``history``: loss, parameter MB, latest and best val."""
    record = history[-1]
    postfix = {"loss": f"{record.loss:.3f}", "MB": f"{ledger.total(kind='params') / 1e6:.1f}"}
    scored = [r.val for r in history if r.val is not None]
    if record.val is not None:
        postfix["val"] = f"{record.val:.4f}"
        postfix["best"] = f"{max(scored):.4f}"
    return postfix
