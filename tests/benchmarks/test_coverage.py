"""The coverage benchmark's pieces: row classification, the summary against the goal, the size filter."""

from dataclasses import asdict

import pytest
import torchvision

from benchmarks.coverage import (
    CoverageConfig,
    ParamCount,
    Step,
    classify,
    cli_args,
    count_params,
    render_markdown,
    report_fields,
    split_by_size,
    summarise,
)

PRETRAIN_OK = Step("pretrain", 0, 40.0, "pretraining resnet18 ...\nsaved models/x.pt\n")
TRACEBACK = ("Traceback (most recent call last):\n  File \"x.py\", line 3, in <module>\n"
             "    f()\nValueError: version should be set to 1 or 2 instead of None\n")


def test_a_finished_compress_is_ok_within_or_over_budget():
    for code in (0, 1):  # 1: the export measured over budget, a result not a failure
        outcome = classify([PRETRAIN_OK, Step("compress", code, 300.0, "episode 8/8\n")])
        assert outcome == ("ok", None, None)


def test_a_finished_compress_without_its_report_is_a_failure():
    outcome = classify([PRETRAIN_OK, Step("compress", 0, 300.0, "")], report_found=False)
    assert outcome.status == "failed" and "report.json" in outcome.reason


def test_pretrain_exit_2_is_a_refusal_with_its_one_line_reason():
    stderr = "loading\nerror: vit_b_16 needs --input-size 224 (got 32)\n"
    outcome = classify([Step("pretrain", 2, 6.0, stderr)])
    assert outcome == ("refused", "error: vit_b_16 needs --input-size 224 (got 32)", "pretrain")


def test_a_quick_compress_exit_2_is_a_refusal_and_a_late_one_a_failure():
    stderr = "error: shufflenet_v2_x0_5 cannot be traced into pruning units: channel shuffle\n"
    quick = classify([PRETRAIN_OK, Step("compress", 2, 9.0, stderr)], refuse_within=60)
    assert quick == ("refused", stderr.strip(), "compress")
    late = classify([PRETRAIN_OK, Step("compress", 2, 400.0, stderr)], refuse_within=60)
    assert late.status == "failed" and late.step == "compress"
    assert late.reason.startswith("late exit 2 after 400 s") and "channel shuffle" in late.reason


def test_exit_3_is_a_failure_naming_the_internal_error():
    stderr = "error: ONNX parity failed: max |ONNX - PyTorch| 5.9e-3; finish with --resume run\n"
    outcome = classify([PRETRAIN_OK, Step("compress", 3, 500.0, stderr)])
    assert outcome.status == "failed" and outcome.step == "compress"
    assert outcome.reason == "internal error (exit 3): " + stderr.strip()


def test_a_traceback_is_a_failure_whatever_the_exit_code():
    for code in (1, 2):
        outcome = classify([PRETRAIN_OK, Step("compress", code, 5.0, TRACEBACK)])
        assert outcome.status == "failed", code
        assert outcome.reason == (f"traceback (exit {code}): ValueError: version should be set "
                                  "to 1 or 2 instead of None")
    assert classify([Step("pretrain", 1, 5.0, TRACEBACK)]).step == "pretrain"


def test_an_unexpected_exception_reported_as_exit_2_is_not_a_refusal():
    stderr = "error: AssertionError: Wrong image height! (rerun with --debug for the traceback)\n"
    outcome = classify([Step("pretrain", 2, 3.0, stderr)])
    assert outcome.status == "failed" and "reported as exit 2" in outcome.reason


def test_a_timeout_or_a_kill_is_a_failure():
    timed_out = classify([PRETRAIN_OK, Step("compress", None, 900.0, "", timed_out=True)])
    assert timed_out == ("failed", "timed out after 900 s", "compress")
    killed = classify([Step("pretrain", -9, 120.0, "epoch 1/1\n")])
    assert killed.status == "failed" and killed.reason.startswith("killed by signal 9")


