"""Gates that sent torch-pruning's grouping into endless loops (issue 36): a conv over the channel
axis (ECA), a one-channel operand broadcast over the channels (FocalNet's gates, spatial attention
maps), a group walk that keeps growing; and parameters torch-pruning leaves whole (NF-Nets'
ScaledStdConv2d gain). Each hand-built network decides in seconds and prunes as predicted."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from compressor.errors import UserError
from compressor.pruning import PruningConfig, apply_policy, build_skeleton, gates, measure_layer_shapes
from compressor.pruning.gates import ChannelGraph
from compressor.pruning.segments import ROOT_TYPES
from compressor.pruning.skeleton import trace


def cbr(i, o, k=3, s=1, g=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class Eca(nn.Module):
    """timm's EcaModule, written out: a 1-D conv slides along the channels."""

    def __init__(self, mlp: bool = False):
        super().__init__()
        self.conv = nn.Conv1d(1, 4 if mlp else 1, 3 if not mlp else 1, padding=0 if mlp else 1)
        self.conv2 = nn.Conv1d(4, 1, 3, padding=1) if mlp else None

    def forward(self, x):
        y = self.conv(x.mean((2, 3)).view(x.shape[0], 1, -1))
        if self.conv2 is not None:
            y = self.conv2(torch.relu(y))
        return x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1).expand_as(x)


