"""Run configuration: nested dataclasses, each owning its defaults, allowed values and checks.

A :class:`RunConfig` holds the method, the number of workers ``m``, the round
schedule and the seed, plus one group per concern::

    RunConfig(method, subnets, rounds, eval_every, seed,
              data=DataConfig(...),        what graph, and how workers get it
              model=ModelConfig(...),      the stock PyG model to build
              local=LocalConfig(...),      a worker's optimizer steps per round
              dist=DistConfig(...),        where the workers run
              checkpoint=CheckpointConfig(...))

Every leaf field also has a **flat name**, unique across groups, used by the
``gist train`` flags (``--data-mode`` for ``data.mode``), the ``[settings]``
of sweep configs and the flat run logs written before the config was nested
(:meth:`RunConfig.from_dict` reads both). Whether a field **changes results**
is said once, on the field: fields that only say where or how to run
(``root``, ``threads``, checkpoint paths, …) are marked
``changes_results=False``, and :meth:`RunConfig.results` is what must match
on ``--resume`` and between a sweep config and a stored run log.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

from .registry import DATASETS, MODELS, NORMS, PARTITIONERS

DATA_MODES = ("replicated", "partitioned")
BATCHING = ("full", "cluster")
OPTIMIZERS = ("adam", "sgd")
BACKENDS = ("local", "dist")
DIST_BACKENDS = ("gloo", "nccl")
SCORERS = ("graph", "parts")
GIST_RECIPES = ("auto", "plain", "partitioned")
COORDINATORS = ("central", "sharded")
WIRE_DTYPES = ("float32", "bfloat16", "float16")
EVALUATIONS_PER_RUN = 50
"""Without ``eval_every``: at most how many evaluations a run makes (besides the one after its last round)."""
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
"""The values of the ``device`` settings (resolved by :func:`gist.devices.resolve_device`)."""

Choices = Union[tuple[str, ...], Callable[[], list[str]]]


def setting(
    default: Any,
    *,
    flat: Optional[str] = None,
    choices: Optional[Choices] = None,
    changes_results: bool = True,
    per_run: bool = False,
    minimum: Optional[float] = None,
    cli: bool = True,
    help: str = "",
) -> Any:
    """A config field with its metadata.

    Args:
        default: the default value.
        flat: the field's flat name (CLI flag, sweep key) when it is not the
            field's own name.
        choices: allowed values (or a function returning them, for registries).
        changes_results: ``False`` for fields that only say where or how to run.
        per_run: set for each run by the entry point (CLI flag or the sweep
            harness), never shared by the runs of a sweep.
        minimum: the smallest allowed value (numbers).
        cli: whether ``gist train`` has a flag for it.
        help: one line for ``gist train --help``.
    """
    meta = {
        "flat": flat,
        "choices": choices,
        "changes_results": changes_results,
        "per_run": per_run,
        "minimum": minimum,
        "cli": cli,
        "help": help,
    }
    return field(default=default, metadata=meta)


_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)\s*$", re.IGNORECASE)
_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


def parse_rate(text: str) -> float:
    """Bits per second of a ``tc`` rate such as ``100mbit`` or ``1gbit``
    (units ``bit``, ``kbit``, ``mbit``, ``gbit``; decimal, as ``tc`` reads them)."""
    match = _RATE.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"bandwidth must look like 100mbit or 1gbit (units bit, kbit, mbit, gbit), got {text!r}")
    return float(match.group(1)) * _RATE_UNITS[match.group(2).lower()]


def choices_of(f: dataclasses.Field) -> Optional[list[str]]:
    """The allowed values of field ``f`` (``None``: any value of its type)."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return list(choices() if callable(choices) else choices)


def flat_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flat") or f.name


def _check_fields(group: Any) -> None:
    """Every field's choices and minimum (from its metadata)."""
    for f in fields(group):
        if f.name in GROUPS:
            continue
        value = getattr(group, f.name)
        allowed = choices_of(f)
        if allowed is not None and value is not None and value not in allowed:
            raise ValueError(f"{flat_name(f)} must be one of {allowed}, got {value!r}")
        low = f.metadata.get("minimum")
        if low is not None and value is not None and value < low:
            raise ValueError(f"{flat_name(f)} must be >= {low}, got {value}")


