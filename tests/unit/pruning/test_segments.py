"""Concatenations pruned by segment: each input of a concatenation keeps the unit's ratio of its
own channels (rounded to the block), so the skeleton predicts every pruned shape, the kept
channels line up across the concat, and the pruned network exports and runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.io.export import export_onnx
from compressor.pruning import PruningConfig, apply_policy, build_skeleton, measure_layer_shapes
from compressor.pruning.skeleton import trace_skeleton

CONFIG = PruningConfig(round_to=8)


def cbr(i, o, k=3, s=1, g=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o),
                         nn.ReLU())


class IssueNet(nn.Module):
    """Issue 36's own network: 1-channel 36x52 input, 7 classes, a grouped conv, two branches
    of different widths concatenated into a depthwise conv and a squeeze-excite gate, a
    depthwise-separable block and a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(1, 32, s=2)
        self.grouped = cbr(32, 32, g=4)
        self.a, self.b = cbr(32, 32), cbr(32, 16, k=1)
        self.dw = cbr(48, 48, g=48)
        self.fc1, self.fc2 = nn.Conv2d(48, 16, 1), nn.Conv2d(16, 48, 1)
        self.pw = cbr(48, 64, k=1)
        self.sep = nn.Sequential(cbr(64, 64, g=64), cbr(64, 64, k=1))
        self.head = nn.Linear(64, 7)

    def forward(self, x):
        x = self.grouped(self.stem(x))
        x = self.dw(torch.cat([self.a(x), self.b(x)], 1))
        x = x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        x = self.pw(x)
        x = x + self.sep(x)
        return self.head(x.mean((2, 3)))


