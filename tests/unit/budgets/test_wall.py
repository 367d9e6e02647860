"""The action wall: clipping any action sequence meets every feasible budget, and the wall is tight."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.budgets.wall import (
    Budget,
    check_feasible,
    clip_action,
    meets,
    reachable_minimum,
    wall,
)
from compressor.errors import UserError

TOL = 1e-4
KINDS = ("linear", "coupled", "power", "steps", "bottleneck")


@dataclass(frozen=True)
class RoundedCost:
    """A monotone cost over per-unit keep fractions, channels rounded to multiples of 8.

    Every kind is non-increasing in each pruning ratio, as real costs are:
    linear      weighted mean of keep fractions (params of independent layers);
    coupled     a unit's keep times its producer's keep (MACs: outputs and inputs both shrink);
    power       coupled ** p (a nonlinear latency curve);
    steps       a fixed overhead plus coupled quantised to a few levels (measured latency);
    bottleneck  the largest coupled term (the slowest branch dominates).
    """

    kind: str
    channels: tuple[int, ...]
    weights: tuple[float, ...]
    power: float = 1.0
    levels: int = 10
    overhead: float = 0.0

    def keep(self, ratios: Sequence[float]) -> list[float]:
        return [
            max(8, math.floor(c * (1 - r) / 8 + 0.5) * 8) / c
            for c, r in zip(self.channels, ratios, strict=True)
        ]

    def __call__(self, ratios: Sequence[float]) -> float:
        keep = self.keep(ratios)
        if self.kind == "linear":
            return sum(w * k for w, k in zip(self.weights, keep, strict=True)) / sum(self.weights)
        coupled = [k * (keep[i - 1] if i > 0 else 1.0) for i, k in enumerate(keep)]
        if self.kind == "bottleneck":
            return max(w * k for w, k in zip(self.weights, coupled, strict=True)) / max(
                self.weights
            )
        total = sum(w * k for w, k in zip(self.weights, coupled, strict=True)) / sum(self.weights)
        if self.kind == "coupled":
            return total
        if self.kind == "power":
            return total**self.power
        if self.kind == "steps":
            # min(1, ...) absorbs float noise in `total` at the dense model.
            quantised = min(1.0, math.ceil(total * self.levels) / self.levels)
            return self.overhead + (1 - self.overhead) * quantised
        raise AssertionError(self.kind)


def costs(n_units: int) -> st.SearchStrategy[RoundedCost]:
    return st.builds(
        RoundedCost,
        kind=st.sampled_from(KINDS),
        channels=st.lists(
            st.integers(1, 32).map(lambda c: 8 * c), min_size=n_units, max_size=n_units
        ).map(tuple),
        weights=st.lists(st.floats(0.05, 10.0), min_size=n_units, max_size=n_units).map(tuple),
        power=st.floats(0.3, 3.0),
        levels=st.integers(2, 20),
        overhead=st.floats(0.0, 0.4),
    )


@dataclass(frozen=True)
class Problem:
    n_units: int
    max_ratio: float
    budgets: tuple[Budget, ...]


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    """1-3 budgets whose limits sit anywhere from a bit below the reachable minimum up to dense."""
    n_units = draw(st.integers(1, 8))
    max_ratio = draw(st.floats(0.05, 0.95))
    budgets = []
    for i in range(draw(st.integers(1, 3))):
        cost = draw(costs(n_units))
        least = cost([max_ratio] * n_units)
        # u < 0 gives infeasible limits; u = 0 is the tightest feasible one.
        u = draw(st.one_of(st.just(0.0), st.floats(-0.3, 1.0)))
        budgets.append(Budget(f"b{i}", cost, least + u * (1 - least)))
    return Problem(n_units, max_ratio, tuple(budgets))


def feasible(problem: Problem) -> bool:
    """The specification check_feasible must implement, written independently."""
    least = reachable_minimum(problem.budgets, problem.n_units, problem.max_ratio)
    return all(0 < b.limit < 1 and least[b.name] <= b.limit for b in problem.budgets)


@settings(max_examples=300, deadline=None)
@given(problem=problems(), data=st.data())
def test_clipping_any_actions_meets_every_feasible_budget(problem: Problem, data: st.DataObject):
    try:
        check_feasible(problem.budgets, problem.n_units, problem.max_ratio)
    except UserError:
        assert not feasible(problem)
        return
    assert feasible(problem)
    actions = data.draw(
        st.lists(st.floats(-0.5, 1.5), min_size=problem.n_units, max_size=problem.n_units)
    )
    policy: list[float] = []
    for action in actions:
        ratio = clip_action(policy, action, problem.budgets, problem.n_units, problem.max_ratio)
        assert 0.0 <= ratio <= problem.max_ratio
        assert ratio >= min(action, problem.max_ratio)  # the wall only ever raises an action
        policy.append(ratio)
    for budget in problem.budgets:
        assert budget.cost(policy) <= budget.limit, budget


@settings(max_examples=300, deadline=None)
@given(problem=problems(), data=st.data())
def test_wall_is_the_least_ratio_that_keeps_the_budgets_reachable(
    problem: Problem, data: st.DataObject
):
    n, top = problem.n_units, problem.max_ratio
    prefix = data.draw(st.lists(st.floats(0.0, top), max_size=n - 1))
    rest = n - len(prefix) - 1
    r = wall(prefix, problem.budgets, n, top, tol=TOL)
    assert 0.0 <= r <= top
    if meets([*prefix, r, *[top] * rest], problem.budgets):
        if r > 0:
            lower = max(0.0, r - TOL)
            assert not meets([*prefix, lower, *[top] * rest], problem.budgets)
    else:
        # Only an unreachable budget may leave the wall unsatisfied, and then it says max_ratio.
        assert r == top
        assert not meets([*prefix, top, *[top] * rest], problem.budgets)


def linear(ratios: Sequence[float]) -> float:
    return sum(1 - r for r in ratios) / len(ratios)


def test_wall_matches_the_linear_bound():
    # Two units, mean keep <= 0.5, the second at 0.8: the first must prune at least 0.2.
    budgets = [Budget("flops", linear, 0.5)]
    assert wall([], budgets, 2, 0.8) == pytest.approx(0.2, abs=TOL)
    assert wall([], budgets, 2, 0.8) >= 0.2
    assert wall([0.3], budgets, 2, 0.8) == pytest.approx(0.7, abs=TOL)
    assert wall([], [Budget("flops", linear, 0.9)], 2, 0.8) == 0.0


def test_docstring_example():
    budgets = [Budget("flops", lambda r: 1 - r[0], 0.5)]
    assert clip_action([], 0.3, budgets, 1, 0.8) == pytest.approx(0.5, abs=TOL)
    assert clip_action([], 0.6, budgets, 1, 0.8) == 0.6
    assert clip_action([], 0.9, budgets, 1, 0.8) == 0.8


def test_several_budgets_take_the_highest_wall():
    budgets = [Budget("flops", linear, 0.6), Budget("params", lambda r: linear(r) ** 2, 0.2)]
    # params: mean keep <= sqrt(0.2) ~ 0.447, stricter than flops' 0.6.
    assert wall([], budgets, 1, 0.9) == pytest.approx(1 - math.sqrt(0.2), abs=TOL)


def test_wall_and_clip_reject_bad_arguments():
    budgets = [Budget("flops", linear, 0.5)]
    with pytest.raises(ValueError, match="prefix"):
        wall([0.1, 0.2], budgets, 2, 0.8)
    with pytest.raises(ValueError, match="NaN"):
        clip_action([], float("nan"), budgets, 2, 0.8)


@pytest.mark.parametrize("limit", [0.0, -0.1, 1.0, 1.5, float("nan")])
def test_check_feasible_rejects_out_of_range_limits(limit: float):
    with pytest.raises(UserError, match="latency budget .* out of range") as caught:
        check_feasible([Budget("latency", linear, limit)], 3, 0.8)
    assert "\n" not in str(caught.value)


def test_check_feasible_names_the_reachable_minimum_and_the_fix():
    budgets = [Budget("flops", linear, 0.5), Budget("latency", linear, 0.1)]
    with pytest.raises(UserError) as caught:
        check_feasible(budgets, 3, 0.8)
    message = str(caught.value)
    assert message == (
        "latency budget 0.10 is below the reachable minimum 0.20 at max ratio 0.8; "
        "raise the budget or --max-ratio"
    )
    check_feasible([Budget("latency", linear, 0.2)], 3, 0.8)  # exactly reachable is fine


def test_check_feasible_shows_enough_digits_to_tell_limit_and_minimum_apart():
    with pytest.raises(UserError, match="budget 0.1999 is below the reachable minimum 0.2000"):
        check_feasible([Budget("latency", linear, 0.1999)], 3, 0.8)


@pytest.mark.parametrize("max_ratio", [0.0, 1.0, -0.2])
def test_check_feasible_rejects_bad_max_ratio(max_ratio: float):
    with pytest.raises(UserError, match="--max-ratio"):
        check_feasible([Budget("flops", linear, 0.5)], 3, max_ratio)


def test_check_feasible_rejects_duplicate_budgets():
    with pytest.raises(UserError, match="more than once"):
        check_feasible([Budget("flops", linear, 0.5), Budget("flops", linear, 0.6)], 3, 0.8)
