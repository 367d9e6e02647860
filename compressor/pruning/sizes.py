"""Channel counts a module's forward reads from its own attributes, refreshed after a prune.

torch-pruning shrinks weights, not the Python numbers a forward pass splits by: timm's mixed
convs call `torch.split(x, self.splits, 1)`, so once their input is pruned by segment the
pruned network stops with "split_with_sizes expects split_sizes to sum exactly to 56 ... got
[40, 40]". Each entry of `SIZE_ATTRIBUTES` recomputes one module class's attributes from its
pruned layers (and its input); `refresh_sizes` applies them in one forward pass of the pruned
copy. Models without such modules are not run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

SizeRefresher = Callable[[nn.Module, torch.Tensor], None]
"""(module, its input) -> None: sets the module's size attributes to its pruned channels."""


def _mixed_conv(module: nn.Module, x: torch.Tensor) -> None:
    module.splits = [conv.in_channels for conv in module.values()]


def _inception_dw(module: nn.Module, x: torch.Tensor) -> None:
    branches = [module.dwconv_hw.in_channels, module.dwconv_w.in_channels,
                module.dwconv_h.in_channels]
    module.split_indexes = (x.shape[1] - sum(branches), *branches)


def _cross_stage(module: nn.Module, x: torch.Tensor) -> None:
    module.expand_chs = module.conv_exp.conv.out_channels  # split into two equal halves


def _focal_modulation(module: nn.Module, x: torch.Tensor) -> None:
    query, context = module.h.out_channels, module.focal_layers[0][0].in_channels
    module.input_split = [query, context, module.f.out_channels - query - context]


SIZE_ATTRIBUTES: dict[str, SizeRefresher] = {
    "timm.layers.mixed_conv2d.MixedConv2d": _mixed_conv,  # torch.split(x, self.splits, 1)
    "timm.models.inception_next.InceptionDWConv2d": _inception_dw,  # ... self.split_indexes
    "timm.models.cspnet.CrossStage": _cross_stage,  # x.split(self.expand_chs // 2, dim=1)
    "timm.models.cspnet.CrossStage3": _cross_stage,
    # torch.split(self.f(x), self.input_split, 1): query, context, one gate per focal level
    "timm.models.focalnet.FocalModulation": _focal_modulation,
}
"""Qualified class name -> how to refresh its size attributes after a prune."""


def _qualified(module: nn.Module) -> str:
    kind = type(module)
    return f"{kind.__module__}.{kind.__qualname__}"


def refresh_sizes(model: nn.Module, example_input: torch.Tensor) -> None:
    """Set every registered module's size attributes to its pruned channels (in place), by one
    forward pass without gradients; the caller's mode (eval, so BatchNorm keeps its stats)."""
    def hook(module: nn.Module, args: tuple) -> None:
        SIZE_ATTRIBUTES[_qualified(module)](module, args[0])

    hooks = [module.register_forward_pre_hook(hook)
             for module in model.modules() if _qualified(module) in SIZE_ATTRIBUTES]
    if not hooks:
        return
    try:
        with torch.no_grad():
            model(example_input)
    except Exception:  # a network that no longer runs says so where it is run (`verify`)
        pass
    finally:
        for hook in hooks:
            hook.remove()
