"""Per-unit sensitivity: the search score with only one unit pruned, at a few ratios.

The one measurement that sensitivity-greedy (`methods.GreedySearch`) ranks units by, and that the
DDPG agent can read as extra state features (`AgentConfig.sensitivity`) or turn into its greedy
demonstration (`AgentConfig.warm_start`):

    sens = measure(evaluate_all, skeleton.names, (0.25, 0.5, 0.75))   # 1 + 12 * 3 evaluations
    sens.features(skeleton.names)     # (units, 3) score drops, scaled to [0, 1]
    greedy_policy(sens, budget_cost, max_ratio)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from compressor.bisection import least_feasible
from compressor.errors import UserError


@dataclass(frozen=True)
class Sensitivity:
    """What `measure` found; plain numbers, so it is saved in a search checkpoint as is."""

    ratios: tuple[float, ...]
    """The pruning ratios each unit was scored at alone."""
    dense: float
    """The unpruned network's search score."""
    drops: dict[str, list[float]]
    """Per unit, the score lost (dense score minus score) with only that unit pruned, per ratio."""
    evaluations: int
    """Evaluator calls the measurement made: 1 + units * ratios."""

    def features(self, names: Sequence[str]) -> np.ndarray:
        """One row per unit of `names`: its drops divided by the largest drop of any unit.

        One scale for all columns (not one per ratio, as AMC's per-feature scaling would do), so a
        unit's row keeps the shape of its curve; a negative drop (pruning helped, within noise)
        counts as 0.
        """
        rows = np.maximum(np.array([self.drops[n] for n in names], dtype=np.float64), 0.0)
        top = rows.max(initial=0.0)
        return rows / top if top > 0 else rows


def evaluations_needed(units: int, ratios: Sequence[float]) -> int:
    """Evaluator calls of `measure` over `units` units (known before spending them)."""
    return 1 + units * len(ratios)


def measure(evaluate_all: Callable[[list[dict[str, float]]], list], names: Sequence[str],
            ratios: Sequence[float]) -> Sensitivity:
    """Score the dense network, then every unit alone at every ratio, as one batch in that order
    (`evaluate_all(policies)`, e.g. `SearchContext.evaluate_all`: on Ray workers with
    `--workers`; the scan's policies do not depend on each other's scores)."""
    policies = [{}, *({n: r} for n in names for r in ratios)]
    scores = [e.top1 for e in evaluate_all(policies)]
    dense, rest = scores[0], iter(scores[1:])
    drops = {n: [dense - next(rest) for _ in ratios] for n in names}
    return Sensitivity(tuple(ratios), dense, drops, evaluations_needed(len(names), ratios))


def greedy_policy(sens: Sensitivity, budget_cost: Callable[[dict[str, float]], float],
                  max_ratio: float) -> dict[str, float]:
    """The least tolerated score drop whose policy meets every budget (AIMET's greedy ratio
    selection, FastNAS): each unit takes the largest grid ratio whose drop stays within it.

    A UserError when even the grid's top ratio everywhere misses the budget.
    """
    grid = (0.0, *sens.ratios)

    def policy_at(level: float) -> dict[str, float]:
        policy = {}
        for name, d in sens.drops.items():
            # The largest ratio whose (monotone envelope of) measured drop stays within level.
            best, worst = 0.0, 0.0
            for r, drop in zip(grid, (0.0, *d), strict=True):
                worst = max(worst, drop)
                if worst <= level:
                    best = r
            policy[name] = min(best, max_ratio)
        return policy

    # Tolerating the largest drop seen prunes every unit at the grid's top ratio. The scale
    # is the score's own (top-1 in percent, or whatever a user's `evaluate` returns).
    highest = max(0.0, *(drop for d in sens.drops.values() for drop in d))
    if budget_cost(policy_at(highest)) > 1:
        raise UserError("sensitivity greedy cannot meet the budget with its ratio grid "
                        f"{sens.ratios}; loosen the budget or use --method ddpg")
    level = least_feasible(lambda x: budget_cost(policy_at(x)) <= 1, 0.0, highest, steps=30)
    return policy_at(level)
