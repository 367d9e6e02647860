"""Apply a policy: a pruned copy of the model with exactly the channel counts the skeleton predicts."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from compressor.pruning.attention import has_attention
from compressor.pruning.config import PruningConfig
from compressor.pruning.importance import (
    accumulate_gradients,
    criterion_for,
    needs_gradients,
    prune_indices,
    unit_importance,
)
from compressor.pruning.segments import ROOT_TYPES, drop_by_segment, segments_of
from compressor.pruning.sizes import refresh_sizes
from compressor.pruning.skeleton import check_policy, kept_count, trace
from compressor.pruning.transformer import apply_transformer_policy


def apply_policy(model: nn.Module, policy: dict[str, float], example_input: torch.Tensor,
                 config: PruningConfig, calibration_batches: Iterable | None = None) -> nn.Module:
    """A pruned deep copy of `model` (the input is never touched).

    Each unit keeps `kept_count(channels, step, ratio)` channels of each of its segments (one,
    unless its channels are a concatenation or split), chosen within the segment by
    `config.importance` computed on the dense copy before anything is removed (as torch-pruning's
    MetaPruner does).
    `calibration_batches` of (images, labels) are needed for the taylor criterion.
    A model with self-attention is pruned by transformer units (`pruning.transformer`).
    """
    if has_attention(model):
        return apply_transformer_policy(model, policy, example_input, config)
    device = next(model.parameters()).device
    example_input = example_input.to(device)
    work = copy.deepcopy(model)
    traced = trace(work, example_input, config)
    ratios = check_policy(policy, traced.groups)  # precision entries do not prune
    criterion = criterion_for(config.importance, config.seed)
    plans = []
    for name, ratio in ratios.items():
        group, groups = traced.groups[name], traced.channel_groups[name]
        segments = segments_of(traced.segments[name], groups, config.round_to)
        kept = [kept_count(s.channels, s.step, ratio) for s in segments]
        if kept != [s.channels for s in segments]:
            plans.append((name, group, groups, traced.segments[name].parts, kept))
    if plans and needs_gradients(config.importance):
        accumulate_gradients(work, calibration_batches, config.taylor_batches, device)
    pruning = [(group[0].dep.target.module, group[0].dep.handler,
                _drop(unit_importance(name, group, groups, criterion), groups, parts, kept))
               for name, group, groups, parts, kept in plans]
    for root, handler, idxs in pruning:
        group = traced.graph.get_pruning_group(root, handler, idxs)
        extras = _extra_out_parameters(traced.graph, group)
        group.prune()
        _prune_extras(extras)
    if pruning:
        refresh_sizes(work, example_input)  # split sizes a forward reads from attributes
    work.zero_grad(set_to_none=True)
    work.train(model.training)  # tracing switched the copy to eval mode
    return work


def _extra_out_parameters(graph, group) -> list[tuple[nn.Module, str, list[int]]]:
    """The parameters torch-pruning leaves whole when it prunes a conv's or linear's out
    channels: its own extra ones with one entry per out channel (timm's ScaledStdConv2d `gain`,
    read by NF-Nets' weight standardisation: "weight should contain 16 elements not 32"). Per
    parameter, the module, its name and the channels to remove."""
    found = []
    for dep, idxs in group:
        module = dep.target.module
        if not isinstance(module, ROOT_TYPES) or not graph.is_out_channel_pruning_fn(dep.handler):
            continue
        out = module.weight.shape[0]
        found += [(module, name, list(idxs)) for name, p in module.named_parameters(recurse=False)
                  if name not in ("weight", "bias") and p.dim() >= 1 and p.shape[0] == out]
    return found


def _prune_extras(extras: list[tuple[nn.Module, str, list[int]]]) -> None:
    for module, name, idxs in extras:
        param = getattr(module, name)
        drop = set(idxs)
        keep = torch.tensor([i for i in range(param.shape[0]) if i not in drop], dtype=torch.long)
        setattr(module, name, nn.Parameter(param.data.index_select(0, keep),
                                           requires_grad=param.requires_grad))


def _drop(scores: torch.Tensor, channel_groups: int, parts: tuple, kept: list[int]) -> list[int]:
    """The group channels to remove: a plain group's lowest-ranked (the same in every channel
    group of a grouped conv), else each segment's own share (`segments.drop_by_segment`)."""
    if len(parts) == 1 and all(len(cls) == 1 for cls in parts[0]):
        return prune_indices(scores, channel_groups, kept[0])
    # Scores are per position within a channel group: every group's channel there scores it.
    return drop_by_segment(scores.repeat(channel_groups).tolist(), parts, kept)
