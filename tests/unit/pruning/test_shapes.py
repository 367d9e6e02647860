"""Layer shapes per axis: a 1-channel, non-square network predicted and measured alike."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from compressor.pruning import PruningConfig, apply_policy, build_skeleton, uniform_policy
from compressor.pruning.shapes import LayerShape, measure_layer_shapes, total_macs, total_params

ODD_INPUT = (1, 28, 40)  # one channel, taller than wide is the usual case: this is wider
ODD_CLASSES = 7


class OddCNN(nn.Module):
    """1x28x40 in, 7 classes out: a non-square kernel, a stride of (2, 1), a residual add, a
    depthwise conv with stride 2 and a Linear head. Shared with the latency tests."""

    def __init__(self, classes: int = ODD_CLASSES):
        super().__init__()

        def bn_conv(cin: int, cout: int, kernel, stride=1, padding=1, groups=1) -> list:
            return [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
                    nn.BatchNorm2d(cout)]

        self.stem = nn.Sequential(*bn_conv(1, 16, (3, 5), padding=(1, 2)), nn.ReLU())
        self.down = nn.Sequential(*bn_conv(16, 32, 3, stride=(2, 1)), nn.ReLU())
        self.block = nn.Sequential(*bn_conv(32, 32, 3), nn.ReLU(), *bn_conv(32, 32, 3))
        self.dw = nn.Sequential(*bn_conv(32, 32, 3, stride=2, groups=32), nn.ReLU(),
                                *bn_conv(32, 48, 1, padding=0), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.stem(x))
        x = torch.relu(x + self.block(x))
        return self.head(self.dw(x))


def odd_cnn(seed: int = 0) -> OddCNN:
    torch.manual_seed(seed)
    model = OddCNN().eval()
    with torch.no_grad():  # BatchNorm scales that differ, so that importance has something to rank
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)
    return model


def odd_input(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *ODD_INPUT, generator=torch.Generator().manual_seed(0))


def test_shapes_are_read_per_axis():
    shapes = {s.name: s for s in measure_layer_shapes(odd_cnn(), odd_input())}
    stem, down, dw, head = shapes["stem.0"], shapes["down.0"], shapes["dw.0"], shapes["head.2"]
    assert (stem.kernel_h, stem.kernel_w, stem.in_h, stem.in_w, stem.out_h, stem.out_w) == \
        (3, 5, 28, 40, 28, 40)
    assert (down.stride_h, down.stride_w, down.out_h, down.out_w) == (2, 1, 14, 40)
    assert dw.depthwise and (dw.in_h, dw.in_w, dw.out_h, dw.out_w) == (14, 40, 7, 20)
    assert stem.macs == 3 * 5 * 1 * 16 * 28 * 40 and dw.macs == 3 * 3 * 1 * 32 * 7 * 20
    assert head.kind == "linear" and head.out_channels == ODD_CLASSES and head.macs == 48 * 7


def test_params_count_every_conv_and_linear_weight():
    model = odd_cnn()
    expected = sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                   for p in m.parameters())
    assert total_params(measure_layer_shapes(model, odd_input())) == expected


def test_square_three_channel_costs_keep_their_numbers():
    torch.manual_seed(0)
    model = torchvision.models.get_model("resnet18", num_classes=10).eval()
    shapes = measure_layer_shapes(model, torch.zeros(1, 3, 32, 32))
    assert total_macs(shapes) == 37_016_576 and total_params(shapes) == 11_172_042
    assert all(s.in_h == s.in_w and s.out_h == s.out_w for s in shapes)


def test_a_shape_survives_a_json_round_trip():
    shapes = measure_layer_shapes(odd_cnn(), odd_input())
    again = [LayerShape(*s) for s in json.loads(json.dumps([list(s) for s in shapes]))]
    assert again == shapes


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.7])
def test_a_non_square_one_channel_network_prunes_as_predicted(ratio):
    model, x = odd_cnn(), odd_input()
    config = PruningConfig(round_to=8, importance="bn")
    skeleton = build_skeleton(model, x, config)
    assert [u.name for u in skeleton.units if u.kind == "residual"] and len(skeleton.units) >= 3
    assert next(u for u in skeleton.units if u.name == "stem.0").kernel == 5  # the larger side
    policy = uniform_policy(skeleton, ratio)
    pruned = apply_policy(model, policy, x, config)
    predicted = skeleton.layer_shapes(policy)
    assert measure_layer_shapes(pruned, x) == predicted
    assert predicted != skeleton.dense_shapes
    assert skeleton.macs(policy) == total_macs(predicted) < total_macs(skeleton.dense_shapes)
    assert skeleton.params(policy) == total_params(predicted)
    assert pruned(x).shape == (2, ODD_CLASSES)


def test_a_linear_layer_on_tokens_counts_them_and_a_classifier_counts_one():
    """A Linear on [batch, tokens, dim] maps every token: `in_h = out_h = tokens`, width 1, and
    its MACs count each token; a classifier on pooled features keeps 1 (CNN costs unchanged)."""
    model = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8), nn.Flatten(),
                          nn.Linear(5 * 8, 3))
    shapes = measure_layer_shapes(model, torch.zeros(2, 5, 8))
    assert [(s.in_h, s.in_w, s.out_h, s.out_w) for s in shapes] == \
        [(5, 1, 5, 1), (5, 1, 5, 1), (1, 1, 1, 1)]
    assert [s.macs for s in shapes] == [5 * 8 * 32, 5 * 32 * 8, 40 * 3]
    assert total_params(shapes) == sum(p.numel() for p in model.parameters())
    channels_last = measure_layer_shapes(nn.Linear(4, 6), torch.zeros(1, 3, 7, 4))[0]
    assert (channels_last.in_h, channels_last.macs) == (21, 21 * 4 * 6)
