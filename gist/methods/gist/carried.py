r"""The optimizer state that travels with the sub-networks (``--optimizer-state carried`` or ``second-moment``).

The coordinator keeps, for every trainable parameter of the full model,
Adam's state per entry (``carried``: first and second moments and a step
count, :class:`gist.engine.optim.EntrywiseAdam`; ``second-moment``: the
bias-corrected second moment alone, :class:`~gist.engine.optim.SecondMomentAdam`),
and splits it exactly as the
parameter is split: worker ``w`` gets the moments of the entries it trains
(:meth:`CarriedState.slices`), starts its optimizer from them, and returns
them with its sub-network; the coordinator writes them back into their slices
(:meth:`CarriedState.merge`), copies of a group (``s < m``) averaged and
shared parameters' state averaged, as the parameters themselves are. The
state of a block no worker trains this round (one that crosses groups) stays
as it was. A fresh start is all zeros, so the first round is GIST's fresh
Adam. The buffers travel in the wire dtype, counted as ``optim`` bytes.

With ``--coordinator sharded`` no process holds this: each unit's owner
keeps the state of its rows in a second shard store, exchanged with the
sub-networks exactly as their parameters are (:mod:`~.sharded`), from
:func:`state_split_spec` and :func:`state_layouts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ...engine.optim import STATE_KEYS, state_layout, state_names
from ...nn.slicing import SplitSpec
from ...subnets import FlatLayout, RoundPlan, WidthPartition, average_states, merge_states, slice_state


def trainable_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """The shapes of the parameters an optimizer steps (``model`` may be on the ``meta`` device)."""
    return {n: p.shape for n, p in model.named_parameters() if p.requires_grad}


def state_split_spec(spec: SplitSpec, params: Sequence[str], keys: Sequence[str] = STATE_KEYS) -> SplitSpec:
    """How the optimizer state (``keys`` per parameter) of ``params`` splits: each state tensor as its parameter."""
    axes = {name: spec.tensor_axes[name.rpartition(".")[0]] for name in state_names(params, keys)}
    return SplitSpec(tensor_axes=axes, widths=spec.widths, layers=spec.layers)


def state_layouts(
    layouts: Mapping[int, FlatLayout], params: Sequence[str], keys: Sequence[str] = STATE_KEYS
) -> dict[int, FlatLayout]:
    """Per group count, the flat layout of a sub-network's optimizer state (as the workers lay it out)."""
    return {s: state_layout(layout, list(params), keys) for s, layout in layouts.items()}


class CarriedState:
    """The full model's optimizer state on the coordinator, split and merged like its parameters."""

    def __init__(
        self,
        model: nn.Module,
        spec: SplitSpec,
        layouts: Mapping[int, FlatLayout],
        device,
        keys: Sequence[str] = STATE_KEYS,
    ) -> None:
        params = trainable_shapes(model)
        self.tensors = {
            f"{n}.{key}": torch.zeros(shape, dtype=torch.float32, device=device)
            for n, shape in params.items()
            for key in keys
        }
        self.spec = state_split_spec(spec, list(params), keys)
        self.layouts = state_layouts(layouts, list(params), keys)

    def slices(self, partition: WidthPartition, groups: int, wire: torch.dtype) -> list[Tensor]:
        """Each group's state, one flat buffer in the wire dtype."""
        layout = self.layouts[groups]
        return [
            layout.encode(layout.flatten(slice_state(self.tensors, self.spec, partition, g)), wire)
            for g in range(groups)
        ]

    def merge(self, partition: WidthPartition, plan: RoundPlan, returned: Sequence[Tensor]) -> None:
        """Write every worker's returned state back (copies of a group averaged first)."""
        layout = self.layouts[plan.groups]
        states = [layout.unflatten(layout.decode(t.to(next(iter(self.tensors.values())).device))) for t in returned]
        groups = [average_states([states[w] for w in plan.members(g)]) for g in range(plan.groups)]
        merge_states(self.tensors, self.spec, partition, groups)

    def state_dict(self) -> dict[str, Tensor]:
        return {n: t.detach().cpu() for n, t in self.tensors.items()}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        for n, t in self.tensors.items():
            t.copy_(state[n])
