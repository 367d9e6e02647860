"""The budget registry: requests in the user's units, the wall's aimed limits, the verdict."""

import pytest

from compressor.budgets.kinds import (
    BudgetConfig,
    BudgetRequest,
    check_reachable,
    judge,
    verdict,
    wall_budgets,
)
from compressor.errors import UserError

# One unit whose cost falls linearly with its ratio: at max ratio 0.8 every kind reaches 0.2.
COSTS = {name: (lambda v: 1.0 - v[0]) for name in ("latency", "flops", "params")}


def test_request_lists_each_budget_once():
    request = BudgetRequest.from_config(BudgetConfig(latency=0.5))
    assert request.limits() == {"latency": 0.5}
    assert request.as_dict() == {"latency": 0.5}


def test_latency_ms_becomes_the_tighter_ratio():
    request = BudgetRequest.from_config(BudgetConfig(latency=0.6, latency_ms=4.0), dense_ms=10.0)
    assert request.latency == pytest.approx(0.4)
    assert request.as_dict()["latency_ms"] == 4.0


def test_only_the_latency_kind_is_aimed_under_by_the_margin():
    request = BudgetRequest.from_config(BudgetConfig(latency=0.5, flops=0.6))
    limits = {b.name: b.limit for b in wall_budgets(request, COSTS, margin=0.1)}
    assert limits == {"latency": pytest.approx(0.45), "flops": 0.6}


@pytest.mark.parametrize("config, match", [
    (BudgetConfig(), "no budget given"),
    (BudgetConfig(latency=1.5), "out of range"),
    (BudgetConfig(flops=float("nan")), "out of range"),
])
def test_bad_requests_are_one_line_errors(config, match):
    with pytest.raises(UserError, match=match):
        BudgetRequest.from_config(config)


def test_unreachable_ms_budget_is_reported_in_ms():
    request = BudgetRequest.from_config(BudgetConfig(latency_ms=1.0), dense_ms=10.0)
    budgets = wall_budgets(request, COSTS, margin=0.0)
    with pytest.raises(UserError, match=r"latency budget 1 ms \(0.10 of the dense model\) is below"
                                         r" the reachable minimum 2 ms"):
        check_reachable(request, budgets, 1, 0.8, margin=0.0)


def test_a_budget_reachable_only_without_the_margin_says_so():
    request = BudgetRequest.from_config(BudgetConfig(latency=0.205))
    budgets = wall_budgets(request, COSTS, margin=0.04)
    with pytest.raises(UserError, match="only without the search's 4% margin"):
        check_reachable(request, budgets, 1, 0.8, margin=0.04)


def test_user_budget_not_the_aimed_one_appears_in_messages():
    request = BudgetRequest.from_config(BudgetConfig(flops=0.1))
    with pytest.raises(UserError, match="flops budget 0.10 is below the reachable minimum 0.20"):
        check_reachable(request, wall_budgets(request, COSTS, 0.04), 1, 0.8, margin=0.04)


def test_judge_and_verdict():
    request = BudgetRequest.from_config(BudgetConfig(latency=0.5, params=0.4))
    checks = judge(request, {"latency": 0.49, "params": 0.41, "flops": 0.3})
    assert set(checks) == {"latency", "params"}
    assert checks["latency"].ok and not checks["params"].ok
    assert verdict(checks) == "OVER BUDGET"
    assert verdict(judge(request, {"latency": 0.5, "params": 0.4})) == "within budget"


def test_a_budget_without_a_measurement_is_left_out_of_the_verdict():
    request = BudgetRequest.from_config(BudgetConfig(latency=0.5, flops=0.6))
    assert set(judge(request, {"flops": 0.5})) == {"flops"}


def test_decode_and_prefill_are_kinds_aimed_under_and_judged_like_latency():
    request = BudgetRequest.from_config(BudgetConfig(decode=0.5, prefill=0.7))
    assert request.limits() == {"decode": 0.5, "prefill": 0.7}
    costs = {**COSTS, "decode": lambda v: 1.0 - v[0], "prefill": lambda v: 1.0 - v[0]}
    limits = {b.name: b.limit for b in wall_budgets(request, costs, margin=0.1)}
    assert limits == {"decode": pytest.approx(0.45), "prefill": pytest.approx(0.63)}
    checks = judge(request, {"decode": 0.48, "prefill": 0.75, "latency": 0.9})
    assert {k: c.ok for k, c in checks.items()} == {"decode": True, "prefill": False}
    assert verdict(checks) == "OVER BUDGET"


def test_a_decode_budget_without_a_decode_cost_is_a_one_line_error():
    request = BudgetRequest.from_config(BudgetConfig(decode=0.5))
    with pytest.raises(UserError, match="decode budget cannot be priced.*drop --decode-budget"):
        wall_budgets(request, COSTS, margin=0.04)
