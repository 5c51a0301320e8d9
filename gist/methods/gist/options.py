"""GIST's own settings (:class:`GistConfig`) and the options a run resolves from them (:class:`GistOptions`).

``--method gist`` is the only method that reads these; the registry
(:data:`gist.registry.METHODS`) names this module as GIST's options, so
``gist train --help`` lists them and a sweep checks them without importing
torch. Each option of the partitioned-data recipe left at ``None`` takes its
value from ``recipe``: ``plain`` is the published algorithm; ``partitioned``
the recipe measured to work when each worker holds only its own part
(``results/README.md``); ``auto`` (the default) is ``partitioned`` for
``--data-mode partitioned`` with ``m > 1`` and ``plain`` otherwise.
:func:`gist_options` resolves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from ...config import DEVICE_PATTERN
from ...errors import ConfigError
from ...registry import Registry
from ...settings import setting

if TYPE_CHECKING:
    from ...config import RunConfig

RECIPES = ("auto", "plain", "partitioned")
COORDINATORS: Registry[Any] = Registry(
    "coordinator",
    {"central": "gist.methods.gist.central:CentralGIST", "sharded": "gist.methods.gist.sharded:ShardedGIST"},
)
"""Where the full model lives: each name a class of this package (:meth:`~.base.GIST.coordinator_class`)."""
WIRE_DTYPES = ("float32", "bfloat16", "float16")
SCORERS = ("graph", "parts")
ASSIGNMENTS = ("random", "rolling")
"""How each round groups a width's units (:func:`gist.subnets.draw_partition`)."""


@dataclass
class GistConfig:
    """The settings of ``--method gist`` (``cfg.options`` of a GIST run)."""

    FORMER_DEFAULTS: ClassVar[dict[str, tuple[Any, ...]]] = {"wire_dtype": ("float32",)}
    """Values older logs of other methods recorded as these settings' defaults."""

    coordinator: str = setting(
        "central",
        choices=COORDINATORS.names,
        changes_results=False,
        help="where the full model lives: central (rank 0 holds it, splits and merges), sharded (unit j "
        "of every width lives on worker j mod m; sub-networks are assembled with all-to-all exchanges)",
    )
    coordinator_device: Optional[str] = setting(
        None,
        changes_results=False,
        help="where the coordinator keeps the full model (default: --device): cpu keeps a model wider "
        "than one GPU in host memory while the workers train on the GPU; splitting and merging then run there",
    )
    wire_dtype: Optional[str] = setting(
        None,
        choices=WIRE_DTYPES,
        help="dtype of the parameter and optimizer-state buffers on the wire (default: the recipe's, "
        "bfloat16 for the partitioned recipe, else float32): bfloat16 or float16 halve their bytes "
        "(rounded to nearest; integer statistics stay exact); the coordinator's model stays float32",
    )
    scorer: str = setting(
        "graph",
        choices=SCORERS,
        help="graph: score the model on the whole graph at the coordinator; parts: with --data-mode "
        "partitioned, each worker scores its own part and the counts are summed (no process loads the "
        "whole graph; edges between parts are missing)",
    )
    recipe: str = setting(
        "auto",
        flat="gist_recipe",
        choices=RECIPES,
        help="defaults of the options below: plain (published GIST), partitioned (the recipe for "
        "partitioned data), auto (partitioned for --data-mode partitioned, else plain)",
    )
    label_prior: Optional[bool] = setting(
        None,
        help="train worker i on logits + log(π_i / π) (π_i: its part's training-label frequencies, "
        "π: the whole graph's), so each sub-network stops fitting its part's label mix",
    )
    groups: Optional[int] = setting(
        None,
        flat="subnet_groups",
        minimum=1,
        help="split widths into s groups; the m/s workers holding a group average their copies "
        "(s = m: plain GIST, s = 1: model averaging); must divide m",
    )
    finish_rounds: Optional[int] = setting(
        None,
        minimum=0,
        help="train the last K rounds as model averaging of the full model (local SGD with a fresh optimizer)",
    )
    bn_reestimate: Optional[bool] = setting(
        None,
        help="before each evaluation, recompute the merged model's BatchNorm statistics exactly over "
        "the workers' graphs, layer by layer (a few values per unit per worker)",
    )
    assignment: str = setting(
        "random",
        choices=ASSIGNMENTS,
        help="how each round groups the units of a width: random (a fresh random split, as published), "
        "rolling (contiguous windows that move a quarter of their length each round, so every unit "
        "visits every group and part in turn, as FedRolex rolls sub-models)",
    )
    full_every: int = setting(
        0,
        minimum=0,
        help="every K-th round trains the full model on every worker, copies averaged (s = 1, a local "
        "SGD round), between the split rounds; 0: never",
    )
    width_scaler: bool = setting(
        False,
        help="HeteroFL's scaler: in the local steps, multiply the input of every layer that sums over a "
        "split width by s (the full width over the sub-network's), so a narrow sub-network's "
        "pre-activations have the merged model's scale",
    )

    def check(self, cfg: RunConfig) -> None:
        """The devices, the scorer and the recipe's options for ``cfg`` (:func:`gist_options`)."""
        if self.coordinator_device is not None and not DEVICE_PATTERN.match(str(self.coordinator_device)):
            raise ConfigError(f"coordinator_device must be auto, cpu, cuda or cuda:N, got {self.coordinator_device!r}")
        if self.scorer == "parts" and not cfg.workers_hold_parts:
            raise ConfigError(
                "scorer 'parts' is for --data-mode partitioned with m > 1 (the workers score their own parts); "
                "use --scorer graph"
            )
        gist_options(cfg, self)

    @property
    def scores_on_parts_only(self) -> bool:
        """Whether no process scores the model on the whole graph (``scorer = "parts"``)."""
        return self.scorer == "parts"


