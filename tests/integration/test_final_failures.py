"""An export failure after the search, through the CLI: exit 3, the work kept, `--resume` finishes."""

import json
from pathlib import Path

from compressor.cli import main
from compressor.errors import EXIT_INTERNAL, EXIT_OK, ExportError
from compressor.io import export
from tests.integration.conftest import SLICE

FLOPS = ("--flops-budget", "0.6")


def _args(root, out, budget=FLOPS):
    return ["compress", "--model", "resnet18", "--models-dir", str(root / "models"), *SLICE,
            *budget, "--method", "random", "--episodes", "3",
            "--search-images", "200", "--bn-batches", "2", "--candidates", "1",
            "--candidate-steps", "1", "--final-epochs", "0", "--latency-batch-size", "2",
            "--probe-every", "0", "--out", str(out), "--policies-dir", str(root / "policies"),
            "--results-dir", str(root / "results")]


def _lines(path):
    return path.read_text().splitlines()


def _break_pruned_export(monkeypatch):
    real = export.export_onnx

    def export_onnx(model, example_input, path, *args, **kwargs):
        if Path(path).name == "model.onnx":  # only the pruned model's export fails
            raise ExportError("ONNX export of ResNet does not match PyTorch: injected")
        return real(model, example_input, path, *args, **kwargs)

    monkeypatch.setattr(export, "export_onnx", export_onnx)
    return real


def test_an_export_failure_exits_3_keeps_the_work_and_resume_finishes(workdir, tmp_path,
                                                                      monkeypatch, capsys):
    out = tmp_path / "failing"
    results = workdir / "results" / out.name
    policy = workdir / "policies" / f"{out.name}.json"
    real = _break_pruned_export(monkeypatch)
    assert main(_args(workdir, out)) == EXIT_INTERNAL
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert err.startswith("internal error: ExportError: ONNX export of ResNet")
    assert f"--resume {out}" in err and f"compressor apply --policy {policy}" in err
    assert policy.exists() and (out / "model.pt").exists()
    assert not (out / "model.onnx").exists()
    report = json.loads((results / "report.json").read_text())
    assert report["failure"] == "ExportError: ONNX export of ResNet does not match PyTorch: injected"
    assert report["verdict"] == "export or measurement failed"
    assert "The final stage failed" in (results / "report.md").read_text()
    searched = _lines(out / "episodes.jsonl")
    assert len(searched) == 3

    monkeypatch.setattr(export, "export_onnx", real)
    assert main([*_args(workdir, out), "--resume", str(out)]) == EXIT_OK
    assert _lines(out / "episodes.jsonl") == searched  # finished without searching again
    for name in ("model.onnx", "dense.onnx", "model.pt"):
        assert (out / name).exists(), name
    report = json.loads((results / "report.json").read_text())
    assert report["failure"] is None and report["verdict"] == "within budget"
    assert report["episodes"] == 3 and report["checks"]["flops"]["ok"]
    assert "The final stage failed" not in (results / "report.md").read_text()


def test_an_export_failure_under_a_latency_budget_writes_the_report(workdir, tmp_path,
                                                                  monkeypatch, capsys):
    out = tmp_path / "latency"
    _break_pruned_export(monkeypatch)
    budget = ("--latency-budget", "0.6", "--margin", "0.1")
    assert main(_args(workdir, out, budget)) == EXIT_INTERNAL
    assert (out / "model.pt").exists()  # saved before the export, bug or not
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("internal error: ExportError:") and f"--resume {out}" in err
    report = json.loads((workdir / "results" / out.name / "report.json").read_text())
    assert report["verdict"] == "export or measurement failed"