class EcaNet(nn.Module):
    """Two residual blocks gated by ECA: torch-pruning's grouping ran past 90 s on such nets."""

    def __init__(self, mlp: bool = False, width: int = 64):
        super().__init__()
        self.stem = cbr(3, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(cbr(width, width // 2, k=1), cbr(width // 2, width), Eca(mlp)) for _ in range(2))
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean((2, 3)))


class SpatialGate(nn.Module):
    """A one-channel map broadcast over the features (FocalNet's `ctx * gates[:, l:l + 1]`)."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32)
        self.f = nn.Conv2d(32, 32 + 2, 1)
        self.body = cbr(32, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        ctx, gates_ = torch.split(self.f(x), [32, 2], 1)
        x = self.body(ctx * gates_[:, 0:1] + ctx * gates_[:, 1:2])
        return self.head(x.mean((2, 3)))


class StdConv(nn.Conv2d):
    """NF-Nets' ScaledStdConv2d: a per-out-channel `gain` torch-pruning does not prune."""

    def __init__(self, i, o, k=3):
        super().__init__(i, o, k, padding=k // 2)
        self.gain = nn.Parameter(torch.ones(o, 1, 1, 1))

    def forward(self, x):
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              weight=self.gain.view(-1), training=True, momentum=0.0
                              ).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding)


class StdNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = StdConv(3, 32), StdConv(32, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


def prunes_as_predicted(model, x, skeleton):
    policy = skeleton.policy_from_vector([0.5] * len(skeleton.units))
    pruned = apply_policy(model, policy, x, PruningConfig())
    assert skeleton.layer_shapes(policy) == measure_layer_shapes(pruned, x)
    return pruned


@pytest.mark.parametrize("mlp", [False, True])
def test_eca_gate_passes_channels_through_and_prunes_as_predicted(mlp):
    model, x = EcaNet(mlp).eval(), torch.randn(2, 3, 16, 16)
    start = time.monotonic()
    traced = trace(model, x, PruningConfig())
    skeleton = build_skeleton(model, x, PruningConfig())
    assert time.monotonic() - start < 10
    assert traced.graph.gates == 2 and not skeleton.excluded
    # the residual stream through both gates is one unit, each block's inner conv another
    assert sorted(u.kind for u in skeleton.units) == ["conv", "conv", "residual"]
    pruned = prunes_as_predicted(model, x, skeleton)
    gate = pruned.blocks[0][2]
    assert gate.conv.weight.shape == model.blocks[0][2].conv.weight.shape  # never pruned
    assert pruned(x).shape == (2, 10)


def test_channel_axis_gates_are_found_only_where_the_channels_become_a_length():
    model, x = EcaNet().eval(), torch.randn(1, 3, 16, 16)
    with torch.enable_grad():
        graph = ChannelGraph().build_dependency(model, example_inputs=x)
    assert graph.gates == 2
    assert {type(m) for m in graph.agnostic} == {nn.Conv1d}
    with torch.enable_grad():  # a plain squeeze-excite gate has no such reshape
        plain = ChannelGraph().build_dependency(cbr(3, 8).eval(), example_inputs=x)
    assert plain.gates == 0 and not plain.agnostic


def test_one_channel_operand_broadcast_over_the_channels_is_cut():
    model, x = SpatialGate().eval(), torch.randn(2, 3, 16, 16)
    start = time.monotonic()
    skeleton = build_skeleton(model, x, PruningConfig())
    assert time.monotonic() - start < 10
    assert trace(model, x, PruningConfig()).graph.broadcasts == 2
    prunes_as_predicted(model, x, skeleton)


def test_group_walk_reaches_what_torch_pruning_reaches():
    """Only new channels are pushed on; the merged groups hold the same channels per layer."""
    model, x = EcaNet().eval(), torch.randn(1, 3, 16, 16)
    model.blocks.append(nn.Identity())
    with torch.enable_grad():
        graph = ChannelGraph().build_dependency(model, example_inputs=x)
        for group in graph.get_all_groups(root_module_types=list(ROOT_TYPES)):
            root = group[0].dep
            ref = tp.DependencyGraph.get_pruning_group(graph, root.target.module, root.handler,
                                                       list(range(len(group[0].idxs))))

            def channels(g):
                return {(id(d.target), d.handler): sorted(i) for d, i in g}

            assert channels(group) == channels(ref)


def test_a_group_walk_that_keeps_growing_is_refused_within_seconds(monkeypatch):
    monkeypatch.setattr(gates, "GROUP_ENTRIES", 100)  # a flatten into the head maps 8 x 256
    model, x = nn.Sequential(cbr(3, 8), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)).eval(), \
        torch.randn(1, 3, 16, 16)
    start = time.monotonic()
    with pytest.raises(UserError, match="does not converge"):
        trace(model, x, PruningConfig())
    assert time.monotonic() - start < 10


def test_per_out_channel_parameters_follow_the_prune():
    model, x = StdNet().eval(), torch.randn(2, 3, 16, 16)
    skeleton = build_skeleton(model, x, PruningConfig())
    assert not skeleton.excluded
    pruned = prunes_as_predicted(model, x, skeleton)
    assert pruned.a.gain.shape[0] == pruned.a.out_channels < 32


timm = pytest.importorskip  # timm is a bench extra: its own modules, where installed


def test_timm_eca_and_circular_eca_modules():
    layers = timm("timm.layers")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cbr(3, 64)
            self.eca, self.ceca = layers.EcaModule(64), layers.CecaModule(64)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.ceca(self.eca(self.stem(x))).mean((2, 3)))

    model, x = Net().eval(), torch.randn(2, 3, 16, 16)
    skeleton = build_skeleton(model, x, PruningConfig())
    assert trace(model, x, PruningConfig()).graph.gates == 2 and not skeleton.excluded
    prunes_as_predicted(model, x, skeleton)


def test_timm_scaled_std_conv_and_focal_modulation():
    layers, focalnet = timm("timm.layers"), timm("timm.models.focalnet")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = layers.ScaledStdConv2d(3, 32, 3, padding=1)
            self.mod = focalnet.FocalModulation(32, focal_window=3, focal_level=2)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            return self.head(self.mod(self.stem(x)).mean((2, 3)))

    model, x = Net().eval(), torch.randn(2, 3, 16, 16)
    skeleton = build_skeleton(model, x, PruningConfig())
    assert not skeleton.excluded
    pruned = prunes_as_predicted(model, x, skeleton)
    assert pruned.stem.gain.shape[0] == pruned.stem.out_channels