class GhostModule(nn.Module):
    """GhostNet's module: a conv's output concatenated with a cheap depthwise conv of it."""

    def __init__(self, i, o):
        super().__init__()
        self.primary = cbr(i, o // 2, k=1)
        self.cheap = cbr(o // 2, o // 2, g=o // 2)

    def forward(self, x):
        p = self.primary(x)
        return torch.cat([p, self.cheap(p)], 1)


class GhostBottleneck(nn.Module):
    """GhostNet's bottleneck: a ghost module expands, a second projects back, a residual adds
    the input, whose channel j then meets the projection's conv channel j and channel j + 16 its
    cheap copy of it."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32)
        self.ghost1, self.ghost2 = GhostModule(32, 64), GhostModule(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        return self.head((x + self.ghost2(self.ghost1(x))).mean((2, 3)))


class GhostDepthwise(nn.Module):
    """A ghost module into a depthwise conv (GhostNet's strided block): the depthwise conv's
    channels j and j + 32 both come from the ghost's conv channel j, so they go together."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32)
        self.ghost = GhostModule(32, 64)
        self.dw = cbr(64, 64, s=2, g=64)
        self.pw = cbr(64, 32, k=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.pw(self.dw(self.ghost(self.stem(x)))).mean((2, 3)))


class CrossStage(nn.Module):
    """A CSP stage: the expanded channels split in two halves (`chunk`), a residual block on one,
    the other concatenated back unchanged."""

    def __init__(self):
        super().__init__()
        self.expand = cbr(3, 64)
        self.block = nn.Sequential(cbr(32, 32), cbr(32, 32))
        self.transition = cbr(64, 64, k=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        shortcut, x = self.expand(x).chunk(2, 1)
        x = x + self.block(x)  # the split's second output feeds a conv and a residual add
        x = self.transition(torch.cat([shortcut, x], 1))
        return self.head(x.mean((2, 3)))


class ShuffleBlock(nn.Module):
    """A grouped conv whose 4 groups of 16 channels are shuffled (ShuffleNet's channel shuffle)
    into a 1x1 conv: channel g * 16 + i becomes channel i * 4 + g."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 64)
        self.grouped = cbr(64, 64, k=1, g=4)
        self.pw = cbr(64, 64, k=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = self.grouped(self.stem(x))
        n, c, h, w = x.shape
        x = x.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.pw(x).mean((2, 3)))


class AddedIntoPart(nn.Module):
    """A residual added into part of a layer's channels (rexnet's pattern): its unit's mapping
    cannot be predicted."""

    def __init__(self):
        super().__init__()
        self.stem, self.expand, self.mid = cbr(3, 32), cbr(32, 48), cbr(48, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.expand(x)
        y = torch.cat([y[:, :32] + x, y[:, 32:]], 1)
        return self.head(self.mid(y).mean((2, 3)))


def pruned_as_predicted(model: nn.Module, x: torch.Tensor, ratio: float = 0.5):
    skeleton = build_skeleton(model, x, CONFIG)
    policy = {name: ratio for name in skeleton.names}
    pruned = apply_policy(model, policy, x, CONFIG)
    assert skeleton.layer_shapes(policy) == measure_layer_shapes(pruned, x)
    return skeleton, policy, pruned


def tag_channels(norm: nn.BatchNorm2d, first: int) -> None:
    """Number the norm's channels in its running mean, to read which survive a prune."""
    norm.running_mean.copy_(torch.arange(first, first + norm.num_features, dtype=torch.float))


def tags(norm: nn.BatchNorm2d) -> list[int]:
    return [int(v) for v in norm.running_mean]


def test_the_issues_network_prunes_every_unit_by_segment_as_predicted_and_exports(tmp_path):
    torch.manual_seed(0)
    model, x = IssueNet().eval(), torch.randn(4, 1, 36, 52)
    skeleton, policy, pruned = pruned_as_predicted(model, x)
    assert skeleton.excluded == ()
    # One unit couples the branches, the depthwise conv and the gate (named by its root, fc2).
    assert skeleton.setting("a.0", "out") == skeleton.setting("dw.0", "out") == ["fc2"]
    shapes = {s.name: s for s in measure_layer_shapes(pruned, x)}
    # 32 + 16 concatenated channels, half of each kept: 16 + 8 (not 24 taken from either side).
    assert (shapes["a.0"].out_channels, shapes["b.0"].out_channels) == (16, 8)
    assert shapes["dw.0"].out_channels == shapes["dw.0"].groups == 24
    assert shapes["fc2"].out_channels == skeleton.kept_channels(policy)["fc2"] == 24
    assert skeleton.macs(policy) < skeleton.macs({})
    report = export_onnx(pruned, x, tmp_path / "pruned.onnx")
    assert report.max_abs_diff < 1e-3 and pruned(x).shape == (4, 7)


def test_the_kept_channels_of_each_segment_line_up_with_the_concat_they_feed():
    torch.manual_seed(0)
    model, x = IssueNet().eval(), torch.randn(4, 1, 36, 52)
    tag_channels(model.a[1], 0)
    tag_channels(model.b[1], 32)
    tag_channels(model.dw[1], 0)
    _, _, pruned = pruned_as_predicted(model, x)
    # The depthwise conv keeps exactly the channels the branches keep, in the concat's order.
    assert tags(pruned.dw[1]) == tags(pruned.a[1]) + tags(pruned.b[1])
    assert len(tags(pruned.a[1])) == 16 and all(t >= 32 for t in tags(pruned.b[1]))


def test_ghost_modules_prune_by_segment_as_predicted_and_export(tmp_path):
    torch.manual_seed(0)
    model, x = GhostBottleneck().eval(), torch.randn(2, 3, 16, 16)
    tag_channels(model.stem[1], 0)
    tag_channels(model.ghost2.primary[1], 0)
    skeleton, policy, pruned = pruned_as_predicted(model, x)
    assert skeleton.excluded == ()
    assert list(skeleton.names) == ["ghost2.cheap.0", "ghost1.cheap.0"]
    shapes = {s.name: s for s in measure_layer_shapes(pruned, x)}
    assert shapes["ghost1.primary.0"].out_channels == shapes["ghost1.cheap.0"].out_channels == 16
    assert shapes["ghost2.primary.0"].in_channels == 32  # both halves of the concat, 16 each
    # The residual keeps, for each kept conv channel j, the input's channels j and j + 16.
    kept = tags(pruned.ghost2.primary[1])
    assert len(kept) == 8 and tags(pruned.stem[1]) == kept + [j + 16 for j in kept]
    assert export_onnx(pruned, x, tmp_path / "ghost.onnx").max_abs_diff < 1e-3


def test_a_ghost_module_into_a_depthwise_conv_prunes_its_tied_channels_together(tmp_path):
    torch.manual_seed(0)
    model, x = GhostDepthwise().eval(), torch.randn(2, 3, 16, 16)
    tag_channels(model.ghost.primary[1], 0)
    tag_channels(model.dw[1], 0)
    skeleton, policy, pruned = pruned_as_predicted(model, x)
    assert skeleton.excluded == () and "dw.0" in skeleton.names
    kept = tags(pruned.ghost.primary[1])
    assert len(kept) == 16 and tags(pruned.dw[1]) == kept + [j + 32 for j in kept]
    assert skeleton.kept_channels(policy)["dw.0"] == 32
    assert export_onnx(pruned, x, tmp_path / "ghost_dw.onnx").max_abs_diff < 1e-3


def test_a_cross_stage_split_prunes_each_half_alike_as_predicted_and_exports(tmp_path):
    torch.manual_seed(0)
    model, x = CrossStage().eval(), torch.randn(2, 3, 16, 16)
    tag_channels(model.expand[1], 0)
    skeleton, policy, pruned = pruned_as_predicted(model, x)
    assert skeleton.excluded == ()
    shapes = {s.name: s for s in measure_layer_shapes(pruned, x)}
    # Half of each half: the chunk still splits where the block's input begins.
    kept = tags(pruned.expand[1])
    assert [t < 32 for t in kept] == [True] * 16 + [False] * 16
    assert shapes["block.0.0"].in_channels == 16 and shapes["transition.0"].in_channels == 32
    assert export_onnx(pruned, x, tmp_path / "csp.onnx").max_abs_diff < 1e-3


def test_a_timm_mixed_conv_gets_its_split_sizes_from_its_pruned_convs(tmp_path):
    timm_layers = pytest.importorskip("timm.layers")

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = cbr(3, 64)
            self.mixed = timm_layers.MixedConv2d(64, 64, kernel_size=[3, 5], depthwise=True)
            self.pw = cbr(64, 32, k=1)
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            return self.head(self.pw(self.mixed(self.stem(x))).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Mixed().eval(), torch.randn(2, 3, 16, 16)
    skeleton, policy, pruned = pruned_as_predicted(model, x)
    assert skeleton.excluded == ()
    assert pruned.mixed.splits == [16, 16] and model.mixed.splits == [32, 32]  # input untouched
    assert export_onnx(pruned, x, tmp_path / "mixed.onnx").max_abs_diff < 1e-3


def test_a_channel_shuffle_prunes_alike_in_every_group_and_its_consumer_where_they_went(tmp_path):
    torch.manual_seed(0)
    model, x = ShuffleBlock().eval(), torch.randn(2, 3, 16, 16)
    tag_channels(model.grouped[1], 0)
    with torch.no_grad():  # the consumer's input column q is tagged q
        model.pw[0].weight.copy_(torch.arange(64.0).view(1, 64, 1, 1).expand(64, 64, 1, 1))
    skeleton, policy, pruned = pruned_as_predicted(model, x)
    assert skeleton.excluded == () and "grouped.0" in skeleton.names
    kept = tags(pruned.grouped[1])  # channel g * 16 + i of the grouped conv
    positions = [[c % 16 for c in kept if c // 16 == g] for g in range(4)]
    assert len(kept) == 32 and all(p == positions[0] for p in positions)  # alike in every group
    # After the shuffle, pruned input q = i' * 4 + g is dense input positions[i'] * 4 + g.
    expected = [positions[0][q // 4] * 4 + q % 4 for q in range(32)]
    assert [int(v) for v in pruned.pw[0].weight[0, :, 0, 0]] == expected
    assert export_onnx(pruned, x, tmp_path / "shuffle.onnx").max_abs_diff < 1e-3


def test_two_units_through_one_split_prune_one_after_the_other_as_predicted():
    """Each unit is pruned in turn: the second maps onto the split as the first left it."""
    timm_layers = pytest.importorskip("timm.layers")

    class TwoIntoMixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbr(3, 32), cbr(3, 32)
            self.norm = nn.BatchNorm2d(64)
            self.mixed = timm_layers.MixedConv2d(64, 64, kernel_size=[3, 5])  # splits [32, 32]
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            x = self.norm(torch.cat([self.a(x), self.b(x)], 1))
            return self.head(self.mixed(x).mean((2, 3)))

    torch.manual_seed(0)
    model, x = TwoIntoMixed().eval(), torch.randn(2, 3, 16, 16)
    skeleton = build_skeleton(model, x, CONFIG)
    (unit_a,), (unit_b,) = skeleton.setting("a.0", "out"), skeleton.setting("b.0", "out")
    assert unit_a != unit_b and skeleton.excluded == ()
    policy = {unit_a: 0.25, unit_b: 0.5}
    pruned = apply_policy(model, policy, x, CONFIG)
    assert skeleton.layer_shapes(policy) == measure_layer_shapes(pruned, x)
    assert pruned.mixed.splits == [24, 16] and pruned(x).shape == (2, 10)


def test_a_mapping_that_cannot_be_predicted_is_kept_dense_with_a_reason_not_an_error():
    torch.manual_seed(0)
    model, x = AddedIntoPart().eval(), torch.randn(2, 3, 16, 16)
    traced = trace_skeleton(model, x, CONFIG)
    assert [e.name for e in traced.excluded] == ["expand.0"]
    assert traced.excluded[0].reason.startswith("torch-pruning maps its 64 channels beyond")
    skeleton, _, pruned = pruned_as_predicted(model, x)
    assert "expand.0" in skeleton.kept_dense() and "mid.0" in skeleton.names
    assert pruned(x).shape == (2, 10)
