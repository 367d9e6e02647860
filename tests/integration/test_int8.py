"""`--quantize int8` end to end: compress, apply and check on a real tiny baseline."""

from __future__ import annotations

import json

import onnx
import pytest

from compressor.cli import main
from tests.integration.conftest import SLICE
from tests.integration.test_cli import _compress_args

# Batch 8: at batch 2 a 5 ms network's INT8 gain drowns in per-run overhead.
INT8 = ["--quantize", "int8", "--latency-batch-size", "8"]


def test_compress_int8_ships_a_checked_int8_model_or_says_why_not(workdir, capsys):
    out = workdir / "run-int8"
    code = main(_compress_args(workdir, out, INT8))
    report = json.loads((workdir / "results" / "run-int8" / "report.json").read_text())
    final = report["final"]
    assert code == (0 if report["verdict"] == "within budget" else 1)
    plan = final["int8"]["plan"]
    assert {t["format"] for t in plan["choice"]["trials"]} == {"qdq-u8s8", "qoperator-u8s8",
                                                               "qdq-s8s8"}
    if final["precision"] == "int8":
        int8 = out / "model.int8.onnx"
        onnx.checker.check_model(onnx.load(str(int8)))
        assert final["onnx"] == str(int8) and final["fp32_onnx"] == str(out / "model.onnx")
        test = final["int8"]["test"]
        assert test["images"] == 256 and final["test_top1"] == test["int8_top1"]
        assert final["latency"]["ratio"] < final["fp32_latency"]["ratio"]  # else FP32 ships
        assert plan["curve"]["format"] == plan["choice"]["chosen"]
        assert "Precision shipped: **int8**" in (
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