def test_report_fields_read_units_ratio_verdict_and_every_parity_key():
    report = {"verdict": "within budget", "policy": {"layer1.0": 0.3, "layer2.0": 0.5, "fc": 0.0},
              "final": {"test_top1": 71.5, "latency": {"ratio": 0.47, "candidate_ms": 3.1},
                        "onnx": "run/model.onnx", "onnx_max_abs_diff": 2e-5,
                        "onnx_relative_diff": 1e-7, "parity": {"top1_agreement": 1.0}}}
    fields = report_fields(report)
    assert fields == {"units": 3, "excluded_units": 0, "latency_ratio": 0.47,
                      "verdict": "within budget",
                      "test_top1": 71.5,
                      "parity": {"onnx_max_abs_diff": 2e-5, "onnx_relative_diff": 1e-7,
                                 "parity.top1_agreement": 1.0}}
    # A report written after a failed export has no final latency: nothing is invented.
    partial = report_fields({"verdict": "export failed", "policy": {"a": 0.1}, "final": {}})
    assert partial["units"] == 1 and partial["latency_ratio"] is None and partial["parity"] == {}
    # Groups kept dense are counted and named (the row becomes `partial`).
    kept = report_fields({**report, "kept_dense": {"dw.0": "a concatenation", "fc2": "a gate"}})
    assert kept["excluded_units"] == 2
    assert kept["reason"] == "kept dense: dw.0: a concatenation; fc2: a gate"


def _row(model, status, compress_code=0, seconds=(30.0, 200.0)):
    return {"model": model, "params_m": 1.0, "status": status, "parity": {},
            "exit_codes": {"pretrain": 0, "compress": compress_code},
            "seconds": {"pretrain": seconds[0], "compress": seconds[1]}}


def _doc(rows):
    return {"rows": rows, "config": asdict(CoverageConfig()), "command": "python -m x",
            "date": "today", "cpu": "test cpu", "skipped": [{"model": "vit_h_14",
                                                             "params_m": 630.8}]}


def test_summary_counts_each_status_and_over_budget_exports():
    rows = [_row("a", "ok"), _row("b", "ok", compress_code=1), _row("c", "refused",
            seconds=(5.0, 0.0)), _row("d", "failed", compress_code=3),
            _row("e", "partial", compress_code=1)]
    s = summarise(rows)
    assert (s.ok, s.partial, s.refused, s.failed, s.over_budget, s.slow_refusals) == \
        (2, 1, 1, 1, 2, 0)
    assert not s.goal_met
    md = render_markdown(_doc(rows))
    assert "**2 ok, 1 partial, 1 refused, 1 failed**" in md
    assert "2 of the ok or partial exports measured over" in md
    assert "in seconds: **not met**" in md and "vit_h_14 (631 M)" in md
    assert md.count("\n| ") == 1 + len(rows)  # header + one line per row


def test_the_goal_is_met_only_without_failures_and_slow_refusals():
    fine = [_row("a", "ok"), _row("b", "refused", seconds=(4.0, 0.0))]
    assert summarise(fine).goal_met
    assert "in seconds: **met**" in render_markdown(_doc(fine))
    slow = [_row("a", "ok"), _row("b", "refused", seconds=(400.0, 0.0))]
    assert summarise(slow, refuse_within=60).slow_refusals == 1
    assert not summarise(slow, refuse_within=60).goal_met


def test_parameter_filter_on_real_builds():
    counts = {m: count_params(m) for m in ("squeezenet1_0", "vit_h_14")}
    assert counts["squeezenet1_0"].source == counts["vit_h_14"].source == "meta"
    # The counts are exact: the same as a plain 10-class build of the small one.
    plain = torchvision.models.get_model("squeezenet1_0", num_classes=10)
    assert counts["squeezenet1_0"].params == sum(p.numel() for p in plain.parameters())
    assert counts["vit_h_14"].params > 600e6
    assert split_by_size(counts, 100e6) == (["squeezenet1_0"], ["vit_h_14"])
    # A model that could not be counted is run anyway (the CLI will say why).
    assert split_by_size({"x": ParamCount(None, "error")}, 100e6) == (["x"], [])


def test_regnets_that_cannot_be_built_on_meta_are_counted_exactly_or_by_metadata():
    small = count_params("regnet_x_400mf")
    assert small.source == "cpu"
    plain = torchvision.models.get_model("regnet_x_400mf", num_classes=10)
    assert small.params == sum(p.numel() for p in plain.parameters())
    # 645 M parameters are not built: torchvision's recorded count already rules it out.
    huge = count_params("regnet_y_128gf", max_params=100e6)
    assert huge.source == "weights-metadata" and huge.params > 600e6


def test_every_output_of_the_cli_steps_lands_in_the_work_directory(tmp_path):
    args = cli_args(CoverageConfig(budget=0.5), "resnet18", tmp_path)
    for step, flags in (("pretrain", ["--models-dir"]),
                        ("compress", ["--models-dir", "--out", "--policies-dir", "--results-dir"])):
        argv = args[step]
        for flag in flags:
            assert argv[argv.index(flag) + 1].startswith(str(tmp_path)), (step, flag)
    compress = args["compress"]
    assert compress[compress.index("--latency-budget") + 1] == "0.5"
    assert compress[compress.index("--episodes") + 1] == "8"


