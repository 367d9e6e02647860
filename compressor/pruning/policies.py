"""Simple policies for a budget: uniform and torch-pruning's global ranking (the rivals' policies)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn

from compressor.bisection import least_feasible
from compressor.errors import UserError
from compressor.pruning.attention import has_attention
from compressor.pruning.config import PruningConfig
from compressor.pruning.importance import (
    accumulate_gradients,
    criterion_for,
    needs_gradients,
    unit_importance,
)
from compressor.pruning.skeleton import Skeleton, trace
from compressor.pruning.transformer import unit_scores


def uniform_policy(skeleton: Skeleton, ratio: float) -> dict[str, float]:
    """Every unit at the same pruning ratio; transformer blocks are all kept (the same width in
    every block, as Minitron keeps: a shared ratio >= 0.5 would remove every block)."""
    return {u.name: 0.0 if u.kind == "block" else ratio for u in skeleton.units}


def _check_max_ratio(max_ratio: float) -> None:
    if not 0.0 < max_ratio < 1.0:
        raise UserError(f"maximum pruning ratio {max_ratio} is outside (0, 1)")


def policy_vector(skeleton: Skeleton, policy: dict[str, float]) -> list[float]:
    """A policy as the ratio vector the budgets' costs take: units in graph order, 0 when absent.

    The inverse of `Skeleton.policy_from_vector` (for policies that name every unit).
    """
    return [policy.get(name, 0.0) for name in skeleton.names]


def _least_fitting(cost: Callable[[float], float], limit: float, high: float, what: str) -> float:
    """The least x in [0, high] with cost(x) <= limit for a non-increasing cost (feasible x)."""
    if cost(0.0) <= limit:
        return 0.0
    if cost(high) > limit:
        raise UserError(f"{what} cannot reach the cost limit {limit:.4g} (best {cost(high):.4g}); "
                        "loosen the budget or raise the maximum pruning ratio")
    return least_feasible(lambda x: cost(x) <= limit, 0.0, high)


def uniform_policy_for_budget(skeleton: Skeleton, cost: Callable[[dict[str, float]], float],
                              limit: float, max_ratio: float = 0.8
                              ) -> tuple[dict[str, float], float]:
    """The least shared ratio whose uniform policy has cost <= limit, and that policy."""
    _check_max_ratio(max_ratio)
    ratio = _least_fitting(lambda r: cost(uniform_policy(skeleton, r)), limit, max_ratio,
                    f"uniform pruning up to {max_ratio}")
    return uniform_policy(skeleton, ratio), ratio


def global_ranking_policy(model: nn.Module, example_input: torch.Tensor, config: PruningConfig,
                          cost: Callable[[dict[str, float]], float], limit: float,
                          max_ratio: float = 0.8,
                          calibration_batches: Iterable | None = None) -> dict[str, float]:
    """torch-pruning's global ranking as a policy: the least-important fraction of all channels.

    All units' channels are ranked together by their mean-normalised importance (a transformer's
    heads and MLP channels by weight magnitude, each unit's scores over their mean; its blocks are
    kept, as in Torch-Pruning's ViT examples); the global fraction
    removed is bisected until `cost(policy) <= limit`, each unit's ratio capped at `max_ratio`.
    """
    _check_max_ratio(max_ratio)
    if has_attention(model):
        scores = {name: s / s.mean().clamp_min(1e-12)
                  for name, s in unit_scores(model, example_input, config).items()}
        return _ranked_policy(scores, cost, limit, max_ratio)
    device = next(model.parameters()).device
    work = copy.deepcopy(model)
    traced = trace(work, example_input.to(device), config)
    if needs_gradients(config.importance):
        accumulate_gradients(work, calibration_batches, config.taylor_batches, device)
    criterion = criterion_for(config.importance, config.seed)
    scores = {name: unit_importance(name, group, traced.channel_groups[name], criterion)
              for name, group in traced.groups.items()}
    return _ranked_policy(scores, cost, limit, max_ratio)


def _ranked_policy(scores: dict[str, torch.Tensor], cost: Callable[[dict[str, float]], float],
                   limit: float, max_ratio: float) -> dict[str, float]:
    """Remove the globally lowest-scored channels (heads) of all `scores`' units, the fraction
    bisected until `cost(policy) <= limit`; units without scores (blocks) stay at 0."""
    ranked = torch.sort(torch.cat(list(scores.values()))).values

    def policy_at(fraction: float) -> dict[str, float]:
        removed = int(fraction * len(ranked))
        if removed == 0:
            return {name: 0.0 for name in scores}
        threshold = ranked[removed - 1]
        return {name: min(max_ratio, int((s <= threshold).sum()) / len(s))
                for name, s in scores.items()}

    fraction = _least_fitting(lambda f: cost(policy_at(f)), limit, 1.0,
                       f"global ranking up to {max_ratio}")
    return policy_at(fraction)
