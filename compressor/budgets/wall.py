"""The AMC action wall, generalised: keep every budget reachable while the agent chooses ratios.

AMC (He et al. 2018) visits the units in order. Before applying the action for unit t it raises it to
the least pruning ratio that still lets the budget be met if every later unit takes the maximum ratio,
then caps it at the maximum. AMC writes that bound for FLOPs as a linear formula. Here a cost is any
function of the full vector of per-unit pruning ratios (coupled channel groups shrink their consumers'
inputs too, channels are rounded to multiples of 8, latency is measured), so the bound is found by
bisection on the real cost function. The only assumption is that every cost is non-increasing in each
ratio: pruning more never costs more.

Worked example: one unit, ``cost = lambda r: 1 - r[0]``, limit 0.5 and max ratio 0.8. ``wall([], ...)``
is about 0.5 (a little above, never below), so ``clip_action([], 0.3, ...)`` returns about 0.5 and
``clip_action([], 0.9, ...)`` returns 0.8.

By induction the policy built by clipping each action in turn meets every budget: the invariant
"prefix + [max_ratio] * rest meets every budget" holds at the start (``check_feasible``), and the wall
returns a ratio that keeps it (it is checked against the real costs, never extrapolated).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

from compressor.bisection import least_feasible
from compressor.errors import UserError


class Budget(NamedTuple):
    """One resource the pruned model must fit in, as a ratio of the dense model."""

    name: str
    """"latency", "flops" or "params": names the budget in messages and in ``reachable_minimum``."""
    cost: Callable[[Sequence[float]], float]
    """Full vector of per-unit pruning ratios -> cost as a ratio of the dense model (1.0 = dense)."""
    limit: float
    """The policy must end with ``cost(ratios) <= limit``."""


def _policy(prefix: Sequence[float], ratio: float, n_units: int, max_ratio: float) -> list[float]:
    """The decided prefix, ``ratio`` for the current unit, and every later unit at ``max_ratio``."""
    rest = n_units - len(prefix) - 1
    return [*prefix, ratio, *([max_ratio] * rest)]


def meets(ratios: Sequence[float], budgets: Sequence[Budget]) -> bool:
    """Whether the policy ``ratios`` fits in every budget."""
    return all(budget.cost(ratios) <= budget.limit for budget in budgets)


def reachable_minimum(
    budgets: Sequence[Budget], n_units: int, max_ratio: float
) -> dict[str, float]:
    """The cost of every unit pruned at ``max_ratio``, per budget name: the least cost reachable."""
    everything = [max_ratio] * n_units
    return {budget.name: budget.cost(everything) for budget in budgets}


def wall(
    prefix: Sequence[float],
    budgets: Sequence[Budget],
    n_units: int,
    max_ratio: float,
    tol: float = 1e-4,
) -> float:
    """The least pruning ratio for unit ``len(prefix)`` that keeps every budget reachable.

    Reachable means ``cost(prefix + [r] + [max_ratio] * rest) <= limit`` for every budget. Returns
    0.0 when that already holds at r = 0, and ``max_ratio`` when even that is needed (also when the
    prefix has already made the budget unreachable, which ``check_feasible`` plus clipping prevents).
    Otherwise the returned r is within ``tol`` above the exact wall and always satisfies every budget.
    """
    if not 0 <= len(prefix) < n_units:
        raise ValueError(f"prefix has {len(prefix)} ratios but there are {n_units} units")
    if meets(_policy(prefix, 0.0, n_units, max_ratio), budgets):
        return 0.0
    if not meets(_policy(prefix, max_ratio, n_units, max_ratio), budgets):
        return max_ratio
    # `least_feasible` keeps `low` failing and `high` meeting every budget and returns `high` (not
    # the midpoint): for step-function costs a ratio just below a step fails. The bracket is
    # narrowed to tol / 2 so that `high - tol` lies strictly on the failing side (64 halvings
    # get there for any tol above 1e-19).
    return least_feasible(lambda r: meets(_policy(prefix, r, n_units, max_ratio), budgets),
                          0.0, max_ratio, tol=tol / 2, steps=64)


def clip_action(
    prefix: Sequence[float],
    action_ratio: float,
    budgets: Sequence[Budget],
    n_units: int,
    max_ratio: float,
) -> float:
    """The agent's pruning ratio for unit ``len(prefix)`` raised to the wall and capped at max."""
    if math.isnan(action_ratio):
        # max() and min() pass NaN through silently; a NaN action is a bug upstream.
        raise ValueError("action_ratio is NaN")
    return min(max(action_ratio, wall(prefix, budgets, n_units, max_ratio)), max_ratio)


def _pair(limit: float, minimum: float) -> tuple[str, str]:
    """Format two ratios with 2 decimals, or more when 2 would make them look equal."""
    for digits in (2, 4, 6):
        a, b = f"{limit:.{digits}f}", f"{minimum:.{digits}f}"
        if a != b:
            return a, b
    return f"{limit!r}", f"{minimum!r}"


def check_feasible(budgets: Sequence[Budget], n_units: int, max_ratio: float) -> None:
    """Raise ``UserError`` (one line, naming the fix) unless every budget can be met.

    Called once before a search: after it passes, clipping every action guarantees the budgets.
    """
    if not 0 < max_ratio < 1:
        raise UserError(f"--max-ratio {max_ratio} must be between 0 and 1 (exclusive)")
    names = [budget.name for budget in budgets]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"the {name} budget is given more than once; give it once")
    for budget in budgets:
        # `not (0 < x < 1)` also rejects NaN.
        if not 0 < budget.limit < 1:
            raise UserError(
                f"{budget.name} budget {budget.limit} is out of range; give a ratio of the dense "
                "model strictly between 0 and 1"
            )
    minimum = reachable_minimum(budgets, n_units, max_ratio)
    for budget in budgets:
        if minimum[budget.name] > budget.limit:
            limit, least = _pair(budget.limit, minimum[budget.name])
            raise UserError(
                f"{budget.name} budget {limit} is below the reachable minimum {least} at max ratio "
                f"{max_ratio}; raise the budget or --max-ratio"
            )