@dataclass(frozen=True)
class GistOptions:
    """:class:`GistConfig`'s recipe options decided for one run (see :func:`gist_options`)."""

    label_prior: bool = False
    groups: int = 1
    """``s``: sub-networks per round (``m`` for plain GIST)."""
    finish_rounds: int = 0
    bn_reestimate: bool = False
    optimizer_state: str = "fresh"
    """What a worker's optimizer starts each round from (``--optimizer-state``)."""
    wire_dtype: str = "float32"
    """The dtype of the buffers on the wire (``--wire-dtype``)."""

    @property
    def wire_torch_dtype(self) -> Any:
        """:attr:`wire_dtype` as a ``torch.dtype`` (imports torch)."""
        import torch

        return getattr(torch, self.wire_dtype)


PARTITIONED_RECIPE = {
    "label_prior": True,
    "groups": 2,
    "finish_rounds": 0,
    "bn_reestimate": True,
    "optimizer_state": "second-moment",
    "wire_dtype": "bfloat16",
}
"""The ``partitioned`` recipe: label-prior correction, the widths split into
``groups = 2`` halves each trained by ``m/2`` workers (``1`` for odd ``m``),
BatchNorm re-estimation, Adam's bias-corrected second moment carried with the
sub-networks (by the coordinator, or with ``--coordinator sharded`` by each
unit's owner; fresh with ``--optimizer sgd``, which keeps none), and every
buffer on the wire in bfloat16, chosen from the runs described in
``results/README.md`` (``optimizer-state``: on Amazon Computers at ``m = 8``
this ties the fully carried Adam at a quarter of its bytes)."""


def gist_options(cfg: RunConfig, settings: Optional[GistConfig] = None) -> GistOptions:
    """GIST's options for ``cfg``: each :class:`GistConfig` field set, else its
    recipe's value (``optimizer_state``: ``cfg.local``'s, else the recipe's).
    ``settings`` default ``cfg.options`` where it is a
    :class:`GistConfig`, else GIST's defaults (``full``: GIST at ``m = 1``).

    Raises :class:`~gist.errors.ConfigError` for a group count that does not
    divide ``m`` or a finishing phase longer than the run."""
    g, m = settings if settings is not None else gist_settings(cfg), cfg.subnets
    recipe = g.recipe
    if recipe == "auto":
        recipe = "partitioned" if cfg.workers_hold_parts else "plain"
    if recipe == "partitioned" and m > 1:
        base = GistOptions(
            label_prior=PARTITIONED_RECIPE["label_prior"],
            groups=PARTITIONED_RECIPE["groups"] if m % PARTITIONED_RECIPE["groups"] == 0 else 1,
            finish_rounds=PARTITIONED_RECIPE["finish_rounds"],
            bn_reestimate=PARTITIONED_RECIPE["bn_reestimate"],
            optimizer_state=PARTITIONED_RECIPE["optimizer_state"] if cfg.local.optimizer == "adam" else "fresh",
            wire_dtype=PARTITIONED_RECIPE["wire_dtype"],
        )
    else:
        base = GistOptions(groups=m)
    out = GistOptions(
        label_prior=base.label_prior if g.label_prior is None else g.label_prior,
        groups=base.groups if g.groups is None else g.groups,
        finish_rounds=base.finish_rounds if g.finish_rounds is None else g.finish_rounds,
        bn_reestimate=base.bn_reestimate if g.bn_reestimate is None else g.bn_reestimate,
        optimizer_state=cfg.local.optimizer_state or base.optimizer_state,
        wire_dtype=base.wire_dtype if g.wire_dtype is None else g.wire_dtype,
    )
    if m % out.groups != 0:
        raise ConfigError(f"subnet_groups ({out.groups}) must divide m ({m})")
    if out.finish_rounds > cfg.rounds:
        raise ConfigError(f"finish_rounds ({out.finish_rounds}) exceeds rounds ({cfg.rounds})")
    return out


def gist_settings(cfg: RunConfig) -> GistConfig:
    """``cfg.options`` of a GIST run; GIST's defaults for a method built on it (``full``)."""
    return cfg.options if isinstance(cfg.options, GistConfig) else GistConfig()