@dataclass
class DataConfig:
    """The dataset, and how each worker gets its graph."""

    dataset: str = setting("csbm", choices=lambda: sorted(DATASETS.names()), help="dataset name")
    root: Optional[str] = setting(
        None, changes_results=False, help="data root (default: $GIST_DATA_ROOT or ./datasets)"
    )
    mode: str = setting(
        "replicated",
        flat="data_mode",
        choices=DATA_MODES,
        help="replicated: every worker reads the whole graph; partitioned: worker i holds only node part i",
    )
    partitioner: str = setting("metis", choices=PARTITIONERS, help="node partitioner for --data-mode partitioned")
    halo_hops: int = setting(0, minimum=0, help="partitioned mode: k-hop halo nodes each worker also holds (read-only)")
    batching: str = setting(
        "full", choices=BATCHING, help="full-batch steps, or Cluster-GCN mini-batches of METIS parts"
    )
    num_clusters: int = setting(32, minimum=1, help="Cluster-GCN: METIS parts of each worker's graph")
    clusters_per_batch: int = setting(4, minimum=1, help="Cluster-GCN: parts per mini-batch")
    sparse_adjacency: bool = setting(
        True, changes_results=False, cli=False, help="message passing over a CSR adjacency (same result, faster)"
    )
    sparse_features: bool = setting(
        False,
        help="give the model its node features as a sparse CSR matrix: for mostly-zero features "
        "(Coauthor CS 0.9%%, Cora 1.3%% non-zero) the first layer runs several times faster, for denser "
        "ones (Amazon Computers, 35%%) slower; the same model up to float rounding; for models whose "
        "first layer multiplies the features by a weight (gcn)",
    )

    def check(self) -> None:
        _check_fields(self)
        if self.batching == "cluster" and not 1 <= self.clusters_per_batch <= self.num_clusters:
            raise ValueError("clusters_per_batch must be between 1 and num_clusters")


@dataclass
class ModelConfig:
    """A stock ``torch_geometric.nn.models`` GCN / GraphSAGE (see :func:`gist.nn.build_model`)."""

    kind: str = setting("gcn", flat="model", choices=MODELS.names, help="model family")
    layers: int = setting(3, minimum=1, help="message-passing layers L")
    hidden: int = setting(256, minimum=1, help="hidden width d")
    norm: str = setting("none", choices=lambda: list(NORMS), help="normalisation after each hidden layer")
    dropout: float = setting(0.5, help="dropout probability")

    def check(self) -> None:
        _check_fields(self)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class LocalConfig:
    """How a worker trains each round: ``ζ`` optimizer steps."""

    local_steps: int = setting(10, minimum=1, help="local steps ζ per round")
    lr: float = setting(0.01, help="learning rate")
    weight_decay: float = setting(0.0, minimum=0.0, help="weight decay")
    optimizer: str = setting("adam", choices=OPTIMIZERS, help="optimizer (fresh each round for m > 1)")

    def check(self) -> None:
        _check_fields(self)
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class DistConfig:
    """Where the workers run (none of it changes results)."""

    backend: str = setting(
        "local",
        choices=BACKENDS,
        changes_results=False,
        per_run=True,
        help="local: all m workers in this process; dist: this process is one rank of a torchrun job",
    )
    dist_backend: Optional[str] = setting(
        None,
        choices=DIST_BACKENDS,
        changes_results=False,
        help="torch.distributed backend (default: nccl with CUDA, else gloo)",
    )
    timeout: float = setting(
        60.0,
        changes_results=False,
        help="seconds a rank waits on a peer that is dead (no heartbeat) or hung (idle, waiting on no one) "
        "before failing with an error naming it; a peer that is only slow is waited for",
    )
    threads: Optional[int] = setting(None, changes_results=False, minimum=1, help="torch CPU threads")
    bandwidth: str = setting(
        "none",
        changes_results=False,
        help="with --procs (or a sweep's processes): run the processes in a network namespace whose loopback "
        "is shaped to this rate, e.g. 100mbit or 1gbit (root and iproute2 needed); none: unshaped",
    )

    def check(self) -> None:
        _check_fields(self)
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.bandwidth != "none":
            parse_rate(self.bandwidth)


@dataclass
class CheckpointConfig:
    """Checkpoints and the saved model (set per run, never results)."""

    path: str = setting(
        "gist-checkpoint.pt",
        flat="checkpoint",
        changes_results=False,
        per_run=True,
        help="checkpoint file (written with --checkpoint-every, read with --resume)",
    )
    every: int = setting(
        0,
        flat="checkpoint_every",
        minimum=0,
        changes_results=False,
        per_run=True,
        help="save the full model, round, history and RNG state every K rounds (0: never)",
    )
    resume: bool = setting(
        False,
        changes_results=False,
        per_run=True,
        help="continue the run saved in --checkpoint (same settings; --rounds may grow)",
    )
    save_model: Optional[str] = setting(
        None, changes_results=False, per_run=True, help="write the final full model's state_dict here (torch.save)"
    )

    def check(self) -> None:
        _check_fields(self)


