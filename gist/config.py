"""Run configuration: what every run has, in nested dataclasses, plus the method's own options.

A :class:`RunConfig` holds the method, the number of workers ``m``, the round
schedule, the seed and the devices, plus one group per concern every run
shares, and the chosen method's own settings::

    RunConfig(method, subnets, rounds, eval_every, seed, device, eval_nodes,
              data=DataConfig(...),        what graph, and how workers get it
              model=ModelConfig(...),      the stock PyG model to build
              local=LocalConfig(...),      a worker's optimizer steps per round
              dist=DistConfig(...),        where the workers run
              checkpoint=CheckpointConfig(...),
              options=...)                 the method's own settings (GIST's: GistConfig)

A method declares its options class in :data:`gist.registry.METHODS`
(``info["options"]``, importable without torch) or as its ``Options``
attribute; ``cfg.options`` is always an instance of the class of
``cfg.method`` (an empty :class:`NoOptions` for a method without any). A
method never sees another method's settings: ``cfg.replace(label_prior=True)``
on a ``ddp`` config is a :class:`~gist.errors.ConfigError` naming ``gist``.

Every leaf field has a **flat name**, unique across groups and methods, used
by the ``gist train`` flags (``--data-mode`` for ``data.mode``), the
``[settings]`` of sweep configs and the flat run logs written before the
config was nested (:meth:`RunConfig.from_dict` reads every layout ever
written). Whether a field **changes results** is said once, on the field
(:func:`gist.settings.setting`); :meth:`RunConfig.results` is what must match
on ``--resume`` and between a sweep config and a stored run log.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from .errors import ConfigError
from .registry import DATASETS, METHODS, MODELS, NORMS, PARTITIONERS, import_path
from .settings import check_fields, flat_name, leaf_fields, parse_rate, setting

DATA_MODES = ("replicated", "partitioned")
BATCHING = ("full", "cluster")
OPTIMIZERS = ("adam", "sgd")
OPTIMIZER_STATES = ("fresh", "kept", "carried", "second-moment")
BACKENDS = ("local", "dist")
DIST_BACKENDS = ("gloo", "nccl")
MAX_SEED = 2**32 - 1
"""The largest seed: a seed and a round number make one 64-bit generator seed."""
EVALUATIONS_PER_RUN = 50
"""Without ``eval_every``: at most how many evaluations a run makes (besides the one after its last round)."""
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
"""The values of the ``device`` settings (resolved by :func:`gist.devices.resolve_device`)."""


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
        check_fields(self)
        if self.batching == "cluster" and not 1 <= self.clusters_per_batch <= self.num_clusters:
            raise ConfigError("clusters_per_batch must be between 1 and num_clusters")


@dataclass
class ModelConfig:
    """A stock ``torch_geometric.nn.models`` GCN / GraphSAGE (see :func:`gist.nn.build_model`)."""

    kind: str = setting("gcn", flat="model", choices=MODELS.names, help="model family")
    layers: int = setting(3, minimum=1, help="message-passing layers L")
    hidden: int = setting(256, minimum=1, help="hidden width d")
    norm: str = setting(
        "auto",
        choices=lambda: ["auto", *NORMS],
        help="normalisation after each hidden layer; auto: batch_norm with --data-mode partitioned (every "
        "method there loses most of its accuracy without it, results/README.md), none otherwise",
    )
    dropout: float = setting(0.5, help="dropout probability")

    def check(self) -> None:
        check_fields(self)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class LocalConfig:
    """How a worker trains each round: ``ζ`` optimizer steps."""

    local_steps: int = setting(10, minimum=1, help="local steps ζ per round")
    lr: float = setting(0.01, help="learning rate")
    weight_decay: float = setting(0.0, minimum=0.0, help="weight decay")
    optimizer: str = setting("adam", choices=OPTIMIZERS, help="optimizer")
    optimizer_state: Optional[str] = setting(
        None,
        choices=OPTIMIZER_STATES,
        help="what a worker's optimizer starts each round from: fresh (new state: plain GIST's default), kept (the "
        "worker's own from its last round: local SGD's and DDP's), carried (the state of the parameters it is "
        "sent, which travels with them: gist and local-sgd, Adam only; the partitioned recipe's default), "
        "second-moment (gist: only Adam's bias-corrected second moment travels, a third of carried's bytes; the "
        "first moment starts fresh); "
        "default: the method's",
    )

    def check(self) -> None:
        check_fields(self)
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


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
        "is shaped to this rate, e.g. 100mbit or 1gbit (root and iproute2 needed); with --hosts, shape the "
        "links between the hosts instead; none: unshaped",
    )
    hosts: int = setting(
        1,
        minimum=1,
        changes_results=False,
        help="with --procs M (or a sweep's processes): spread the M processes over this many virtual hosts on "
        "this machine (network namespaces on a bridge, each running a torchrun agent; root and iproute2 "
        "needed); 1: all on this host",
    )

    def check(self) -> None:
        check_fields(self)
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {self.timeout}")
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
        check_fields(self)


@dataclass
class NoOptions:
    """The options of a method that has none."""

    def check(self, cfg: RunConfig) -> None:
        """Nothing to check."""


def options_class(method: str) -> type:
    """The options dataclass of ``method``: its registered class's ``Options``,
    else the registry's ``info["options"]`` path (imported without torch), else
    :class:`NoOptions`. :class:`~gist.errors.ConfigError` for an unknown method."""
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS.names()}, got {method!r}")
    path = METHODS.info(method).get("options")
    if path:
        return import_path(path)
    return getattr(METHODS.loaded(method), "Options", None) or NoOptions  # a plug-in registered with its class


GROUPS = {
    "data": DataConfig,
    "model": ModelConfig,
    "local": LocalConfig,
    "dist": DistConfig,
    "checkpoint": CheckpointConfig,
}
"""The groups every run has, by field name of :class:`RunConfig`."""


@dataclass
class RunConfig:
    """Every setting of a run (see the module docstring)."""

    method: str = setting("gist", choices=METHODS.names, help="training method")
    subnets: int = setting(2, minimum=1, help="sub-networks / workers m")
    rounds: int = setting(30, minimum=1, help="rounds to train")
    eval_every: Optional[int] = setting(
        None,
        minimum=1,
        help="evaluate the full model every k rounds and after the last; default: every round for runs of up "
        f"to {EVALUATIONS_PER_RUN} rounds, else every ceil(rounds / {EVALUATIONS_PER_RUN}) (at most "
        f"{EVALUATIONS_PER_RUN} evaluations a run, and the last; see also --eval-nodes for wide models)",
    )
    seed: int = setting(
        0, minimum=0, maximum=MAX_SEED, help="seeds the model, the width splits, partitions and dropout"
    )
    device: str = setting(
        "auto",
        changes_results=False,
        help="where the model, the graphs and every worker's model live: auto (cuda where available, "
        "else cpu), cpu, cuda (with processes: cuda:LOCAL_RANK) or cuda:N; CUDA results are close to, not "
        "bit-identical with, CPU results",
    )
    eval_nodes: Optional[int] = setting(
        None,
        minimum=1,
        help="score the model on a fixed seeded sample of this many nodes per split, computed on their "
        "(L+1)-hop neighbourhood only (the same predictions as on the whole graph, at a fraction of the "
        "cost for wide models and large graphs); default: every node",
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    options: Any = None
    """The method's own settings: an instance of :func:`options_class` ``(method)``."""

    def __post_init__(self) -> None:
        if self.options is None:
            self.options = options_class(self.method)()

    # ------------------------------------------------------------------ checks

    def check(self) -> RunConfig:
        """Raise :class:`~gist.errors.ConfigError` naming the first bad value; return ``self``."""
        check_fields(self)
        for name in GROUPS:
            getattr(self, name).check()
        if not DEVICE_PATTERN.match(str(self.device)):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        expected = options_class(self.method)
        if type(self.options) is not expected:
            raise ConfigError(
                f"--method {self.method} takes {expected.__name__} options, not {type(self.options).__name__} "
                "(set the method with cfg.replace(method=...), which gives it its own options)"
            )
        check_fields(self.options)
        self.options.check(self)
        return self

    def check_processes(self, world_size: int) -> None:
        """:class:`~gist.errors.ConfigError` unless a job of ``world_size`` processes can run
        this config: GIST and its baselines run one process per worker."""
        if world_size != self.subnets:
            raise ConfigError(
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
    def norm(self) -> str:
        """The normalisation the model gets: ``model.norm``, with ``auto``
        resolved (``batch_norm`` for partitioned data, else ``none``)."""
        if self.model.norm != "auto":
            return self.model.norm
        return "batch_norm" if self.data.mode == "partitioned" else "none"

    @property
    def workers_hold_parts(self) -> bool:
        """``partitioned`` data with ``m > 1``: each worker holds only its own node part."""
        return self.data.mode == "partitioned" and self.subnets > 1

    # ---------------------------------------------------------- flat names

    def flat(self) -> dict[str, Any]:
        """``{flat name: value}`` of every leaf field, the method's options included."""
        out = {name: getattr(owner(self), f.name) for name, (owner, f) in _FLAT.items()}
        out.update({flat_name(f): getattr(self.options, f.name) for f in leaf_fields(self.options)})
        return out

    def results(self) -> dict[str, Any]:
        """The flat fields that change what a run computes (the method's own included, no other method's)."""
        marks = {name: f.metadata["changes_results"] for name, (_, f) in _FLAT.items()}
        marks.update({flat_name(f): f.metadata["changes_results"] for f in leaf_fields(self.options)})
        values = {name: value for name, value in self.flat().items() if marks[name]}
        return {**values, "norm": self.norm}  # auto compares as what it resolves to

    def replace(self, **flat: Any) -> RunConfig:
        """A copy with fields set by flat name: ``cfg.replace(data_mode="partitioned", hidden=64)``.

        ``method`` is applied first; a new method starts from its own default
        options. A setting of another method is a :class:`~gist.errors.ConfigError` naming it."""
        out = copy.deepcopy(self)
        method = flat.pop("method", out.method)
        if method != out.method:
            out.method = method
            out.options = options_class(method)()
        mine = {flat_name(f): f for f in leaf_fields(out.options)}
        for name, value in flat.items():
            if name in _FLAT:
                owner, f = _FLAT[name]
                setattr(owner(out), f.name, value)
            elif name in mine:
                setattr(out.options, mine[name].name, value)
            else:
                raise ConfigError(_not_a_setting(name, out.method))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values (what run logs and checkpoints store); the
        method's options under the method's name (``"gist": {...}``), if it has any."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in GROUPS:
                out[f.name] = dataclasses.asdict(value)
            elif f.name != "options":
                out[f.name] = value
        options = dataclasses.asdict(self.options)
        if options:
            out[self.method] = options
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], strict: bool = True) -> RunConfig:
        """Read :meth:`to_dict`'s nested form or the flat form of older logs.

        Another method's settings (older logs recorded GIST's options for every
        method) are dropped where they hold that method's defaults, and are an
        error otherwise. Keys that are not settings (a log's ``transport``,
        ``dataset_split``) are ignored unless ``strict``; with ``strict=False``
        another method's settings are dropped whatever their values (a value that
        was once that setting's default counts as a default). A method's
        setting that ``values`` lacks takes its options class's
        ``ABSENT_MEANS`` value where it has one (the log predates the setting)."""
        method = values.get("method", cls.method_default())
        own = options_class(method)
        flat: dict[str, Any] = {"method": method}
        for key, value in values.items():
            if key == "method":
                continue
            if key in GROUPS and isinstance(value, dict):
                for f in fields(GROUPS[key]):
                    if f.name in value:
                        flat[flat_name(f)] = value[f.name]
            elif key in METHODS and isinstance(value, dict):  # a method's options
                group = own if METHODS.normalize(key) == METHODS.normalize(method) else options_class(key)
                for f in leaf_fields(group):
                    if f.name in value:
                        flat[flat_name(f)] = value[f.name]
            else:
                flat[key] = value
        for f in leaf_fields(own):  # a setting the log predates: what the run was made with
            if f.name in getattr(own, "ABSENT_MEANS", {}):
                flat.setdefault(flat_name(f), own.ABSENT_MEANS[f.name])
        known = {flat_name(f) for f in leaf_fields(own)} | set(_FLAT)
        kept: dict[str, Any] = {}
        for key, value in flat.items():
            if key in known or key == "method":
                kept[key] = value
                continue
            owner = _option_owner(key)
            if owner is None:
                if strict:
                    raise ConfigError(f"{key!r} is not a run setting; choose from {sorted(known)}")
            elif strict and value not in _option_defaults(owner, key):
                raise ConfigError(_not_a_setting(key, method))
        return cls().replace(**kept)

    @classmethod
    def from_flat(cls, **flat: Any) -> RunConfig:
        """``RunConfig.from_flat(dataset="cora", hidden=64, data_mode="partitioned")``."""
        return cls().replace(**flat)

    @staticmethod
    def method_default() -> str:
        return next(f.default for f in fields(RunConfig) if f.name == "method")


