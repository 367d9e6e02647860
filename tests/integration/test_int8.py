"""`--quantize int8` end to end: compress, apply and check on a real tiny baseline."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from compressor.cli import main
from compressor.pruning import PruningConfig, build_skeleton
from compressor.pruning.shapes import measure_layer_shapes
from compressor.quantize import layer_nodes
from compressor.quantize.int8 import MEASURED_BY_DEFAULT
from compressor.zoo.models import build_model
from tests.integration.conftest import SLICE
from tests.integration.test_cli import _compress_args

# Batch 8: at batch 2 a 5 ms network's INT8 gain drowns in per-run overhead.
INT8 = ["--quantize", "int8", "--latency-batch-size", "8"]


def _compress_run(workdir, out, flags):
    """compress into `out` with `flags`: its report and policy file, its exit code checked
    against its verdict."""
    code = main(_compress_args(workdir, out, flags))
    report = json.loads((workdir / "results" / out.name / "report.json").read_text())
    assert code == (0 if report["verdict"] == "within budget" else 1)
    return report, workdir / "policies" / f"{out.name}.json"


def test_compress_int8_ships_a_checked_int8_model_or_says_why_not(workdir, capsys):
    out = workdir / "run-int8"
    report, _ = _compress_run(workdir, out, INT8)
    final = report["final"]
    plan = final["int8"]["plan"]
    assert {t["format"] for t in plan["choice"]["trials"]} == set(MEASURED_BY_DEFAULT)
    if final["precision"] != "fp32":
        # Layers INT8 costs accuracy on in the dense network stay FP32: the model ships mixed.
        assert final["precision"] == ("mixed" if plan["sensitive_layers"] else "int8")
        assert plan["dense_check"]["chosen"]["accuracy"]["images"] == 1000  # the search split
        int8 = out / "model.int8.onnx"
        onnx.checker.check_model(onnx.load(str(int8)))
        assert final["onnx"] == str(int8) and final["fp32_onnx"] == str(out / "model.onnx")
        test = final["int8"]["test"]
        assert test["images"] == 256 and final["test_top1"] == test["int8_top1"]
        assert final["latency"]["ratio"] < final["fp32_latency"]["ratio"]  # else FP32 ships
        assert plan["curve"]["format"] == plan["choice"]["chosen"]
        assert f"Precision shipped: **{final['precision']}**" in (
            workdir / "results" / "run-int8" / "report.md").read_text()
        # compressor check gates an INT8 model like any other.
        path = workdir / "check-int8.json"
        code = main(["check", str(int8), "--reference", str(out / "dense.onnx"),
                     "--max-latency-ratio", "0.99", "--latency-batch-size", "8", "--rounds", "1",
                     "--json", str(path)])
        check = json.loads(path.read_text())
        assert code == (0 if check["verdict"] == "pass" else 1)
        assert check["latency"]["ratio"] > 0
    else:  # a CPU where no INT8 format beats FP32: FP32 ships with the reason in the report
        assert final["int8"]["warning"] and not (out / "model.int8.onnx").exists()
    capsys.readouterr()

    applied = workdir / "applied-int8"
    assert main(["apply", "--model", "resnet18", "--models-dir", str(workdir / "models"), *SLICE,
                 "--policy", str(workdir / "policies" / "run-int8.json"), "--out", str(applied),
                 *INT8]) == 0
    written = json.loads((applied / "policy.json").read_text())
    if written["metrics"]["precision"] == "int8":
        assert (applied / "model.int8.onnx").exists()
        assert "INT8 (" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value", [("--quantize", "int4"), ("--int8-format", "fp16"),
                                         ("--calibration", "kl")])
def test_bad_quantize_flags_give_one_line_and_exit_code_2(workdir, capsys, flag, value):
    code = main([*_compress_args(workdir, workdir / "bad"), flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and flag in err[-1]


def test_compress_mixed_keeps_the_layers_it_prices_faster_in_fp32_float(workdir, capsys):
    out, mixed = workdir / "run-mixed", ["--quantize", "mixed", "--latency-batch-size", "8"]
    report, policy_file = _compress_run(workdir, out, mixed)
    final = report["final"]
    kept = json.loads(policy_file.read_text())["fp32_layers"]
    assert kept == final["int8"]["fp32_layers"]
    assert final["int8"]["plan"]["mixed"] == (final["int8"]["plan"]["choice"]["chosen"]
                                              is not None)
    if final["precision"] != "fp32":
        assert final["precision"] == ("mixed" if kept else "int8")
        onnx.checker.check_model(onnx.load(final["onnx"]))
        chosen = final["int8"]["quantization"]["chosen"]["fp32_nodes"]
        fp32 = (out / "model.onnx").read_bytes()
        layers = [s.name for s in measure_layer_shapes(build_model("resnet18", 10).eval(),
                                                       torch.zeros(1, 3, 32, 32))]
        assert set(layer_nodes(fp32, layers, kept)) <= set(chosen)
    capsys.readouterr()

    applied = workdir / "applied-mixed"
    assert main(["apply", "--model", "resnet18", "--models-dir", str(workdir / "models"), *SLICE,
                 "--policy", str(policy_file), "--out", str(applied), *mixed]) == 0
    written = json.loads((applied / "policy.json").read_text())
    assert written["int8"]["fp32_layers"] == kept
    if written["metrics"]["precision"] != "fp32":
        assert written["metrics"]["precision"] == ("mixed" if kept else "int8")
    # A policy no mixed run wrote has no precisions to apply: one line, exit 2.
    capsys.readouterr()
    bare = workdir / "bare-policy.json"
    bare.write_text(json.dumps({"policy": json.loads(policy_file.read_text())["policy"]}))
    assert main(["apply", "--model", "resnet18", "--models-dir", str(workdir / "models"), *SLICE,
                 "--policy", str(bare), "--out", str(workdir / "applied-bare"), *mixed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--quantize int8" in err[0]


def test_compress_searched_ships_the_precisions_its_agent_chose(workdir, capsys):
    out, searched = workdir / "run-searched", ["--quantize", "searched", "--latency-batch-size", "8"]
    report, policy_file = _compress_run(workdir, out, searched)
    final = report["final"]
    precisions = report["unit_precisions"]
    assert precisions and set(precisions.values()) <= {"int8", "fp32"}
    assert set(precisions) <= set(report["policy"])
    # The winner's fit rescales its ratios and keeps the precisions the agent searched.
    chosen = next(row for row in report["candidates"] if row["chosen"])
    assert {k.removeprefix("int8:"): "int8" if v else "fp32" for k, v in chosen["policy"].items()
            if k.startswith("int8:")} == precisions
    written = json.loads(policy_file.read_text())
    assert not any(key.startswith("int8:") for key in written["policy"])
    kept = written["fp32_layers"]
    assert kept == final["int8"]["fp32_layers"]
    # A unit the agent kept FP32 keeps its layers FP32 in the shipped graph.
    if final["precision"] != "fp32":
        onnx.checker.check_model(onnx.load(final["onnx"]))
        skeleton = build_skeleton(build_model("resnet18", 10).eval(), torch.zeros(1, 3, 32, 32),
                                  PruningConfig())
        for shape, unit in zip(skeleton.dense_shapes, skeleton.layer_units(), strict=True):
            if unit in precisions and shape.name not in final["int8"]["plan"]["sensitive_layers"]:
                assert (shape.name in kept) == (precisions[unit] == "fp32"), shape.name
    capsys.readouterr()

    applied = workdir / "applied-searched"
    assert main(["apply", "--model", "resnet18", "--models-dir", str(workdir / "models"), *SLICE,
                 "--policy", str(policy_file), "--out", str(applied), *searched]) == 0
    assert json.loads((applied / "policy.json").read_text())["int8"]["fp32_layers"] == kept
