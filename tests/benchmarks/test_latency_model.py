"""The latency-model benchmark at another input size and class count, on searched policies too:
real onnxruntime on a tiny CNN, a few policies, seconds."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from benchmarks.latency_model import main, measure_pair_clocks, searched_policies
from compressor import latency, pruning
from compressor.io.export import onnx_bytes
from compressor.zoo.models import build_model

TINY = "tests.benchmarks.test_latency_model:tiny_cnn"


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """Two prunable convs (one unit each), global pooling, a classifier: any input size."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def _episodes(path, policies_and_rewards) -> None:
    path.write_text("".join(json.dumps({"episode": i, "reward": reward, "policy": policy}) + "\n"
                            for i, (policy, reward) in enumerate(policies_and_rewards)))


def test_searched_policies_are_the_best_rewarded_distinct_ones(tmp_path):
    a, b, c = {"x": 0.5}, {"x": 0.25, "y": 0.5}, {"y": 0.75}
    _episodes(tmp_path / "episodes.jsonl", [(a, -0.5), (b, -0.1), (b, -0.1), (c, -0.3)])
    chosen = searched_policies([tmp_path], 2, ["x", "y"])  # a run directory
    assert chosen == [{"x": 0.25, "y": 0.5}, {"x": 0.0, "y": 0.75}]  # units left out: dense
    policy_file = tmp_path / "p.json"
    policy_file.write_text(json.dumps({"format": "compressor-policy-v1", "policy": a}))
    assert searched_policies([tmp_path / "episodes.jsonl", policy_file], 1, ["x", "y"]) == [
        {"x": 0.5, "y": 0.0}]  # the shipped policy ranks first


def test_searched_policies_of_a_benchmark_summary_are_its_agent_rows_of_the_model(tmp_path):
    summary = {"cells": [{"rows": [
        {"model": "a", "method": "agent", "test_top1": 90.0, "policy": {"x": 0.1}},
        {"model": "a", "method": "agent", "test_top1": 91.0, "policy": {"x": 0.2}},
        {"model": "a", "method": "uniform", "test_top1": 99.0, "policy": {"x": 0.3}},
        {"model": "b", "method": "agent", "test_top1": 99.0, "policy": {"y": 0.4}}]}]}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    assert searched_policies([path], 5, ["x"], "a") == [{"x": 0.2}, {"x": 0.1}]


def test_searched_policies_of_another_architecture_are_refused(tmp_path):
    _episodes(tmp_path / "episodes.jsonl", [({"layer4": 0.5}, 0.0)])
    with pytest.raises(SystemExit, match="not in this model"):
        searched_policies([tmp_path], 5, ["x"])


def test_the_benchmark_runs_at_another_input_size_on_random_and_searched_policies(tmp_path):
    # A search's log over the tiny CNN's units (one policy leaves a unit out: it stays dense).
    run = tmp_path / "run"
    run.mkdir()
    out = tmp_path / "out"
    args = ["--model", TINY, "--input-size", 48, "--num-classes", 7, "--policies", 2,
            "--grid-points", 2, "--calibration", 1, "--blocks", 2, "--runs", 3, "--no-kernel-time",
            "--out", out]
    x = torch.randn(1, 3, 48, 48)
    names = list(pruning.build_skeleton(build_model(TINY, 7).eval(), x,
                                        pruning.PruningConfig()).names)
    _episodes(run / "episodes.jsonl", [({names[0]: 0.5}, -0.2), ({n: 0.25 for n in names}, -0.1)])
    assert main([str(a) for a in args] + ["--policies-from", str(run), "--searched", "5"]) == 0

    result = json.loads(next(out.glob("latency_model_*_48px.json")).read_text())
    assert result["input_size"] == 48 and result["num_classes"] == 7
    assert result["measure_settings"]["input_size"] == 48
    assert result["latency_model"]["input_shape"] == [3, 48, 48]  # the tables were timed at 48
    assert result["policies"] == 2 and result["searched_policies"] == 2
    assert [r["source"] for r in result["rows"]] == ["random"] * 2 + ["searched"] * 2
    assert all(r["measured"] > 0 and r["measured_cpu"] > 0 and r["predicted"] > 0
               for r in result["rows"])
    assert math.isfinite(result["searched_median_error"])
    assert math.isfinite(result["cpu_median_error"]) and math.isnan(result["rows"][0]["kernel_ratio"])
    assert "--input-size 48 --num-classes 7" in result["command"]
    report = (out / "latency_model.md").read_text()
    assert "48x48 with 7 classes" in report and "| searched |" in report


def test_both_clocks_of_a_pair_see_a_smaller_network_as_faster():
    x = torch.randn(1, 3, 64, 64)
    settings = latency.ProbeSettings(batch_size=2, input_size=64, warmup=2, runs=5, blocks=2)
    big, small = (latency.make_session(onnx_bytes(build_model(TINY, 10).eval(), x), settings),
                  latency.make_session(onnx_bytes(nn.Sequential(
                      nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval(), x),
                      settings))
    pair = measure_pair_clocks(small, big, settings)
    assert 0 < pair.wall.ratio < 1 and 0 < pair.cpu_ratio < 1
    assert len(pair.cpu_block_ratios) == len(pair.wall.block_ratios) == 2
