r"""GIST layers: stock PyG layers that say which hidden widths they connect.

Each class behaves exactly like its PyG parent; the only addition is
``in_group`` / ``out_group``, the names of the hidden widths on either side
(``None`` for a width that is never split: input features and classes).
Layers whose sides share a name share one random split per round, so a user
model built from these layers splits like a stock :class:`~torch_geometric.nn.models.GCN`::

    class Net(torch.nn.Module):
        def __init__(self, in_channels, hidden, out_channels):
            super().__init__()
            self.conv1 = GISTGCNConv(in_channels, hidden, out_group="h1")
            self.norm1 = GISTBatchNorm(hidden, group="h1")
            self.conv2 = GISTGCNConv(hidden, hidden, in_group="h1", out_group="h2")
            self.head = GISTLinear(hidden, out_channels, in_group="h2")
"""

from __future__ import annotations

from typing import Any, Optional

from torch_geometric.nn import BatchNorm, GCNConv, LayerNorm, SAGEConv
from torch_geometric.nn.dense.linear import Linear

from .slicing import set_groups


class GISTGCNConv(GCNConv):
    r""":class:`~torch_geometric.nn.conv.GCNConv` whose sides belong to hidden widths.

    .. math::
        \mathbf{X}' = \hat{\mathbf{D}}^{-1/2} \hat{\mathbf{A}}
        \hat{\mathbf{D}}^{-1/2} \mathbf{X} \mathbf{W}^\top + \mathbf{b}

    Sub-network ``i`` holds ``W[P_out^i][:, P_in^i]`` and ``b[P_out^i]``.

    Args:
        in_channels: size of each input sample, :math:`d_{l-1}`.
        out_channels: size of each output sample, :math:`d_l`.
        in_group: name of the hidden width of the input (``None``: not split).
        out_group: name of the hidden width of the output (``None``: not split).
        **kwargs: passed to :class:`~torch_geometric.nn.conv.GCNConv`.

    Shapes: input node features :math:`(|\mathcal{V}|, d_{l-1})`, edge
    indices :math:`(2, |\mathcal{E}|)`; output :math:`(|\mathcal{V}|, d_l)`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        in_group: Optional[str] = None,
        out_group: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels, out_channels, **kwargs)
        set_groups(self, in_group, out_group)


class GISTSAGEConv(SAGEConv):
    r""":class:`~torch_geometric.nn.conv.SAGEConv` whose sides belong to hidden widths.

    .. math::
        \mathbf{x}'_i = \mathbf{W}_1 \mathbf{x}_i + \mathbf{W}_2 \cdot
        \mathrm{mean}_{j \in \mathcal{N}(i)} \mathbf{x}_j + \mathbf{b}

    Neighbour (``lin_l``) and root (``lin_r``) weights are sliced with the same
    unit groups: sub-network ``i`` holds ``W[P_out^i][:, P_in^i]`` of both
    and ``lin_l.bias[P_out^i]``.

    Args:
        in_channels, out_channels: as in :class:`~torch_geometric.nn.conv.SAGEConv`.
        in_group, out_group: hidden width names of the two sides (``None``: not split).
        **kwargs: passed to :class:`~torch_geometric.nn.conv.SAGEConv`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        in_group: Optional[str] = None,
        out_group: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels, out_channels, **kwargs)
        set_groups(self, in_group, out_group)


class GISTLinear(Linear):
    r""":class:`torch_geometric.nn.Linear` (:math:`\mathbf{x}\mathbf{W}^\top + \mathbf{b}`)
    whose sides belong to hidden widths; a head has ``in_group`` set and
    ``out_group=None``, so its bias is shared by all workers."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        in_group: Optional[str] = None,
        out_group: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels, out_channels, **kwargs)
        set_groups(self, in_group, out_group)


class GISTBatchNorm(BatchNorm):
    r""":class:`torch_geometric.nn.BatchNorm` over the hidden width ``group``;
    affine parameters and running statistics are sliced with that width."""

    def __init__(self, in_channels: int, *, group: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(in_channels, **kwargs)
        set_groups(self, group, group)


class GISTLayerNorm(LayerNorm):
    r""":class:`torch_geometric.nn.LayerNorm` over the hidden width ``group``.

    A sub-network normalises over its own ``d/m`` channels, so its statistics
    are those of the slice, not of the full width."""

    def __init__(self, in_channels: int, *, group: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(in_channels, **kwargs)
        set_groups(self, group, group)
