"""The CLI in-process, end to end on a small slice of real data, with a small real baseline."""

import json
from dataclasses import asdict, fields, is_dataclass

import pytest
import torch

from compressor.cli import main, parse
from compressor.errors import UserError
from compressor.io.policies import read_round_to
from compressor.io.report import RunReport
from compressor.pipeline.compress import CompressConfig
from compressor.pruning import PruningConfig
from compressor.pruning.checkpoints import load_pruned_checkpoint
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
    # The run's saved config gives the same settings back (`--config`; the flags restate none).
    ran = parse(_compress_args(workdir, out)).command.config.resolved()
    assert parse(["compress", "--config", str(out / "config.json")]).command.config == ran
    policy = json.loads((workdir / "policies" / "run.json").read_text())
    assert policy["model"] == "resnet18" and len(policy["policy"]) == 12
    assert policy["round_to"] == PruningConfig().round_to
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert all(e["latency_predicted"] <= 0.6 for e in episodes)
    assert any("latency_measured" in e for e in episodes)
    # The probes' bias against the prediction, as each probed episode logged it so far and as
    # the report gives it for the run.
    probed = [e for e in episodes if "latency_measured" in e and not e["cached"]]
    assert probed[-1]["probe_bias_median"] == pytest.approx(report["probe_bias_median"])
    # The verdict is the fit's measurement of the winner's shapes, not a second window.
    winner = next(c for c in report["candidates"] if c["chosen"])
    assert report["final"]["latency_from_fit"] is True
    assert report["final"]["latency"]["ratio"] == winner["latency_measured"]
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
    assert read_round_to(recorded) == 32
    (tmp_path / "bare.json").write_text(json.dumps({"policy": {}}))
    assert read_round_to(tmp_path / "bare.json") is None
    assert read_round_to(tmp_path / "missing.json") is None

    def apply(policy, *flags):
        return parse(["apply", "--policy", str(policy), "--out", "o", *flags]).command.pruning

    assert apply(recorded, "--round-to", "4").round_to == 4
    assert apply(recorded).round_to == 32
    assert apply(tmp_path / "bare.json").round_to == PruningConfig().round_to


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.replace("│", " ").split())  # the boxes unwrapped