def _not_a_setting(name: str, method: str) -> str:
    owner = _option_owner(name)
    flag = "--" + name.replace("_", "-")
    if owner is not None:
        return f"{flag} is a setting of --method {owner}, not of --method {method}"
    return f"{name!r} is not a run setting; choose from {sorted(RunConfig(method=method).flat())}"


def _option_owner(name: str) -> Optional[str]:
    """The method whose options have the flat name ``name`` (``None``: no method's)."""
    for method in METHODS.names():
        if any(flat_name(f) == name for f in leaf_fields(options_class(method))):
            return method
    return None


def _option_defaults(method: str, name: str) -> list[Any]:
    """The default of ``method``'s setting ``name`` and any value older logs recorded
    as its default (the options class's ``FORMER_DEFAULTS``)."""
    cls = options_class(method)
    field_name = next(f.name for f in leaf_fields(cls) if flat_name(f) == name)
    return [getattr(cls(), field_name), *getattr(cls, "FORMER_DEFAULTS", {}).get(field_name, ())]


def setting_fields(method: Optional[str] = None) -> Iterator[tuple[str, Optional[str], dataclasses.Field]]:
    """``(flat name, group, field)`` of every leaf setting, in order: the
    groups every run has (group ``None`` for :class:`RunConfig`'s own), then
    each method's options (group: the method's name), or only ``method``'s."""
    for f in fields(RunConfig):
        if f.name in GROUPS:
            for g in fields(GROUPS[f.name]):
                yield flat_name(g), f.name, g
        elif f.name != "options":
            yield flat_name(f), None, f
    for name in [method] if method is not None else METHODS.names():
        for f in leaf_fields(options_class(name)):
            yield flat_name(f), name, f


