"""The benchmark's summary: means over seeds and the goal verdicts of issue #5."""

import json

import pytest

from benchmarks.bench import METHODS, aggregate, goals, search_method_for, write_summary
from compressor.search import methods


def row(method, top1, budget=0.3, seed=0, ratio=0.28, verdict="within budget", model="resnet18"):
    return {"model": model, "budget": budget, "method": method, "seed": seed,
            "test_top1": top1, "baseline_top1": 92.0, "latency_ratio": ratio, "macs": 1e7,
            "params": 1e6, "search_seconds": 10.0, "verdict": verdict,
            "per_episode_seconds": {"prune": 0.1, "recover": 0.2, "evaluate": 0.3,
                                    "latency": 0.0}, "latency_spread": [ratio, ratio],
            "total_seconds": 20.0}


def test_aggregate_gives_mean_spread_and_budget_count_per_method():
    rows = [row("agent", 90.0, seed=0), row("agent", 91.0, seed=1, ratio=0.31,
                                             verdict="OVER BUDGET"), row("uniform", 89.0)]
    by = {g["method"]: g for g in aggregate(rows)}
    assert by["agent"]["seeds"] == 2 and by["agent"]["top1_mean"] == pytest.approx(90.5)
    assert by["agent"]["top1_sd"] == pytest.approx(0.7071, abs=1e-3)
    assert by["agent"]["latency_ratio_max"] == pytest.approx(0.31)
    assert by["agent"]["within_budget"] == 1 and by["uniform"]["top1_sd"] == 0.0


def test_goals_say_met_and_missed_with_the_gap():
    rows = [row("agent", 90.5), row("uniform", 89.0), row("random", 90.8),
            row("agent", 91.2, budget=0.5)]
    text = "\n".join(goals(aggregate(rows), rows))
    assert "+1.50 points (goal >= +1.0): **met**" in text
    assert "agent vs random 90.80: -0.30 points (goal >= 0): **missed**" in text
    assert "-0.80 points (goal >= -0.5): **missed**" in text
    assert "4 of 4 finished runs measured within budget: **met**" in text


def test_a_failed_or_over_budget_run_misses_the_budget_goal():
    rows = [row("agent", 90.0, verdict="OVER BUDGET"),
            {"model": "resnet18", "budget": 0.3, "method": "global", "seed": 0, "error": "x"}]
    text = goals(aggregate(rows), rows)[-1]
    assert "0 of 1 finished" in text and "1 run(s) found no policy" in text
    assert text.endswith("**missed**")


def test_the_flops_control_is_reported_apart_from_the_budget_goal():
    rows = [row("agent", 90.0), row("agent-flops", 90.0, ratio=0.33, verdict="OVER BUDGET"),
            {"model": "resnet18", "budget": 0.3, "method": "agent-flops", "seed": 1,
             "error": "every candidate over"}]
    text = goals(aggregate(rows), rows)
    assert any("control agent-flops" in line and "0 of 2" in line for line in text)
    assert text[-1].endswith("1 of 1 finished runs measured within budget: **met**")


def test_summary_lists_model_then_budget_then_method_order():
    rows = [row("random", 90.0, budget=0.5), row("agent", 90.0, budget=0.5),
            row("agent", 88.0, model="mobilenet_v2"), row("greedy", 90.0, budget=0.3)]
    order = [(g["model"], g["budget"], g["method"]) for g in aggregate(rows)]
    assert order == [("resnet18", 0.3, "greedy"), ("resnet18", 0.5, "agent"),
                     ("resnet18", 0.5, "random"), ("mobilenet_v2", 0.3, "agent")]


def test_write_summary_keeps_every_row_and_draws_the_plot(tmp_path):
    rows = [row("agent", 90.0), row("uniform", 89.5), row("agent", 88.0, model="mobilenet_v2"),
            {"model": "resnet18", "budget": 0.3, "method": "global", "seed": 0, "error": "x"}]
    write_summary(rows, tmp_path)
    assert json.loads((tmp_path / "benchmarks.json").read_text()) == rows
    text = (tmp_path / "BENCHMARKS.generated.md").read_text()
    assert "| resnet18 | 0.3 | global | 0 | failed: x |" in text
    assert (tmp_path / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_benchmark_row_runs_a_registered_search_method():
    assert {search_method_for(m) for m in METHODS} == set(methods.METHODS)
    assert search_method_for("agent") == search_method_for("agent-flops") == "ddpg"
    for m in METHODS:
        assert methods.get_method(search_method_for(m)).name == search_method_for(m)