@pytest.mark.parametrize("text,expected", [("", ""), ("a\n\n  b  \n\n", "b")])
def test_last_line_skips_blank_lines(text, expected):
    from benchmarks.coverage import last_line

    assert last_line(text) == expected


def test_every_command_that_made_rows_is_listed():
    doc = {**_doc([_row("a", "ok")]), "commands": ["python -m x --models a", "python -m x --rerun"]}
    md = render_markdown(doc)
    assert "Command: `python -m x --models a`" in md and "Command: `python -m x --rerun`" in md


# ---------------------------------------------------------------------------------------------
# Structure mode (benchmarks/coverage_structure.py): untrained models, one subprocess each.

HAND_BUILT = '''
import torch
from torch import nn


def cbr(i, o, k=3, g=1):
    return nn.Sequential(nn.Conv2d(i, o, k, 1, k // 2, groups=g, bias=False), nn.BatchNorm2d(o),
                         nn.ReLU())


class ConcatDepthwise(nn.Module):
    """Two branches concatenated into a depthwise conv: pruned by segment."""

    def __init__(self, num_classes):
        super().__init__()
        self.stem, self.a, self.b = cbr(3, 32), cbr(32, 32), cbr(32, 32)
        self.dw, self.pw = cbr(64, 64, g=64), cbr(64, 64, k=1)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.pw(self.dw(torch.cat([self.a(x), self.b(x)], 1)))
        return self.head(x.mean((2, 3)))


def make(num_classes=10):
    return ConcatDepthwise(num_classes)


class AddedIntoPart(nn.Module):
    """A residual added into part of a conv's channels: that group is kept dense."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.expand = nn.Conv2d(32, 48, 3, padding=1)
        self.mid = nn.Conv2d(48, 48, 3, padding=1)
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.expand(x)
        y = torch.cat([y[:, :32] + x, y[:, 32:]], 1)
        return self.head(torch.relu(self.mid(y)).mean((2, 3)))


def hang():
    import time
    time.sleep(600)


def crash():
    import os
    os._exit(7)
'''

ISSUE_FIELDS = ["model", "family", "status", "seconds_to_decide", "excluded_units",
                "excluded_macs_share", "reason", "latency_ratio", "verdict", "mode"]


