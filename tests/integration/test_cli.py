"""The CLI in-process, end to end on a small slice of real data, with a small real baseline."""

import json

import pytest
import torch

from compressor.cli import _round_to, main
from compressor.io.report import RunReport
from compressor.pruning import PruningConfig
from compressor.zoo import models
from tests.integration.conftest import SLICE


def _compress_args(root, out, extra=()):
    return ["compress", "--model", "resnet18", "--models-dir", str(root / "models"), *SLICE,
            "--latency-budget", "0.6", "--episodes", "4", "--search-images", "200",
            "--bn-batches", "2", "--candidates", "2", "--candidate-steps", "2",
            "--latency-batch-size", "2", "--probe-every", "2",
            "--margin", "0.1",  # batch 2 of a 5 ms network is noisy: keep the verdict steady
            "--out", str(out), "--policies-dir", str(root / "policies"),
            "--results-dir", str(root / "results"), *extra]


def test_pretrain_caches_a_baseline_with_metadata(workdir):
    path = workdir / "models" / "resnet18-fashion-mnist.pt"
    model, meta = models.load_baseline(path, "resnet18", 10)
    assert meta["input_size"] == 32 and 0 <= meta["test_top1"] <= 100
    assert meta["versions"]["torch"].startswith("2.")
    assert len(meta["history"]) == 1
    assert meta["train_config"]["max_lr"] == 0.3  # --lr reaches the recipe and its record


