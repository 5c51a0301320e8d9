"""Width partitions, slicing and merging: exactness and the errors users get."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch_geometric.nn.models import GCN, GraphSAGE

from gist import draw_partition, merge_states, slice_state, subnet_layout
from gist.nn import (
    GISTBatchNorm,
    GISTGCNConv,
    GISTLinear,
    GISTSAGEConv,
    SplitError,
    build_model,
    build_split_spec,
    register_slicing_rule,
    set_groups,
)
from gist.subnets import build_subnet, load_subnet_state

NORMS = [None, "batch_norm", "layer_norm"]


def stock_models():
    for cls in (GCN, GraphSAGE):
        for norm in NORMS:
            for out in (5, None):
                yield pytest.param(cls, norm, out, id=f"{cls.__name__}-{norm}-out{out}")


def random_graph(n: int = 40, f: int = 12, e: int = 160, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g)
    ei = torch.randint(0, n, (2, e), generator=g)
    return x, torch.cat([ei, ei.flip(0)], 1)


def _perturb_buffers(model: nn.Module) -> None:
    for buf in model.buffers():
        if buf.is_floating_point():
            buf.add_(torch.rand_like(buf))
        else:
            buf.add_(3)


def test_partition_is_pure_function_of_seed_and_round():
    widths = {"hidden1": 12, "hidden2": 8}
    a = draw_partition(widths, 4, seed=3, round=7)
    b = draw_partition(widths, 4, seed=3, round=7)
    c = draw_partition(widths, 4, seed=3, round=8)
    state = torch.get_rng_state()
    draw_partition(widths, 4, seed=0, round=0)
    assert torch.equal(state, torch.get_rng_state()), "partitions must not touch the global RNG"
    for w in widths:
        assert all(torch.equal(x, y) for x, y in zip(a.groups[w], b.groups[w]))
        groups = a.groups[w]
        assert len(groups) == 4 and all(len(g) == widths[w] // 4 for g in groups)
        assert torch.equal(torch.cat(groups).sort().values, torch.arange(widths[w]))
        assert all(torch.equal(g, g.sort().values) for g in groups)
    assert any(not torch.equal(x, y) for x, y in zip(a.groups["hidden1"], c.groups["hidden1"]))
    ident = draw_partition(widths, 1, seed=3, round=7)
    assert torch.equal(ident.groups["hidden1"][0], torch.arange(12))


@pytest.mark.parametrize("cls,norm,out", stock_models())
@pytest.mark.parametrize("m", [1, 2, 4])
def test_slice_then_merge_is_bit_exact(cls, norm, out, m):
    torch.manual_seed(0)
    model = cls(12, 8, 3, out_channels=out, norm=norm, dropout=0.3)
    _perturb_buffers(model)
    before = copy.deepcopy(model.state_dict())
    spec = build_split_spec(model)
    assert set(spec.widths) == {"hidden1", "hidden2"}
    part = draw_partition(spec.widths, m, seed=1, round=2)
    layout = subnet_layout(model, spec, m)
    subs = [layout.unflatten(layout.flatten(slice_state(model.state_dict(), spec, part, i))) for i in range(m)]
    merge_states(model.state_dict(), spec, part, subs)
    after = model.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype
        assert torch.equal(after[k], v), k


@pytest.mark.parametrize("act", ["elu", "tanh", "leaky_relu"])
def test_any_parameter_free_activation_splits(act):
    torch.manual_seed(0)
    model = GraphSAGE(12, 8, 3, out_channels=5, act=act, act_first=True, norm="batch_norm")
    spec = build_split_spec(model)
    subnet = build_subnet(model, spec, 2)
    x, ei = random_graph()
    assert subnet(x, ei).shape == (40, 5)


def test_input_and_class_widths_never_split():
    model = GCN(12, 8, 3, out_channels=5)
    spec = build_split_spec(model)
    assert spec.tensor_axes["convs.0.lin.weight"] == ("hidden1", None)
    assert spec.tensor_axes["convs.1.lin.weight"] == ("hidden2", "hidden1")
    assert spec.tensor_axes["convs.2.lin.weight"] == (None, "hidden2")
    assert spec.shared == ["convs.2.bias"]
    sage = build_split_spec(GraphSAGE(12, 8, 2, out_channels=5, norm="batch_norm"))
    assert sage.tensor_axes["convs.0.lin_l.weight"] == sage.tensor_axes["convs.0.lin_r.weight"] == ("hidden1", None)
    assert sage.tensor_axes["norms.0.module.running_var"] == ("hidden1",)
    assert "convs.1.lin_l.bias" in sage.shared


def _restricted_forward(model, spec, part, i, x, ei):
    """The full model with every hidden unit outside group ``i`` zeroed."""
    handles = []
    for k, conv in enumerate(model.convs[:-1]):
        mask = torch.zeros(spec.widths[f"hidden{k + 1}"])
        mask[part.groups[f"hidden{k + 1}"][i]] = 1.0
        handles.append(conv.register_forward_hook(lambda mod, inp, out, mask=mask: out * mask))
    try:
        return model(x, ei)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("cls", [GCN, GraphSAGE])
@pytest.mark.parametrize("m", [2, 4])
def test_subnet_forward_equals_restricted_full_model(cls, m):
    torch.manual_seed(0)
    model = cls(12, 16, 3, out_channels=5, dropout=0.5).eval()
    spec = build_split_spec(model)
    part = draw_partition(spec.widths, m, seed=0, round=5)
    x, ei = random_graph()
    for i in range(m):
        subnet = build_subnet(model, spec, m).eval()
        assert subnet.hidden_channels == 16 // m
        assert subnet.convs[0].out_channels == 16 // m
        load_subnet_state(subnet, slice_state(model.state_dict(), spec, part, i))
        expected = _restricted_forward(model, spec, part, i, x, ei)
        torch.testing.assert_close(subnet(x, ei), expected, rtol=1e-5, atol=1e-5)


class CustomNet(nn.Module):
    """A user model built from GIST layers and an annotated stock norm."""

    def __init__(self, in_channels=12, hidden=8, out_channels=5):
        super().__init__()
        from torch_geometric.nn import LayerNorm

        self.conv1 = GISTGCNConv(in_channels, hidden, out_group="h1")
        self.norm1 = GISTBatchNorm(hidden, group="h1")
        self.conv2 = GISTSAGEConv(hidden, hidden, in_group="h1", out_group="h2")
        self.norm2 = set_groups(LayerNorm(hidden, mode="node"), "h2", "h2")
        self.head = GISTLinear(hidden, out_channels, in_group="h2")

    def forward(self, x, edge_index):
        x = self.norm1(self.conv1(x, edge_index)).relu()
        x = self.norm2(self.conv2(x, edge_index)).relu()
        return self.head(x)


def test_gist_layers_in_a_user_model():
    torch.manual_seed(0)
    model = CustomNet()
    _perturb_buffers(model)
    spec = build_split_spec(model)
    assert spec.widths == {"h1": 8, "h2": 8}
    assert spec.tensor_axes["conv2.lin_r.weight"] == ("h2", "h1")
    assert spec.tensor_axes["head.weight"] == (None, "h2")
    assert spec.shared == ["norm1.module.num_batches_tracked", "head.bias"]
    before = copy.deepcopy(model.state_dict())
    part = draw_partition(spec.widths, 2, 0, 0)
    subs = [slice_state(model.state_dict(), spec, part, i) for i in range(2)]
    subnet = build_subnet(model, spec, 2)
    load_subnet_state(subnet, subs[1])
    x, ei = random_graph()
    assert subnet(x, ei).shape == (40, 5)
    assert subnet.norm2.in_channels == 4
    merge_states(model.state_dict(), spec, part, subs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_stock_gcn_inside_a_user_model_with_a_head():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.gnn = set_groups(GCN(12, 8, 2), out_group="emb")  # out_channels=None: emits hidden width
            self.head = set_groups(nn.Linear(8, 3), in_group="emb")

        def forward(self, x, ei):
            return self.head(self.gnn(x, ei).relu())

    spec = build_split_spec(Net())
    assert spec.widths == {"gnn.hidden1": 8, "emb": 8}
    assert spec.tensor_axes["gnn.convs.1.lin.weight"] == ("emb", "gnn.hidden1")
    assert spec.shared == ["head.bias"]


def test_custom_layer_rule_registration():
    class Scale(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.channels = channels
            self.weight = nn.Parameter(torch.randn(channels))

        def forward(self, x):
            return x * self.weight

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = GISTGCNConv(6, 8, out_group="h")
            self.scale = set_groups(Scale(8), "h", "h")
            self.conv2 = GISTGCNConv(8, 3, in_group="h")

        def forward(self, x, ei):
            return self.conv2(self.scale(self.conv1(x, ei)), ei)

    with pytest.raises(SplitError, match="register_slicing_rule"):
        build_split_spec(Net())

    def axes(module, in_group, out_group):
        return {"weight": (out_group,)}

    def resize(module, in_size, out_size):
        module.channels = out_size

    register_slicing_rule(Scale, axes, resize)
    model = Net()
    spec = build_split_spec(model)
    assert spec.tensor_axes["scale.weight"] == ("h",)
    subnet = build_subnet(model, spec, 4)
    assert subnet.scale.channels == 2 and subnet.scale.weight.shape == (2,)


@pytest.mark.parametrize(
    "hidden,m,match", [(10, 4, "not divisible"), (8, 16, "larger than the width"), (8, 0, "positive integer")]
)
def test_bad_widths_give_clear_errors(hidden, m, match):
    spec = build_split_spec(GCN(12, hidden, 3, out_channels=5))
    with pytest.raises(SplitError, match=match):
        spec.check_subnets(m)


def test_unknown_and_unplaced_layers_give_clear_errors():
    class WithPReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.gnn = GCN(12, 8, 3, out_channels=5, act=nn.PReLU())

    with pytest.raises(SplitError, match="does not know layer 'gnn.act'"):
        build_split_spec(WithPReLU())

    class Unplaced(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1 = nn.Linear(4, 8)
            self.lin2 = nn.Linear(8, 2)

    with pytest.raises(SplitError, match="set_groups"):
        build_split_spec(Unplaced())

    with pytest.raises(SplitError, match="jumping knowledge"):
        build_split_spec(GCN(12, 8, 3, out_channels=5, jk="cat"))

    with pytest.raises(SplitError, match="no hidden width"):
        build_split_spec(GCN(12, 8, 1, out_channels=5))

    class Mismatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = GISTLinear(4, 8, out_group="h")
            self.b = GISTLinear(6, 2, in_group="h")

    with pytest.raises(SplitError, match="'h' is 8 units"):
        build_split_spec(Mismatch())


def test_build_model_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gat", 4, 8, 2, 3)
    with pytest.raises(ValueError, match="unknown norm"):
        build_model("gcn", 4, 8, 2, 3, norm="group_norm")
    with pytest.raises(ValueError, match="at least 2 layers"):
        build_model("gcn", 4, 8, 2, 1)


def test_subnet_built_from_meta_model_allocates_only_narrow_tensors():
    with torch.device("meta"):
        model = GCN(12, 64, 3, out_channels=5, norm="batch_norm")
    spec = build_split_spec(model)
    subnet = build_subnet(model, spec, 4)
    shapes = {k: tuple(v.shape) for k, v in subnet.state_dict().items()}
    assert shapes["convs.1.lin.weight"] == (16, 16)
    assert all(v.device.type == "cpu" for v in subnet.state_dict().values())


@pytest.mark.parametrize("wire", [torch.bfloat16, torch.float16])
def test_wire_encoding_rounds_floats_and_keeps_integers_exact(wire):
    from gist.comm import WorkerStats
    from gist.subnets import FlatLayout

    layout = FlatLayout(
        ("w", "num_batches_tracked", "b"),
        (torch.Size([2, 3]), torch.Size([]), torch.Size([3])),
        (torch.float32, torch.int64, torch.float32),
    )
    torch.manual_seed(0)
    flat = torch.randn(10)
    flat[6] = 123_457.0  # beyond 16-bit floats' exact integers
    sent = layout.encode(flat, wire)
    assert sent.dtype == wire and sent.numel() == layout.wire_numel(wire) == 9 + 8 // 2
    back = layout.decode(sent)
    floats = torch.ones(10, dtype=torch.bool)
    floats[6] = False
    assert torch.equal(back[floats], flat[floats].to(wire).to(torch.float32))  # rounded to nearest
    assert back[6] == 123_457.0
    assert layout.encode(flat, torch.float32) is flat and layout.decode(flat) is flat
    stats = WorkerStats(loss=1.2345678, steps=300, seconds=12.345678)
    wire_stats = stats.to_tensor(wire)
    assert wire_stats.dtype == wire and wire_stats.numel() == WorkerStats.slots(wire) == 6
    assert WorkerStats.from_tensor(wire_stats) == WorkerStats(
        torch.tensor(1.2345678).item(), 300, torch.tensor(12.345678).item()
    )
    assert WorkerStats.nbytes(wire) == 12


def test_a_rule_registered_before_the_first_split_adds_to_the_built_in_ones():
    """In a fresh process, registering a layer type first must not hide the built-in rules."""
    import subprocess
    import sys

    probe = (
        "import torch\n"
        "from torch_geometric.nn.models import GCN\n"
        "from gist.nn import build_split_spec, register_slicing_rule\n"
        "class Scale(torch.nn.Module):\n"
        "    def __init__(self, d):\n"
        "        super().__init__(); self.weight = torch.nn.Parameter(torch.ones(d))\n"
        "register_slicing_rule(Scale, lambda m, i, o: {'weight': (o,)})\n"
        "print(len(build_split_spec(GCN(8, 16, num_layers=2, out_channels=3)).widths))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.strip() == "1"