@pytest.fixture
def hand_built(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(HAND_BUILT)
    return path


def _structure_rows(models, out, timeout=240):
    import json

    from benchmarks import coverage_structure

    argv = ["--models", *models, "--out", str(out), "--timeout", str(timeout)]
    assert coverage_structure.main(argv) == 0
    return {row["model"]: row for row in json.loads(out.read_text())}


def _assert_decided(row, status, excluded):
    assert list(row)[:len(ISSUE_FIELDS)] == ISSUE_FIELDS  # the issue's fields, first, in order
    assert row["status"] == status, row["reason"]
    assert row["mode"] == "structure" and row["verdict"] is None and row["family"] == "cnn"
    assert row["input_size"] == 32 and 0 <= row["seconds_to_decide"] < 60
    assert row["excluded_units"] == excluded and (row["excluded_macs_share"] > 0) == bool(excluded)
    assert row["units"] >= 1 and 0 < row["macs_ratio"] < 1
    assert 0 < row["latency_ratio"] < 2 and row["latency"]["batch_size"] >= 1
    assert row["parity"]["pruned_relative_diff"] < 1e-3


def test_structure_mode_decides_a_torchvision_cnn_and_hand_built_ok_and_partial(tmp_path,
                                                                                hand_built):
    concat, part = f"{hand_built}:make", f"{hand_built}:AddedIntoPart"
    rows = _structure_rows(["squeezenet1_1", concat, part], tmp_path / "rows.json")
    _assert_decided(rows["squeezenet1_1"], "ok", 0)
    assert rows["squeezenet1_1"]["reason"] is None
    _assert_decided(rows[concat], "ok", 0)  # the concat into a depthwise conv, by segment
    _assert_decided(rows[part], "partial", 1)
    assert rows[part]["reason"].startswith("1 kept dense (expand): torch-pruning maps")
    # The group kept dense sets stem's out channels (the residual adds them into expand's),
    # expand's, and so mid's in channels: every conv's MACs, all but the tiny head's.
    assert rows[part]["excluded_macs_share"] == pytest.approx(1.0, abs=0.01)


def test_structure_mode_resumes_and_a_hang_or_a_crash_costs_one_failed_row(tmp_path, hand_built):
    out = tmp_path / "rows.json"
    rows = _structure_rows([f"{hand_built}:hang", f"{hand_built}:crash"], out, timeout=20)
    hang, crash = rows[f"{hand_built}:hang"], rows[f"{hand_built}:crash"]
    assert hang["status"] == crash["status"] == "failed"
    assert hang["reason"] == "timed out after 20 s during build" and hang["step"] == "build"
    assert crash["reason"].startswith("worker exited 7 during build")
    before = out.read_text()
    _structure_rows([f"{hand_built}:hang"], out, timeout=20)  # already there: not run again
    assert out.read_text() == before


def test_structure_mode_on_a_timm_cnn(tmp_path):
    pytest.importorskip("timm")
    rows = _structure_rows(["timm:lcnet_050"], tmp_path / "rows.json")
    _assert_decided(rows["timm:lcnet_050"], "ok", 0)


def test_structure_mode_prunes_a_vit_exports_it_and_predicts_its_latency(tmp_path):
    row = _structure_rows(["vit_tiny"], tmp_path / "rows.json")["vit_tiny"]
    assert row["status"] == "ok" and row["family"] == "transformer", row["reason"]
    assert row["units"] == 18 and 0 < row["macs_ratio"] < 0.6  # 3 of 6 blocks removed
    assert row["parity"]["dense_relative_diff"] < 1e-3
    assert row["parity"]["pruned_relative_diff"] < 1e-3
    assert 0 < row["latency_ratio"] < 1 and 0 < row["latency"]["predicted"] < 1


def test_family_is_transformer_only_when_two_activations_are_multiplied():
    import torch
    from torch import nn

    from benchmarks.coverage_structure import family_of

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.qkv = nn.Conv2d(3, 8, 3), nn.Linear(8, 24)

        def forward(self, x):
            t = self.stem(x).flatten(2).transpose(1, 2)
            q, k, v = self.qkv(t).chunk(3, -1)
            return ((q @ k.transpose(1, 2)).softmax(-1) @ v).mean(1)

    class Gate(nn.Module):  # squeeze-excite: a product with an activation, but elementwise
        def __init__(self):
            super().__init__()
            self.stem, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 8)

        def forward(self, x):
            y = self.stem(x)
            return (y * self.fc(y.mean((2, 3))).sigmoid()[..., None, None]).mean((2, 3))

    x = torch.randn(1, 3, 16, 16)
    assert family_of(Attention(), x) == "transformer"
    assert family_of(Gate(), x) == "cnn"
    assert family_of(torchvision.models.resnet18(num_classes=10), x) == "cnn"
    assert family_of(torchvision.models.vit_b_16(image_size=32, num_classes=10),
                     torch.randn(1, 3, 32, 32)) == "transformer"


def test_structure_counts_leave_transformers_out_of_the_cnn_share():
    from benchmarks.coverage_structure import counts
    from benchmarks.coverage_structure import render_markdown as render_structure

    rows = [{"model": m, "family": "cnn", "status": s, "seconds_to_decide": t}
            for m, s, t in (("a", "ok", 1.0), ("b", "partial", 7.5), ("c", "refused", 2.0),
                            ("d", "failed", None))]
    rows.append({"model": "v", "family": "transformer", "status": "failed",
                 "seconds_to_decide": 30.0})
    c = counts(rows)
    assert c["cnn"] == {"ok": 1, "partial": 1, "refused": 1, "failed": 1}
    assert c["transformer"]["failed"] == 1 and c["cnn_share_ok_or_partial"] == 0.5
    assert c["slowest_seconds_to_decide"] == {"cnn": [7.5, "b"], "all": [30.0, "v"]}
    md = render_structure(rows, "t")
    assert "CNNs: 1 ok, 1 partial, 1 refused, 1 failed (50.0% ok or partial)" in md
    assert "Slowest decision: cnn 7.5 s (b); all 30.0 s (v)." in md
    assert [line.split(" | ")[0] for line in md.splitlines()[7:]] == ["| a", "| b", "| c", "| d",
                                                                     "| v"]  # CNNs first


def test_the_full_mode_rows_get_the_family_and_the_input_size_too():
    from benchmarks.coverage import family_and_size

    assert family_and_size("squeezenet1_0") == ("cnn", 32)
    # refuses 32 px; at torchvision's 63 px minimum its 6x6 adaptive pool cannot be exported
    assert family_and_size("alexnet") == ("cnn", 223)
