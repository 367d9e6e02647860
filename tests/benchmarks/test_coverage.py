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
