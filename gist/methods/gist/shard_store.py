"""The shards one process holds of a model no process holds whole.

:class:`ShardStore` keeps, for each owner local to this process, the rows of
every sliced tensor that owner holds (:class:`~.shards.Ownership`), and one
copy of the shared tensors. It hands them out as flat buffers by *key*: a
split-spec layer's index (what evaluation needs, layer by layer) or
:data:`FULL_SHARD` (the whole shard: ``--save-model``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ...engine.checkpoint import Checkpointer, CheckpointError
from ...nn.slicing import SplitSpec
from .shards import Ownership

FULL_SHARD = 1 << 30
"""The key of an owner's whole shard; layer ``k`` is key ``k``."""


class ShardStore:
    """The local owners' shards (``{owner: {name: rows}}``) and the shared tensors, on ``device``;
    ``file_prefix`` names their checkpoint side files (the model's ``shard``, the optimizer state's ``optim-shard``)."""

    def __init__(
        self,
        ownership: Ownership,
        spec: SplitSpec,
        shards: Mapping[int, Mapping[str, Tensor]],
        shared: Mapping[str, Tensor],
        device: torch.device,
        dtype: torch.dtype,
        file_prefix: str = "shard",
    ) -> None:
        self.ownership, self.spec, self.device, self.dtype = ownership, spec, device, dtype
        self.file_prefix = file_prefix
        self.shards = {o: {n: t.to(device) for n, t in shard.items()} for o, shard in shards.items()}
        self.shared = {n: t.detach().to(device, copy=True) for n, t in shared.items()}

    @property
    def owners(self) -> list[int]:
        return sorted(self.shards)

    def names(self, key: int) -> list[str]:
        """The sliced tensors of key ``key``."""
        if key == FULL_SHARD:
            return self.ownership.sliced
        return self.ownership.layer_names(self.spec.layers[key].path)

    def provide(self, owner: int, key: int, rows: slice = slice(None)) -> Tensor:
        """Owner ``owner``'s rows of key ``key``'s tensors (positions ``rows``
        along the dimension it owns of each), as one flat buffer."""
        parts = [self._rows(self.shards[owner], n, rows).reshape(-1) for n in self.names(key)]
        return torch.cat(parts) if parts else torch.empty(0, dtype=self.dtype, device=self.device)

    def like(self, key: int, rows: slice = slice(None)) -> Tensor:
        """An empty buffer the size of one owner's :meth:`provide` of ``key`` and ``rows`` (all owners' are equal)."""
        shard = self.shards[self.owners[0]]
        numel = sum(self._rows(shard, n, rows).numel() for n in self.names(key))
        return torch.empty(numel, dtype=self.dtype, device=self.device)

    def split(self, flat: Tensor, key: int, rows: slice = slice(None)) -> dict[str, Tensor]:
        """A :meth:`provide` buffer as ``{name: view}``."""
        shard = self.shards[self.owners[0]]
        out, offset = {}, 0
        for n in self.names(key):
            shape = self._rows(shard, n, rows).shape
            out[n] = flat[offset : offset + shape.numel()].view(shape)
            offset += shape.numel()
        return out

    def _rows(self, shard: Mapping[str, Tensor], name: str, rows: slice) -> Tensor:
        return shard[name] if rows == slice(None) else self.ownership.rows(name, shard[name], rows)

    def with_shared(self, part: dict[str, Tensor], layer: int) -> dict[str, Tensor]:
        """An owner's part of layer ``layer`` and the layer's shared tensors: what the layer computes with."""
        path = self.spec.layers[layer].path
        prefix = f"{path}." if path else ""
        part.update({n: t for n, t in self.shared.items() if n.startswith(prefix)})
        return part

    def assemble(self, parts: list[Mapping[str, Tensor]], names: list[str]) -> dict[str, Tensor]:
        """The full model's ``state_dict`` (on the CPU, in the order of ``names``) from every owner's shard."""
        state = self.ownership.assemble(parts)
        state.update(self.shared)
        return {n: state[n].detach().to("cpu", copy=True) for n in names}

    def shard_file(self, owner: int) -> str:
        """The name of owner ``owner``'s checkpoint side file (:meth:`gist.engine.Checkpointer.side_path`)."""
        return f"{self.file_prefix}-{owner}-of-{self.ownership.num_owners}"

    def write_checkpoint(self, checkpointer: Checkpointer, round: int) -> None:
        """Each local owner's shard and the shared tensors, on the CPU, as its side file of ``round``."""
        for owner, shard in self.shards.items():
            payload = {
                "round": round,
                "owner": owner,
                "owners": self.ownership.num_owners,
                "shard": {n: t.detach().cpu() for n, t in shard.items()},
                "shared": {n: t.detach().cpu() for n, t in self.shared.items()},
            }
            checkpointer.write_side(self.shard_file(owner), round, payload)

    @torch.no_grad()
    def read_checkpoint(self, checkpointer: Checkpointer, round: int) -> None:
        """Load every local owner's side file of ``round`` into its shard (and the shared tensors)."""
        for owner, shard in self.shards.items():
            saved = checkpointer.read_side(self.shard_file(owner), round)
            if int(saved["round"]) != round or int(saved["owners"]) != self.ownership.num_owners:
                path = checkpointer.side_path(self.shard_file(owner), round)
                raise CheckpointError(f"--resume: {path} holds round {saved['round']} of {saved['owners']} shards")
            for n, t in shard.items():
                t.copy_(saved["shard"][n])
            for n, t in self.shared.items():
                t.copy_(saved["shared"][n])
