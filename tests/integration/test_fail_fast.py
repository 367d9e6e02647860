"""Refusals before any training: bad models, fixed-size models, foreign policies, impossible budgets.

Each refusal must come before a single training step (the dense pretraining, a fine-tune, a
recovery), so the training entry points record their calls and must record none. The factory
`--model FILE.py:make` is also run to the end once: pretrain, then compress.
"""

import json

import pytest
import torch

from compressor.cli import main
from compressor.errors import EXIT_BAD_INPUT, EXIT_INTERNAL
from compressor.io import policies
from compressor.pruning.checkpoints import load_pruned_checkpoint
from compressor.training import recovery
from compressor.training import train as training
from compressor.zoo import baselines, models

SLICE = ["--train-size", "256", "--test-size", "128", "--search-size", "500"]
TINY = '''
from torch import nn


def make(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def not_a_module():
    return "resnet18"
'''


@pytest.fixture
def training_calls(monkeypatch):
    """Every call to a training entry point, by name; the call itself is refused."""
    calls = []

    def refuse(name):
        def record(*args, **kwargs):
            calls.append(name)
            raise RuntimeError(f"{name} ran before the refusal")
        return record

    monkeypatch.setattr(baselines, "pretrain", refuse("pretrain"))
    monkeypatch.setattr(training, "train_steps", refuse("train_steps"))
    monkeypatch.setattr(recovery, "finetune", refuse("finetune"))
    return calls


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny_model.py"
    path.write_text(TINY)
    return path


def _compress(models_dir, model, *extra):
    return ["compress", "--model", model, "--models-dir", str(models_dir), *SLICE,
            "--latency-batch-size", "2", *extra]


def _refused(argv, capsys, calls):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert calls == [], f"training ran before the refusal: {calls}"
    assert code == EXIT_BAD_INPUT, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_a_valid_request_does_reach_pretraining(tmp_path, capsys, training_calls, tiny):
    """The recorder sees training: the zero counts below are not vacuous."""
    code = main(_compress(tmp_path / "models", f"{tiny}:make", "--flops-budget", "0.8"))
    assert training_calls == ["pretrain"] and code == EXIT_INTERNAL
    assert "pretrain ran before the refusal" in capsys.readouterr().err


@pytest.fixture
def untraceable_shufflenet(monkeypatch):
    """ShuffleNetV2 with its channel shuffle written as a permute: torch-pruning's reshape rule
    divides by zero on it (the transpose form is mapped and traces)."""
    from torchvision.models import shufflenetv2

    def permuted_shuffle(x, groups):
        n, c, h, w = x.shape
        return x.view(n, groups, c // groups, h, w).permute(0, 2, 1, 3, 4).contiguous() \
            .view(n, c, h, w)

    monkeypatch.setattr(shufflenetv2, "channel_shuffle", permuted_shuffle)


@pytest.mark.usefixtures("untraceable_shufflenet")
def test_an_untraceable_model_is_refused_before_pretraining(tmp_path, capsys, training_calls):
    err = _refused(_compress(tmp_path / "models", "shufflenet_v2_x0_5", "--latency-budget", "0.5"),
                   capsys, training_calls)
    assert "torch-pruning cannot trace ShuffleNetV2" in err and "choose another model" in err
    assert not list((tmp_path / "models").glob("*.pt"))


@pytest.mark.usefixtures("untraceable_shufflenet")
def test_pretrain_refuses_an_untraceable_model_before_training(tmp_path, capsys, training_calls):
    err = _refused(["pretrain", "--model", "shufflenet_v2_x0_5", "--models-dir",
                    str(tmp_path / "models"), *SLICE], capsys, training_calls)
    assert "torch-pruning cannot trace ShuffleNetV2" in err
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").glob("*.pt"))


def test_a_fixed_size_model_is_refused_naming_its_input_size(tmp_path, capsys, training_calls):
    err = _refused(_compress(tmp_path / "models", "vit_b_16", "--latency-budget", "0.5"),
                   capsys, training_calls)
    assert "--input-size 224" in err


def test_apply_refuses_a_policy_made_for_another_model_before_pretraining(tmp_path, capsys,
                                                                          training_calls):
    policy = policies.write_policy(
        tmp_path / "resnet18.json", model="resnet18", dataset="fashion-mnist", input_size=32,
        policy={"conv1": 0.5}, units=["conv1", "layer1.0.conv1"], budget={"latency": 0.5},
        metrics={})
    err = _refused(["apply", "--model", "mobilenet_v2", "--models-dir", str(tmp_path / "models"),
                    *SLICE, "--policy", str(policy), "--out", str(tmp_path / "applied")],
                   capsys, training_calls)
    assert "made for resnet18, not mobilenet_v2" in err
    assert not (tmp_path / "applied").exists()


def test_an_impossible_budget_is_refused_before_pretraining(tmp_path, capsys, training_calls,
                                                            tiny):
    err = _refused(_compress(tmp_path / "models", f"{tiny}:make", "--latency-budget", "0.001"),
                   capsys, training_calls)
    assert "reachable minimum" in err


@pytest.mark.parametrize("spec, message", [
    ("missing.py:make", "does not exist"),
    ("{tiny}:nothing", "has no function 'nothing'"),
    ("{tiny}:not_a_module", "returned str, not a torch.nn.Module"),
])
def test_a_bad_model_factory_is_refused(tmp_path, capsys, training_calls, tiny, spec, message):
    spec = spec.format(tiny=tiny) if "{tiny}" in spec else str(tmp_path / spec)
    err = _refused(_compress(tmp_path / "models", spec, "--flops-budget", "0.5"), capsys,
                   training_calls)
    assert message in err


def test_a_model_factory_pretrains_and_compresses(tmp_path, tiny):
    spec, models_dir = f"{tiny}:make", tmp_path / "models"
    assert main(["pretrain", "--model", spec, "--epochs", "1", "--models-dir", str(models_dir),
                 *SLICE]) == 0
    baseline = models.baseline_path(models_dir, spec, "fashion-mnist")
    assert baseline.exists()
    out = tmp_path / "run"
    assert main(_compress(models_dir, spec, "--flops-budget", "0.8", "--method", "uniform",
                          "--search-images", "100", "--bn-batches", "2", "--candidates", "1",
                          "--candidate-steps", "1", "--probe-every", "0", "--out", str(out),
                          "--policies-dir", str(tmp_path / "policies"),
                          "--results-dir", str(tmp_path / "results"))) == 0
    for name in ("model.onnx", "dense.onnx", "model.pt"):
        assert (out / name).exists(), name
    report = json.loads((tmp_path / "results" / "run" / "report.json").read_text())
    assert report["model"] == spec and report["checks"]["flops"]["ok"]
    policy = json.loads((tmp_path / "policies" / "run.json").read_text())
    assert policy["model"] == spec and len(policy["policy"]) == 2
    # The checkpoint rebuilds from the factory spec it records.
    pruned, _ = load_pruned_checkpoint(out / "model.pt")
    assert pruned(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
