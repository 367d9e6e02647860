"""Apply a policy: a pruned copy of the model with exactly the channel counts the skeleton predicts;
and the skeleton checked against one such prune (`build_skeleton`), beside what it checks."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import replace

import torch
from torch import nn

from compressor.errors import UserError
from compressor.pruning.config import PruningConfig
from compressor.pruning.importance import (
    accumulate_gradients,
    criterion_for,
    needs_gradients,
    prune_indices,
    unit_importance,
)
from compressor.pruning.shapes import measure_layer_shapes
from compressor.pruning.skeleton import (
    Skeleton,
    channel_step,
    check_policy,
    kept_count,
    trace,
    trace_skeleton,
)


def apply_policy(model: nn.Module, policy: dict[str, float], example_input: torch.Tensor,
                 config: PruningConfig, calibration_batches: Iterable | None = None) -> nn.Module:
    """A pruned deep copy of `model` (the input is never touched).

    Each unit keeps `kept_count(channels, step, ratio)` channels, chosen by `config.importance`
    computed on the dense copy before anything is removed (as torch-pruning's MetaPruner does).
    `calibration_batches` of (images, labels) are needed for the taylor criterion.
    """
    device = next(model.parameters()).device
    example_input = example_input.to(device)
    work = copy.deepcopy(model)
    traced = trace(work, example_input, config)
    ratios = check_policy(policy, traced.groups)  # precision entries do not prune
    criterion = criterion_for(config.importance, config.seed)
    plans = []
    for name, ratio in ratios.items():
        group, groups = traced.groups[name], traced.channel_groups[name]
        channels = len(group[0].idxs)
        kept = kept_count(channels, channel_step(channels, groups, config.round_to), ratio)
        if kept < channels:
            plans.append((name, group, groups, kept))
    if plans and needs_gradients(config.importance):
        accumulate_gradients(work, calibration_batches, config.taylor_batches, device)
    pruning = [(group[0].dep.target.module, group[0].dep.handler,
                prune_indices(unit_importance(name, group, groups, criterion), groups, kept))
               for name, group, groups, kept in plans]
    for root, handler, idxs in pruning:
        traced.graph.get_pruning_group(root, handler, idxs).prune()
    work.zero_grad(set_to_none=True)
    work.train(model.training)  # tracing switched the copy to eval mode
    return work


def build_skeleton(model: nn.Module, example_input: torch.Tensor, config: PruningConfig,
                   verify: bool = True) -> Skeleton:
    """Trace `model` once (on a copy) and tabulate which unit sets which layer's channels
    (`trace_skeleton`).

    With `verify`, one policy (every unit at 0.5) is really pruned and its measured shapes compared
    with the prediction (`verify_skeleton`), so a model torch-pruning mishandles fails here with a
    UserError rather than mid-search.
    """
    example_input = example_input.to(next(model.parameters()).device)
    skeleton = trace_skeleton(model, example_input, config)
    if verify:
        verify_skeleton(skeleton, model, example_input, config)
    return skeleton


def verify_skeleton(skeleton: Skeleton, model: nn.Module, x: torch.Tensor,
                    config: PruningConfig) -> None:
    """Prune every unit of `model` at 0.5 and compare the measured layer shapes with the
    skeleton's prediction; a one-line UserError naming the first layer that differs."""
    policy = {name: 0.5 for name in skeleton.names}
    name = type(model).__name__
    pruned = apply_policy(model, policy, x, replace(config, importance="l2"))
    try:
        measured = measure_layer_shapes(pruned, x)
    except Exception as exc:
        raise UserError(f"{name} no longer runs once pruned by torch-pruning "
                        f"({type(exc).__name__}); choose another model") from None
    predicted = skeleton.layer_shapes(policy)
    for want, got in zip(predicted, measured, strict=False):
        if want != got:
            raise UserError(f"torch-pruning mishandles {name}: layer {got.name} was pruned to "
                            f"{got.in_channels}->{got.out_channels} channels, predicted "
                            f"{want.in_channels}->{want.out_channels}; choose another model")
    if len(predicted) != len(measured):
        raise UserError(f"{name} runs a different set of layers once pruned; choose another model")
