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
    prune_indices_by_segment,
    unit_importance,
)
from compressor.pruning.skeleton import check_policy, kept_count, segments_of, trace
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
        parts = traced.segments[name].parts
        kept = [kept_count(s.channels, s.step, ratio)
                for s in segments_of(parts, groups, config.round_to)]
        if sum(kept) < len(group[0].idxs):
            plans.append((name, group, groups, parts, kept))
    if plans and needs_gradients(config.importance):
        accumulate_gradients(work, calibration_batches, config.taylor_batches, device)
    pruning = [(group[0].dep.target.module, group[0].dep.handler,
                prune_indices_by_segment(unit_importance(name, group, groups, criterion), groups,
                                         parts, kept))
               for name, group, groups, parts, kept in plans]
    for root, handler, idxs in pruning:
        traced.graph.get_pruning_group(root, handler, idxs).prune()
    work.zero_grad(set_to_none=True)
    work.train(model.training)  # tracing switched the copy to eval mode
    return work