def test_evaluate_prints_top1(workdir, capsys):
    assert main(["evaluate", "--model", "resnet18", "--models-dir", str(workdir / "models"),
                 *SLICE, "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= out["test_top1"] <= 100


def test_compress_writes_every_output_and_exits_by_its_verdict(workdir, capsys):
    out = workdir / "run"
    code = main(_compress_args(workdir, out))
    for name in ("model.onnx", "dense.onnx", "model.pt", "episodes.jsonl", "config.json",
                 "checkpoint.pt"):
        assert (out / name).exists(), name
    results = workdir / "results" / "run"
    report = json.loads((results / "report.json").read_text())
    # The verdict hangs on one measurement ~10% under the budget (the fit's margin): judged
    # against what was measured, not against the machine's mood.
    latency = report["checks"]["latency"]
    assert latency["ok"] == (latency["value"] <= 0.6)
    assert code == (0 if report["verdict"] == "within budget" else 1)
    for name in ("report.md", "search.png", "policy.png", "accuracy_vs_latency.png"):
        assert (results / name).exists(), name
    assert report["episodes"] == 4
    # One copy of the log: the report names the run directory's, it does not copy it.
    assert report["episodes_log"] == str(out / "episodes.jsonl")
    assert not (results / "episodes.jsonl").exists()
    parity = report["final"]["parity"]
    tolerance = parity["tolerance"]
    assert parity["max_abs_diff"] <= tolerance["atol"] + tolerance["rtol"] * parity["max_abs_output"]
    assert parity["top1_agreement"] >= 0.9
    assert report["budgets"] == {"latency": 0.6}  # the budget once, as given
    policy = json.loads((workdir / "policies" / "run.json").read_text())
    assert policy["model"] == "resnet18" and len(policy["policy"]) == 12
    assert policy["round_to"] == PruningConfig().round_to
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert all(e["latency_predicted"] <= 0.6 for e in episodes)
    assert any("latency_measured" in e for e in episodes)
    assert {"prune", "recover", "evaluate", "latency"} <= set(
        next(e for e in episodes if not e["cached"])["seconds"])
    # The exported checkpoint reloads without any search and matches the ONNX model's shapes.
    from compressor.pruning.checkpoints import load_pruned_checkpoint

    module, meta = load_pruned_checkpoint(out / "model.pt")
    assert module(torch.zeros(2, 3, 32, 32)).shape == (2, 10)

    # apply: the written policy, re-applied, exported and measured.
    applied = workdir / "applied"
    assert main(["apply", "--model", "resnet18", "--models-dir", str(workdir / "models"), *SLICE,
                 "--policy", str(workdir / "policies" / "run.json"), "--out", str(applied),
                 "--latency-batch-size", "2"]) == 0
    assert (applied / "model.onnx").exists() and (applied / "policy.json").exists()
    # apply's report.json is compress's record (io.report.RunReport) without the search's fields
    applied_report = RunReport.from_dict(json.loads((applied / "report.json").read_text()))
    assert applied_report.model == "resnet18" and applied_report.search is None
    assert applied_report.final.parity.top1_agreement >= 0.9
    assert applied_report.final.onnx == str(applied / "model.onnx")
    assert 0 < applied_report.final.latency_ratio < 1
    assert applied_report.policy == policy["policy"]
    capsys.readouterr()

    # latency and check on the exported pair.
    assert main(["latency", str(out / "model.onnx"), "--reference", str(out / "dense.onnx"),
                 "--latency-batch-size", "2"]) == 0
    assert "ratio" in capsys.readouterr().out
    report_path = workdir / "check.json"
    code = main(["check", str(out / "model.onnx"), "--reference", str(out / "dense.onnx"),
                 "--max-latency-ratio", "0.99", "--latency-batch-size", "2", "--rounds", "1",
                 "--json", str(report_path)])
    check = json.loads(report_path.read_text())
    assert code == (0 if check["verdict"] == "pass" else 1)
    assert check["environment"]["machine"]["cpu"]
    assert main(["check", str(out / "dense.onnx"), "--reference", str(out / "dense.onnx"),
                 "--max-latency-ratio", "0.2", "--latency-batch-size", "2", "--rounds", "1"]) == 1


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--model", "resnet19"], "did you mean resnet18"),
    (["compress", "--model", "resnet18", "--latency-budget", "1.5"], "between 0 and 1"),
    (["compress", "--model", "resnet18", "--latency-budget", "0.001"], "reachable minimum"),
    (["compress", "--model", "resnet18"], "no budget given"),
])
def test_bad_input_gives_one_line_and_exit_code_2(workdir, capsys, argv, message):
    extra = ["--models-dir", str(workdir / "models"), *SLICE,
             "--latency-batch-size", "2"] if argv[0] == "compress" else []
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_files_give_one_line_and_exit_code_2(workdir, tmp_path, capsys):
    not_onnx = tmp_path / "x.onnx"
    not_onnx.write_text("hello")
    assert main(["latency", str(not_onnx), "--latency-batch-size", "2"]) == 2
    assert "not a loadable ONNX model" in capsys.readouterr().err
    bad_policy = tmp_path / "p.json"
    bad_policy.write_text(json.dumps({"model": "mobilenet_v2", "policy": {}}))
    assert main(["apply", "--model", "resnet18", "--models-dir", str(workdir / "models"), *SLICE,
                 "--policy", str(bad_policy), "--out", str(tmp_path / "o")]) == 2
    assert "made for mobilenet_v2" in capsys.readouterr().err
    bad_policy.write_text(json.dumps({"model": "resnet18", "policy": {"layer9": 0.5}}))
    assert main(["apply", "--model", "resnet18", "--models-dir", str(workdir / "models"), *SLICE,
                 "--policy", str(bad_policy), "--out", str(tmp_path / "o")]) == 2
    assert "valid units: conv1" in capsys.readouterr().err
    corrupt = tmp_path / "c.pt"
    corrupt.write_bytes(b"\x00" * 100)
    assert main(["evaluate", "--model", "resnet18", "--checkpoint", str(corrupt), *SLICE]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_check_refuses_models_of_different_input_shapes(tmp_path, capsys):
    from compressor.io.export import export_onnx

    model = models.build_model("mobilenet_v2", 10).eval()
    export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "a.onnx")
    fixed = tmp_path / "b.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 48, 48),), str(fixed), dynamo=False,
                      opset_version=17)
    assert main(["check", str(tmp_path / "a.onnx"), "--reference", str(fixed),
                 "--max-latency-ratio", "0.5", "--latency-batch-size", "1"]) == 2
    err = capsys.readouterr().err
    assert "48" in err and "32" in err and len(err.strip().splitlines()) == 1
    assert main(["check", str(tmp_path / "a.onnx"), "--reference", str(tmp_path / "a.onnx"),
                 "--max-latency-ratio", "1.5"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


def test_round_to_comes_from_the_flag_then_the_policy_file_then_the_default(tmp_path):
    recorded = tmp_path / "p.json"
    recorded.write_text(json.dumps({"policy": {}, "round_to": 32}))
    assert _round_to(4, str(recorded)) == {"round_to": 4}
    assert _round_to(None, str(recorded)) == {"round_to": 32}
    (tmp_path / "bare.json").write_text(json.dumps({"policy": {}}))
    assert _round_to(None, str(tmp_path / "bare.json")) == {}
    assert _round_to(None, str(tmp_path / "missing.json")) == {}