@dataclass
class GistConfig:
    """GIST's options for partitioned data (read by the ``gist`` method only).

    Each option left at ``None`` takes its value from ``recipe``: ``plain`` is
    the published algorithm; ``partitioned`` is the recipe measured to work
    when each worker holds only its own part (``results/README.md``); ``auto``
    (the default) is ``partitioned`` for ``--data-mode partitioned`` with
    ``m > 1`` and ``plain`` otherwise. :func:`gist_options` resolves them.
    """

    coordinator: str = setting(
        "central",
        flat="coordinator",
        choices=COORDINATORS,
        changes_results=False,
        help="gist: where the full model lives: central (rank 0 holds it, splits and merges), sharded (unit j "
        "of every width lives on worker j mod m; sub-networks are assembled with all-to-all exchanges)",
    )
    recipe: str = setting(
        "auto",
        flat="gist_recipe",
        choices=GIST_RECIPES,
        help="gist: defaults of the options below: plain (published GIST), partitioned (the recipe for "
        "partitioned data), auto (partitioned for --data-mode partitioned, else plain)",
    )
    label_prior: Optional[bool] = setting(
        None,
        help="gist: train worker i on logits + log(π_i / π) (π_i: its part's training-label frequencies, "
        "π: the whole graph's), so each sub-network stops fitting its part's label mix",
    )
    groups: Optional[int] = setting(
        None,
        flat="subnet_groups",
        minimum=1,
        help="gist: split widths into s groups; the m/s workers holding a group average their copies "
        "(s = m: plain GIST, s = 1: model averaging); must divide m",
    )
    finish_rounds: Optional[int] = setting(
        None,
        minimum=0,
        help="gist: train the last K rounds as model averaging of the full model (local SGD with a fresh optimizer)",
    )
    bn_reestimate: Optional[bool] = setting(
        None,
        help="gist: before each evaluation, recompute the merged model's BatchNorm statistics exactly over "
        "the workers' graphs, layer by layer (a few values per unit per worker)",
    )

    def check(self) -> None:
        _check_fields(self)


@dataclass(frozen=True)
class GistOptions:
    """:class:`GistConfig` with every option decided (see :func:`gist_options`)."""

    label_prior: bool = False
    groups: int = 1
    """``s``: sub-networks per round (``m`` for plain GIST)."""
    finish_rounds: int = 0
    bn_reestimate: bool = False


GROUPS = {
    "data": DataConfig,
    "model": ModelConfig,
    "local": LocalConfig,
    "gist": GistConfig,
    "dist": DistConfig,
    "checkpoint": CheckpointConfig,
}