def _owner(group: Optional[str]) -> Any:
    return (lambda cfg: getattr(cfg, group)) if group else (lambda cfg: cfg)


_FLAT: dict[str, tuple[Any, dataclasses.Field]] = {}
for _f in fields(RunConfig):
    if _f.name in GROUPS:
        for _g in fields(GROUPS[_f.name]):
            _FLAT[flat_name(_g)] = (_owner(_f.name), _g)
    elif _f.name != "options":
        _FLAT[flat_name(_f)] = (_owner(None), _f)

RUN_SETTINGS = tuple(_FLAT)
"""The flat names of the settings every run has (no method's own)."""


def check_flat_names() -> None:
    """``RuntimeError`` if two settings (of any groups or methods) share a flat name."""
    seen: dict[str, str] = {}
    for name, group, _ in setting_fields():
        if name in seen:
            raise RuntimeError(f"the settings of {seen[name]} and {group or 'the run'} share the flat name {name!r}")
        seen[name] = group or "the run"


def flat_names(
    *, changes_results: Optional[bool] = None, per_run: Optional[bool] = None, method: Optional[str] = None
) -> list[str]:
    """Flat names of the settings (with every method's options, or only ``method``'s),
    optionally only those with the given marks."""
    out = []
    for name, _, f in setting_fields(method):
        if changes_results is not None and f.metadata["changes_results"] != changes_results:
            continue
        if per_run is not None and f.metadata["per_run"] != per_run:
            continue
        out.append(name)
    return out