def _flags(config, prefix="--"):
    """Every field of a config as its flag, sections by their dotted prefix."""
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            yield from _flags(value, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name.replace("_", "-")


def test_compress_help_is_grouped_by_config_section_with_the_field_docstrings(capsys):
    text = _help(["compress"], capsys)
    for section in ("data", "budget", "pruning", "evaluator", "loop", "agent", "final",
                    "quantize", "probe", "distributed", "text", "lm"):
        assert f"{section} options" in text
    # The field's docstring is its help; today's name comes first, then the section's.
    assert "--margin FLOAT, --budget.margin FLOAT The search aims this fraction under" in text
    # Every config field has its flag, but two set from another field: the probe's input size
    # (the data's --input-size) and the loop's agent kind (--method).
    hidden = {"--probe.input-size", "--loop.agent"}
    assert [f for f in _flags(CompressConfig()) if f not in text] == sorted(hidden)
    # Registries give the choices.
    assert "--agent {ddpg,random,greedy,uniform,global}, --method" in text
    assert "--reward {error,error-log-flops,cross-entropy}" in text
    top = _help([], capsys)
    for command in ("models", "pretrain", "evaluate", "compress", "apply", "latency", "check"):
        assert f"• {command}" in top


def test_todays_flag_names_set_the_same_fields_as_the_new_ones():
    old = parse(["compress", "--latency-budget", "0.5", "--episodes", "80", "--margin", "0.1",
                 "--agent", "random", "--no-fit", "--ignore", "fc", "--ignore", "layer4.1.conv2",
                 "--int8-format", "qdq-u8s8", "--latency-batch-size", "2", "--final-epochs", "2",
                 "--search-images", "300", "--dataset", "cifar10", "--workers", "2"]).command.config
    new = parse(["compress", "--budget.latency", "0.5", "--loop.episodes", "80",
                 "--budget.margin", "0.1", "--method", "random", "--final.no-fit",
                 "--pruning.ignored-layers", "fc", "--pruning.ignored-layers", "layer4.1.conv2",
                 "--quantize.format", "qdq-u8s8", "--probe.batch-size", "2", "--final.epochs", "2",
                 "--evaluator.search-images", "300", "--data.dataset", "cifar10",
                 "--distributed.workers", "2"]).command.config
    assert old == new
    assert (old.budget.latency, old.loop.episodes, old.method, old.final.fit) == (0.5, 80, "random",
                                                                                  False)
    assert old.pruning.ignored_layers == ("fc", "layer4.1.conv2")
    assert CompressConfig() == parse(["compress"]).command.config  # one place per default


def test_config_fields_without_a_flag_before_are_settable():
    config = parse(["compress", "--final.recheck-rounds", "4", "--probe.runs", "7",
                    "--agent.noise-floor", "0.1", "--agent.warm-start"]).command.config
    assert (config.final.recheck_rounds, config.probe.runs) == (4, 7)
    assert config.agent.noise_floor == 0.1 and config.agent.warm_start
    # The older spelling of agent settings still works, and says what is wrong in one line.
    older = parse(["compress", "--agent-option", "noise_floor=0.1", "--agent-option",
                   "warm_start=true"]).command.run_config
    assert older.agent == config.agent


def test_a_config_file_gives_the_defaults_and_flags_win(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("budget:\n  latency: 0.4\nloop:\n  episodes: 30\nfinal:\n  recheck_rounds: 5\n"
                    "pruning:\n  ignored_layers: [fc]\n")
    config = parse(["compress", "--config", str(path), "--episodes", "40"]).command.config
    assert (config.budget.latency, config.loop.episodes, config.final.recheck_rounds) == (0.4, 40, 5)
    assert config.pruning.ignored_layers == ("fc",)
    # A resolved config saved as a run directory's config.json loads back as it was.
    resolved = parse(["compress", "--latency-budget", "0.5", "--agent.sensitivity", "--ignore",
                      "fc"]).command.config.resolved()
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"search": {}, "full": asdict(resolved), "command": []}))
    assert parse(["compress", f"--config={saved}"]).command.config == resolved
    path.write_text("budget:\n  latencyy: 0.4\n")
    assert main(["compress", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown setting budget.latencyy" in err and len(err.splitlines()) == 1


def test_debug_is_taken_before_or_after_the_command(capsys):
    assert main(["compress", "--margin", "0.7"]) == 2  # refused while parsing: still one line
    assert capsys.readouterr().err.strip() == "error: --margin 0.7 must be in [0, 0.5)"
    for argv in (["compress", "--margin", "0.7", "--debug"], ["--debug", "compress", "--margin",
                                                             "0.7"]):
        with pytest.raises(UserError, match="--margin 0.7"):
            main(argv)
    assert parse(["models", "--debug"]).debug and parse(["--debug", "models"]).debug
    assert parse(["models", "--torch-threads", "2"]).torch_threads == 2
    assert main(["models", "--debug"]) == 0
    assert "resnet18" in capsys.readouterr().out.split()


ADDED_INTO_PART = '''
import torch
from torch import nn


class AddedIntoPart(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.expand = nn.Conv2d(32, 48, 3, padding=1)
        self.mid = nn.Conv2d(48, 48, 3, padding=1)
        self.head = nn.Linear(48, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.expand(x)
        y = torch.cat([y[:, :32] + x, y[:, 32:]], 1)  # a residual into part of the channels
        return self.head(torch.relu(self.mid(y)).mean((2, 3)))
'''


def test_units_lists_the_units_and_the_groups_kept_dense_with_why(tmp_path, capsys):
    factory = tmp_path / "net.py"
    factory.write_text(ADDED_INTO_PART)
    assert main(["units", f"{factory}:AddedIntoPart", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [u["name"] for u in listing["units"]] == ["mid"]
    assert [e["name"] for e in listing["kept_dense"]] == ["expand"]
    assert "torch-pruning maps" in listing["kept_dense"][0]["reason"]
    assert 0 < listing["kept_dense"][0]["macs_share"] <= 1
    assert main(["units", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("resnet18: 12 units searched, 0 kept dense") and "layer1.0.conv1" in out


def test_the_embedded_vit_pretrains_by_its_recipe_compresses_and_its_policy_applies(tmp_path):
    root = tmp_path
    assert main(["pretrain", "--model", "vit_tiny", "--epochs", "1", "--models-dir",
                 str(root / "models"), *SLICE]) == 0
    _, meta = models.load_baseline(root / "models" / "vit_tiny-fashion-mnist.pt", "vit_tiny", 10)
    assert meta["train_config"]["optimizer"] == "adamw" and meta["train_config"]["epochs"] == 1
    out = root / "run"
    args = [a if a != "resnet18" else "vit_tiny" for a in _compress_args(root, out)]
    code = main(args)
    report = json.loads((root / "results" / "run" / "report.json").read_text())
    assert code == (0 if report["verdict"] == "within budget" else 1)
    policy = json.loads((root / "policies" / "run.json").read_text())
    assert len(policy["policy"]) == 18  # 6 blocks: block, heads, mlp each
    assert any(name.endswith("self_attention") for name in policy["policy"])
    parity = report["final"]["parity"]
    assert parity["top1_agreement"] >= 0.9
    applied = root / "applied"
    assert main(["apply", "--model", "vit_tiny", "--models-dir", str(root / "models"), *SLICE,
                 "--policy", str(root / "policies" / "run.json"), "--out", str(applied),
                 "--latency-batch-size", "2"]) == 0
    applied_report = RunReport.from_dict(json.loads((applied / "report.json").read_text()))
    assert applied_report.policy == policy["policy"]
    assert applied_report.final.parity.top1_agreement >= 0.9


def test_the_embedded_gpt_pretrains_on_the_stdlib_compresses_by_perplexity_and_exports(tmp_path):
    """gpt_tiny end to end on a 300 kB slice of the standard library: a few pretraining steps,
    a short ddpg search rewarded by minus validation cross-entropy, an LM-loss fine-tune, and
    the verified ONNX export of token ids timed as a prefill at batch 1."""
    root, text = tmp_path, ["--text.max-bytes", "300000"]
    assert main(["pretrain", "--model", "gpt_tiny", "--steps", "5", "--models-dir",
                 str(root / "models"), *text]) == 0
    _, meta = models.load_baseline(root / "models" / "gpt_tiny-stdlib.pt", "gpt_tiny", 256)
    assert meta["steps"] == 5 and meta["test_perplexity"] > 1 and meta["python_version"]
    out = root / "run"
    code = main(["compress", "--model", "gpt_tiny", "--models-dir", str(root / "models"), *text,
                 "--latency-budget", "0.6", "--episodes", "3", "--bn-batches", "1",
                 "--episode-finetune-steps", "2", "--candidates", "1", "--candidate-steps", "2",
                 "--probe-every", "0", "--margin", "0.1", "--lm-eval-windows", "8",
                 "--lm-test-windows", "16", "--out", str(out), "--policies-dir",
                 str(root / "policies"), "--results-dir", str(root / "results")])
    report = json.loads((root / "results" / "run" / "report.json").read_text())
    assert code == (0 if report["verdict"] == "within budget" else 1)
    assert report["dataset"] == "stdlib" and report["config"]["reward"] == "cross-entropy"
    assert report["config"]["probe"]["batch_size"] == 1
    lm = report["language_model"]
    assert lm["dense_test_perplexity"] > 1 and lm["test_perplexity"] > 1
    assert lm["test_tokens"] == 16 * 128 and report["headline"].startswith("test perplexity")
    assert report["final"]["parity"]["top1_agreement"] >= 0.9
    assert report["final"]["latency"]["settings"]["input_shape"] == [128]
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert all(e["reward"] == pytest.approx(e["top1"]) and e["top1"] < 0 for e in episodes)
    policy = json.loads((root / "policies" / "run.json").read_text())
    assert len(policy["policy"]) == 12  # 4 blocks: block, heads, mlp each
    assert "perplexity" in (root / "results" / "run" / "report.md").read_text()
    # The pruned LM reloads from its recorded shapes on token ids (tensors only).
    reloaded = load_pruned_checkpoint(out / "model.pt").model
    ids = torch.zeros(1, 128, dtype=torch.long)
    assert reloaded(ids).shape == (1, 128, 256)
    # The policy applies again to the cached baseline, scored and timed the same way.
    applied = root / "applied"
    assert main(["apply", "--model", "gpt_tiny", "--models-dir", str(root / "models"), *text,
                 "--policy", str(root / "policies" / "run.json"), "--out", str(applied),
                 "--lm-test-windows", "16"]) == 0
    applied_report = RunReport.from_dict(json.loads((applied / "report.json").read_text()))
    assert applied_report.policy == policy["policy"]
    assert applied_report.language_model["test_tokens"] == 16 * 128
    assert applied_report.final.parity.top1_agreement >= 0.9


def test_the_embedded_gpt_compresses_to_a_decode_budget_judged_on_its_kv_cache_export(tmp_path):
    """--decode-budget: the wall prices policies by decode tables (a coarse grid, few runs),
    the fit rescales the candidate against the measured decode ratio, and the verdict is the
    shipped model's KV-cache export (verified: greedy tokens identical) timed per token."""
    root, text = tmp_path, ["--text.max-bytes", "300000"]
    assert main(["pretrain", "--model", "gpt_tiny", "--steps", "5", "--models-dir",
                 str(root / "models"), *text]) == 0
    code = main(["compress", "--model", "gpt_tiny", "--models-dir", str(root / "models"), *text,
                 "--decode-budget", "0.5", "--decode-grid-points", "2", "--decode-table-runs",
                 "20", "--episodes", "3", "--bn-batches", "1", "--episode-finetune-steps", "2",
                 "--candidates", "1", "--candidate-steps", "2", "--probe-every", "0",
                 "--margin", "0.1", "--lm-eval-windows", "8", "--lm-test-windows", "16",
                 "--out", str(root / "run"), "--policies-dir", str(root / "policies"),
                 "--results-dir", str(root / "results")])
    report = json.loads((root / "results" / "run" / "report.json").read_text())
    decode = report["final"]["decode"]
    check = report["checks"]["decode"]
    assert check["limit"] == 0.5 and check["value"] == decode["decode"]["ratio"]
    assert code == (0 if check["ok"] else 1)
    assert report["verdict"] == ("within budget" if check["ok"] else "OVER BUDGET")
    assert report["search_target"] == {"decode": pytest.approx(0.45)}
    assert decode["decode"]["settings"]["phase"] == "decode"
    assert decode["decode"]["settings"]["past"] == 96
    assert decode["parity"]["greedy_agreement"] == 1.0 and decode["parity"]["greedy_steps"] == 32
    assert (root / "run" / "model.decoder.onnx").exists()
    assert report["candidates"][0]["fit_kind"] == "decode"
    assert "decode of one token after 96 cached" in report["headline"]
    assert "decode ratio (paired)" in (root / "results" / "run" / "report.md").read_text()
    assert list((root / "models" / "latency").glob("gpt_tiny-decode-*.json"))


def test_units_lists_the_embedded_gpts_units_at_its_context(capsys):
    assert main(["units", "gpt_tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpt_tiny: 12 units searched, 0 kept dense") and "128 tokens" in out
    assert "blocks.3.attn" in out


def test_an_image_dataset_for_the_embedded_gpt_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="drop --dataset cifar10"):
        main(["--debug", "compress", "--model", "gpt_tiny", "--dataset", "cifar10",
              "--models-dir", str(tmp_path), "--latency-budget", "0.5"])