@dataclass
class RunConfig:
    """Every setting of a run. Methods read ``subnets``, ``rounds``,
    ``eval_every``, ``seed``, ``local`` and ``data``; :mod:`gist.run` reads
    the rest to build the model, the workers and the outputs."""

    method: str = setting("gist", help="training method (see gist.methods)")
    subnets: int = setting(2, minimum=1, help="sub-networks / workers m")
    rounds: int = setting(30, minimum=1, help="rounds to train")
    eval_every: Optional[int] = setting(
        None,
        minimum=1,
        help="evaluate the full model every k rounds and after the last; default: every round for runs of up "
        f"to {EVALUATIONS_PER_RUN} rounds, else every ceil(rounds / {EVALUATIONS_PER_RUN}) (at most "
        f"{EVALUATIONS_PER_RUN} evaluations a run, and the last; see also --eval-nodes for wide models)",
    )
    wire_dtype: str = setting(
        "float32",
        choices=WIRE_DTYPES,
        help="dtype of the parameter buffers on the wire (gist): bfloat16 or float16 halve their bytes "
        "(rounded to nearest; integer statistics stay exact); the coordinator's model stays float32",
    )
    seed: int = setting(0, help="seeds the model, the width splits, partitions and dropout")
    device: str = setting(
        "auto",
        changes_results=False,
        help="where the model, the graphs and every worker's sub-network live: auto (cuda where available, "
        "else cpu), cpu, cuda (with processes: cuda:LOCAL_RANK) or cuda:N; CUDA results are close to, not "
        "bit-identical with, CPU results",
    )
    coordinator_device: Optional[str] = setting(
        None,
        changes_results=False,
        help="where the coordinator keeps the full model (gist; default: --device): cpu keeps a model wider "
        "than one GPU in host memory while the workers train on the GPU; splitting and merging then run there",
    )
    scorer: str = setting(
        "graph",
        choices=SCORERS,
        help="graph: score the model on the whole graph at the coordinator (every method); parts: "
        "partitioned gist only, each worker scores its own part and the counts are summed "
        "(no process loads the whole graph; edges between parts are missing)",
    )
    eval_nodes: Optional[int] = setting(
        None,
        minimum=1,
        help="graph scorer: score a fixed seeded sample of this many nodes per split, computed on their "
        "(L+1)-hop neighbourhood only (the same predictions as on the whole graph, at a fraction of the "
        "cost for wide models and large graphs); default: every node",
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    gist: GistConfig = field(default_factory=GistConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    # ------------------------------------------------------------------ checks

    def check(self) -> RunConfig:
        """Raise ``ValueError`` naming the first bad value; return ``self``.
        (The method name is checked by :func:`gist.methods.get_method`.)"""
        _check_fields(self)
        for name in GROUPS:
            getattr(self, name).check()
        for name in ("device", "coordinator_device"):
            value = getattr(self, name)
            if value is not None and not DEVICE_PATTERN.match(str(value)):
                raise ValueError(f"{name} must be auto, cpu, cuda or cuda:N, got {value!r}")
        return self

    def check_processes(self, world_size: int) -> None:
        """``ValueError`` unless a job of ``world_size`` processes can run
        this config: GIST and its baselines run one process per worker."""
        if world_size != self.subnets:
            raise ValueError(
                f"the job has {world_size} processes but m={self.subnets}: "
                f"GIST and its baselines run one process per worker"
                + (f" (--method {self.method} uses m = 1)" if self.subnets == 1 and world_size > 1 else "")
            )

    @property
    def eval_interval(self) -> int:
        """Rounds between evaluations: ``eval_every``, else
        ``ceil(rounds / EVALUATIONS_PER_RUN)`` (every round for runs of up to
        :data:`EVALUATIONS_PER_RUN` rounds)."""
        if self.eval_every is not None:
            return self.eval_every
        return max(1, -(-self.rounds // EVALUATIONS_PER_RUN))

    def is_eval_round(self, round: int) -> bool:
        """The evaluation schedule: every :attr:`eval_interval` rounds, and the last."""
        return (round + 1) % self.eval_interval == 0 or round + 1 == self.rounds

    @property
    def wire_torch_dtype(self) -> Any:
        """:attr:`wire_dtype` as a ``torch.dtype`` (imports torch)."""
        import torch

        return getattr(torch, self.wire_dtype)

    @property
    def evaluates_on_workers(self) -> bool:
        """``partitioned`` data with ``m > 1``: each worker holds only its own
        part (and GIST's workers can score the full model on it)."""
        return self.data.mode == "partitioned" and self.subnets > 1

    # ---------------------------------------------------------- flat names

    def train_flags(self) -> list[str]:
        """The ``gist train`` flags that make exactly this config; ``ValueError``
        if a setting without a flag differs from its default."""
        flags: list[str] = []
        defaults = RunConfig().flat()
        for name, (owner, f) in _FLAT.items():
            value = getattr(owner(self), f.name)
            if not f.metadata["cli"] and value != defaults[name]:
                raise ValueError(f"setting {name}={value!r} has no gist train flag")
            if not f.metadata["cli"] or value is None:
                continue
            flag = "--" + name.replace("_", "-")
            if f.type.startswith("Optional[bool"):
                flags.append(flag if value else f"--no-{flag[2:]}")
            elif isinstance(value, bool):
                flags += [flag] if value else []
            else:
                flags += [flag, str(value)]
        return flags

    def flat(self) -> dict[str, Any]:
        """``{flat name: value}`` of every leaf field."""
        return {name: getattr(owner(self), f.name) for name, (owner, f) in _FLAT.items()}

    def results(self) -> dict[str, Any]:
        """The flat fields that change what a run computes."""
        return {name: value for name, value in self.flat().items() if _FLAT[name][1].metadata["changes_results"]}

    def replace(self, **flat: Any) -> RunConfig:
        """A copy with fields set by flat name: ``cfg.replace(data_mode="partitioned", hidden=64)``."""
        out = copy.deepcopy(self)
        for name, value in flat.items():
            if name not in _FLAT:
                raise ValueError(f"{name!r} is not a run setting; choose from {sorted(_FLAT)}")
            owner, f = _FLAT[name]
            setattr(owner(out), f.name, value)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values (what run logs and checkpoints store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], strict: bool = True) -> RunConfig:
        """Read :meth:`to_dict`'s nested form or the flat form of older logs.

        Keys that are not settings (a log's ``transport``, ``dataset_split``)
        are ignored unless ``strict``."""
        flat: dict[str, Any] = {}
        for key, value in values.items():
            if key in GROUPS and isinstance(value, dict):
                group = GROUPS[key]
                for f in fields(group):
                    if f.name in value:
                        flat[flat_name(f)] = value[f.name]
            elif key in _FLAT:
                flat[key] = value
            elif strict:
                raise ValueError(f"{key!r} is not a run setting; choose from {sorted(_FLAT)}")
        return cls().replace(**flat)

    @classmethod
    def from_flat(cls, **flat: Any) -> RunConfig:
        """``RunConfig.from_flat(dataset="cora", hidden=64, data_mode="partitioned")``."""
        return cls().replace(**flat)


PARTITIONED_RECIPE = {"label_prior": True, "groups": 2, "finish_rounds": 0, "bn_reestimate": True}
"""The ``partitioned`` recipe: label-prior correction, the widths split into
``groups = 2`` halves each trained by ``m/2`` workers (``1`` for odd ``m``),
and BatchNorm re-estimation (chosen from the runs described in
``results/README.md``)."""


def gist_options(cfg: RunConfig) -> GistOptions:
    """GIST's options for ``cfg``: each :class:`GistConfig` field set, else its recipe's value.

    Raises ``ValueError`` for a group count that does not divide ``m`` or a
    finishing phase longer than the run."""
    g, m = cfg.gist, cfg.subnets
    recipe = g.recipe
    if recipe == "auto":
        recipe = "partitioned" if cfg.evaluates_on_workers else "plain"
    if recipe == "partitioned" and m > 1:
        base = GistOptions(
            label_prior=PARTITIONED_RECIPE["label_prior"],
            groups=PARTITIONED_RECIPE["groups"] if m % PARTITIONED_RECIPE["groups"] == 0 else 1,
            finish_rounds=PARTITIONED_RECIPE["finish_rounds"],
            bn_reestimate=PARTITIONED_RECIPE["bn_reestimate"],
        )
    else:
        base = GistOptions(groups=m)
    out = GistOptions(
        label_prior=base.label_prior if g.label_prior is None else g.label_prior,
        groups=base.groups if g.groups is None else g.groups,
        finish_rounds=base.finish_rounds if g.finish_rounds is None else g.finish_rounds,
        bn_reestimate=base.bn_reestimate if g.bn_reestimate is None else g.bn_reestimate,
    )
    if m % out.groups != 0:
        raise ValueError(f"subnet_groups ({out.groups}) must divide m ({m})")
    if out.finish_rounds > cfg.rounds:
        raise ValueError(f"finish_rounds ({out.finish_rounds}) exceeds rounds ({cfg.rounds})")
    return out


def setting_fields() -> Iterator[tuple[str, Optional[str], dataclasses.Field]]:
    """``(flat name, group or None, field)`` of every leaf setting, in order."""
    for f in fields(RunConfig):
        if f.name in GROUPS:
            for g in fields(GROUPS[f.name]):
                yield flat_name(g), f.name, g
        else:
            yield flat_name(f), None, f


def _owner(group: Optional[str]) -> Callable[[RunConfig], Any]:
    return (lambda cfg: getattr(cfg, group)) if group else (lambda cfg: cfg)


_FLAT: dict[str, tuple[Callable[[RunConfig], Any], dataclasses.Field]] = {}
for _name, _group, _field in setting_fields():
    if _name in _FLAT:  # pragma: no cover - a programming error caught at import
        raise RuntimeError(f"two settings share the flat name {_name!r}")
    _FLAT[_name] = (_owner(_group), _field)


def flat_names(*, changes_results: Optional[bool] = None, per_run: Optional[bool] = None) -> list[str]:
    """Flat names of the settings, optionally only those with the given marks."""
    out = []
    for name, (_, f) in _FLAT.items():
        if changes_results is not None and f.metadata["changes_results"] != changes_results:
            continue
        if per_run is not None and f.metadata["per_run"] != per_run:
            continue
        out.append(name)
    return out
