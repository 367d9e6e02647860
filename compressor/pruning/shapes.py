"""Layer shapes: the common language of the pruning skeleton, the cost counters and the latency model.

A network's cost is a function of its convolution and linear layers' shapes. The pruning module
predicts these shapes for a policy without pruning anything (so the budget wall can be evaluated
hundreds of times per episode); `measure_layer_shapes` reads them off a real model, and the two must
agree. Feature maps, kernels and strides are kept per axis (height, width), so non-square inputs
and kernels cost what they run.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class LayerShape(NamedTuple):
    """One Conv2d or Linear layer as it runs on the probe input (batch excluded).

    Flat ints, so that a JSON round trip (`LayerShape(*list(shape))`) gives an equal shape. A
    Linear layer is a 1x1 "conv" on a T x 1 map, T the vectors it maps per sample: the tokens of
    a transformer's [batch, tokens, dim] input (the pixels of a channels-last [B, H, W, C] one),
    1 for a classifier on pooled features.

    >>> s = LayerShape("conv1", "conv", 1, 16, 3, 3, 1, 1, 1, 28, 40, 28, 40, False)
    >>> s.macs == 3 * 3 * 1 * 16 * 28 * 40, s.out_pixels
    (True, 1120)
    """

    name: str  # qualified module name
    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel_h: int  # 1 for linear
    kernel_w: int
    stride_h: int
    stride_w: int
    groups: int
    in_h: int  # input feature map height; for linear the tokens per sample (1 for a classifier)
    in_w: int  # 1 for linear
    out_h: int  # output feature map height; for linear = in_h
    out_w: int
    bias: bool

    @property
    def kernel_area(self) -> int:
        return self.kernel_h * self.kernel_w

    @property
    def out_pixels(self) -> int:
        return self.out_h * self.out_w

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image."""
        per_pixel = self.kernel_area * (self.in_channels // self.groups) * self.out_channels
        return per_pixel * self.out_pixels

    @property
    def params(self) -> int:
        weight = self.kernel_area * (self.in_channels // self.groups) * self.out_channels
        return weight + (self.out_channels if self.bias else 0)

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels


def total_macs(shapes: list[LayerShape]) -> int:
    return sum(s.macs for s in shapes)


def total_params(shapes: list[LayerShape]) -> int:
    return sum(s.params for s in shapes)


def measure_layer_shapes(model: nn.Module, example_input: torch.Tensor) -> list[LayerShape]:
    """Run one forward pass (on the first sample) and record every Conv2d and Linear layer's
    shape, in call order. A layer that runs twice is recorded twice; one that does not run (a
    transformer block removed by pruning) is not recorded."""
    shapes: list[LayerShape] = []
    hooks = []

    def hook_for(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            x = inputs[0]
            if isinstance(module, nn.Conv2d):
                (kernel_h, kernel_w), (stride_h, stride_w) = module.kernel_size, module.stride
                shapes.append(LayerShape(
                    name, "conv", module.in_channels, module.out_channels, kernel_h, kernel_w,
                    stride_h, stride_w, module.groups, x.shape[-2], x.shape[-1],
                    output.shape[-2], output.shape[-1], module.bias is not None,
                ))
            else:  # the probe runs one sample: every vector it maps is one token of it
                tokens = x.numel() // module.in_features
                shapes.append(LayerShape(
                    name, "linear", module.in_features, module.out_features, 1, 1, 1, 1, 1,
                    tokens, 1, tokens, 1, module.bias is not None,
                ))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook_for(name)))
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(example_input[:1])
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return shapes
