r"""What GIST's two coordinators share: the method ``gist``, its options, schedule and layouts.

Round ``r`` (GUIDE §2):

1. draw the width split of ``(seed, r)`` into ``s`` groups (``s = m`` in
   plain GIST; see :class:`~gist.subnets.SubnetSchedule`);
2. put together sub-network ``g`` of the full model for each group, one flat
   buffer each; worker ``w`` gets group ``w mod s``;
3. worker ``w`` loads it into its narrow model and runs ``ζ`` optimizer
   steps on its own graph data with a fresh optimizer (with the label-prior
   correction, on corrected logits), then returns its buffer
   (:class:`~.worker.Worker`);
4. merge: the copies of each group are averaged, the groups written back
   into their slices, shared tensors averaged;
5. every ``eval_every`` rounds, evaluate the full-width model: on the whole
   graph at the coordinator (``scorer = "graph"``) and, in ``partitioned``
   mode, also on the workers, each on its own part (the sum of their counts
   is the ``parts`` score). With BatchNorm re-estimation the workers first
   pool the merged model's BatchNorm statistics over their nodes.

Where the full model lives is the *coordinator*: ``central``
(:class:`~.central.CentralGIST`: rank 0 holds it, splits and merges) or
``sharded`` (:class:`~.sharded.ShardedGIST`: unit ``j`` of every width lives
on worker ``j mod m``). :class:`GIST` is the method the registry knows; like
:class:`pathlib.Path`, constructing it builds the coordinator the config asks
for (:meth:`GIST.coordinator_class`), and both are ``GIST`` instances.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar, Optional

import torch
from torch import nn

from ...config import RunConfig
from ...devices import resolve_device, worker_device
from ...engine import RankSetup, RoundDriver
from ...engine.checkpoint import CheckpointError
from ...errors import ConfigError
from ...nn.slicing import SplitSpec, build_split_spec, check_width_split
from ...subnets import FlatLayout, subnet_layout
from .corrections import batch_norms
from .options import COORDINATORS, GistConfig, gist_options, gist_settings
from .worker import carried_optimizer_state, subnet_schedule


def coordinator_device(cfg: RunConfig) -> torch.device:
    """Where the coordinator keeps the full model: GIST's ``coordinator_device``, else the workers' device."""
    where = gist_settings(cfg).coordinator_device
    return worker_device(cfg) if where is None else resolve_device(where, "coordinator_device")


def reestimated_batch_norms(model: nn.Module, cfg: RunConfig) -> int:
    """How many BatchNorm layers the workers re-estimate before each evaluation (0: none)."""
    return len(batch_norms(model)) if gist_options(cfg).bn_reestimate and cfg.subnets > 1 else 0


def label_classes(model: nn.Module, cfg: RunConfig) -> Optional[int]:
    """The model's output width, the label-prior correction's class count (``None``: no correction)."""
    if not gist_options(cfg).label_prior:
        return None
    out = getattr(model, "out_channels", None)
    if not isinstance(out, int):
        raise ConfigError("the label-prior correction needs a model with an integer `out_channels` (its classes)")
    return out


class GIST(RoundDriver):
    """The ``gist`` method: ``GIST(model, data, cfg, ...)`` is the coordinator
    ``cfg.options.coordinator`` names (module docstring).

    The state both coordinators set up (:meth:`_setup`): :attr:`device`
    (where the full model lives), :attr:`settings` (``cfg.options``),
    :attr:`options` (the recipe resolved, :class:`~.options.GistOptions`),
    :attr:`spec`, :attr:`schedule`, :attr:`layouts` (one flat layout per
    group count the schedule uses), :attr:`label_classes`,
    :attr:`batch_norms_reestimated`, :attr:`scores_parts`.
    """

    name = "gist"
    color = "tab:green"
    label = "GIST"
    Options = GistConfig
    role = "budget"
    optimizer_states = ("fresh", "carried", "second-moment")
    coordinator: ClassVar[str] = ""
    """The ``--coordinator`` value a subclass implements."""

    def __new__(cls, model: nn.Module, data: Any, cfg: RunConfig, *args: Any, **kwargs: Any) -> GIST:
        return super().__new__(cls.coordinator_class(cfg) if cls is GIST else cls)

    @classmethod
    def coordinator_class(cls, cfg: RunConfig) -> type[GIST]:
        """The coordinator class that runs ``cfg`` (:data:`~.options.COORDINATORS`)."""
        return COORDINATORS[gist_settings(cfg).coordinator]

    def _setup(self, model: nn.Module, cfg: RunConfig) -> None:
        cfg.check()
        self.device = coordinator_device(cfg)
        self.settings = gist_settings(cfg)
        self.options = gist_options(cfg)
        self.spec: SplitSpec = build_split_spec(model)
        self.schedule = subnet_schedule(cfg)
        for groups in self.schedule.group_counts():
            self.spec.check_subnets(groups)
        self.layouts = {s: subnet_layout(model, self.spec, s) for s in self.schedule.group_counts()}
        self.label_classes = label_classes(model, cfg)
        self.batch_norms_reestimated = reestimated_batch_norms(model, cfg)
        self.scores_parts = cfg.workers_hold_parts
        self.wire = self.options.wire_torch_dtype
        self.carried_policy = self.carried_optimizer_state(cfg)
        """The ``--optimizer-state`` policy whose state travels with the sub-networks, if any."""
        self.carries_optimizer = self.carried_policy is not None

    @property
    def layout(self) -> FlatLayout:
        """The flat layout of the sub-networks of the rounds before any finishing phase."""
        return self.layouts[self.options.groups]

    @property
    def num_params(self) -> int:
        return self.layout.numel

    @classmethod
    def scores_on_graph(cls, cfg: RunConfig) -> bool:
        return not (cfg.workers_hold_parts and gist_settings(cfg).scores_on_parts_only)

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """The stock model's hidden width must split into ``s`` equal groups (and ``s`` divide ``m``)."""
        check_width_split("hidden", cfg.model.hidden, gist_options(cfg).groups)

    @classmethod
    def optimizer_state(cls, cfg: RunConfig) -> str:
        """``kept`` at ``m = 1`` (the one worker keeps its optimizer); else the
        setting, else the recipe's: ``second-moment`` for the partitioned recipe, ``fresh`` otherwise."""
        return "kept" if cfg.subnets == 1 else gist_options(cfg).optimizer_state

    @classmethod
    def resolved_settings(cls, cfg: RunConfig) -> dict[str, Any]:
        """Also ``wire_dtype``, which the recipe decides where it is not set."""
        return {**super().resolved_settings(cfg), "wire_dtype": gist_options(cfg).wire_dtype}

    @classmethod
    def carried_optimizer_state(cls, cfg: RunConfig) -> Optional[str]:
        """The run's policy where its optimizer state travels with the sub-networks
        (:data:`~gist.engine.optim.CARRIED_OPTIMIZERS`, ``m > 1``), else ``None``."""
        return carried_optimizer_state(cfg)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "gist_options": asdict(self.options)}

    def method_state(self) -> dict[str, Any]:
        return {"coordinator": self.coordinator}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Also: a checkpoint of the other coordinator is refused, naming it."""
        saved = state.get("method_state", {})
        written_by = saved.get("coordinator") or ("sharded" if "sharded" in saved else "central")
        if self.coordinator and written_by != self.coordinator:
            raise CheckpointError(
                f"this checkpoint was written by --coordinator {written_by}: resume it with --coordinator {written_by}"
            )
        super().load_state_dict(state)

    @classmethod
    def distributed(cls, setup: RankSetup) -> Optional[RoundDriver]:
        if cls is GIST:
            return cls.coordinator_class(setup.cfg).distributed(setup)
        return super().distributed(setup)
