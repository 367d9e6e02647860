"""report.json as one typed record: what compress and apply write and the benchmarks read back."""

from __future__ import annotations

import json

import pytest

from compressor.io.report import (
    ExportParity,
    RunReport,
    ShippedModel,
    headline,
    probe_bias_median,
    write_report_json,
)

FINAL = ShippedModel(test_top1=91.5, fp32_test_top1=91.5, macs=10, params=20,
                     checkpoint="run/model.pt", policy_file="policy.json",
                     latency={"ratio": 0.45, "spread": [0.44, 0.46]}, latency_rounds=1,
                     fp32_latency={"ratio": 0.45}, onnx="run/model.onnx",
                     fp32_onnx="run/model.onnx",
                     parity=ExportParity(1e-6, 3.0, 3e-7, 1.0, {"rtol": 1e-3, "atol": 1e-4}))


def test_sections_a_run_did_not_produce_are_left_out_and_the_record_reads_back(tmp_path):
    applied = RunReport(model="resnet18", dataset="fashion-mnist", run="applied",
                        command="compressor apply", headline="h", final=FINAL,
                        policy={"conv1": 0.5})
    written = json.loads(write_report_json(tmp_path, applied).read_text())
    assert written["failure"] is None  # always there: null when nothing failed
    for absent in ("verdict", "search", "candidates", "episodes", "time", "plots"):
        assert absent not in written, absent
    assert "int8" not in written["final"]
    assert written["final"]["parity"]["tolerance"] == {"rtol": 1e-3, "atol": 1e-4}
    assert RunReport.from_dict(written) == applied


def test_a_failed_or_partial_final_section_reads_as_none():
    failed = ShippedModel.from_dict({"test_top1": 90.0, "precision": "fp32", "macs": 1,
                                     "params": 2, "checkpoint": "c", "policy_file": "p"})
    assert failed.latency is None and failed.latency_ratio is None and failed.parity is None
    assert "latency" not in failed.as_dict() and "onnx" not in failed.as_dict()
    assert ShippedModel.from_dict({}) == ShippedModel()
    assert FINAL.latency_ratio == 0.45


def test_the_headline_names_the_precision_and_the_ratio_when_measured():
    assert headline(91.5, 92.0, "int8", 0.45) == \
        "91.50% top-1 (-0.50) in INT8 at 0.450 of the dense latency"
    assert headline(92.25, 92.0, "fp32", None) == "92.25% top-1 (+0.25)"


def test_the_probe_bias_is_the_median_over_fresh_probes_only():
    episodes = [{"latency_predicted": 0.5, "latency_measured": 0.55},  # +10%
                {"latency_predicted": 0.4, "latency_measured": 0.38},  # -5%
                {"latency_predicted": 0.4, "latency_measured": 0.38, "cached": True},
                {"latency_predicted": 0.5, "latency_measured": 0.51},  # +2%
                {"latency_predicted": 0.3}]  # not probed
    assert probe_bias_median(episodes) == pytest.approx(0.02)
    assert probe_bias_median([{"latency_predicted": 0.3}]) is None
    searched = RunReport(model="m", dataset="d", run="r", command="c", headline="h",
                         final=FINAL, search={"method": "ddpg", "evaluations": 3},
                         probe_bias_median=0.02)
    assert RunReport.from_dict(searched.as_dict()).probe_bias_median == 0.02
