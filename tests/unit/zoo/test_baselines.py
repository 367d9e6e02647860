"""Baselines that reload: state-dict versions kept, a pretrain that warns when it learned little."""

from __future__ import annotations

import math

import pytest
import torch

from compressor.errors import UserError
from compressor.training.train import TrainConfig
from compressor.zoo import baselines, models
from compressor.zoo.datasets import DataConfig, Dataset


def test_mnasnet_baseline_round_trips_with_its_state_dict_versions(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("mnasnet0_5", 10).eval()
    path = models.save_baseline(tmp_path / "m.pt", model, "mnasnet0_5", 10, {"input_size": 32})
    # The file still loads with weights_only=True (what read_checkpoint uses).
    blob = torch.load(path, weights_only=True)
    assert blob["state_dict_versions"][""] == {"version": 2}
    loaded, _ = models.load_baseline(path, "mnasnet0_5", 10)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded.eval()(x))


def test_a_baseline_without_the_versions_mnasnet_needs_is_a_user_error(tmp_path):
    model = models.build_model("mnasnet0_5", 10)
    path = models.save_baseline(tmp_path / "m.pt", model, "mnasnet0_5", 10, {})
    blob = torch.load(path, weights_only=True)
    del blob["state_dict_versions"]  # what files written before the fix hold
    torch.save(blob, path)
    with pytest.raises(UserError, match="pretrain it again"):
        models.load_baseline(path, "mnasnet0_5", 10)


@pytest.fixture(scope="module")
def tiny_dataset(fmnist) -> Dataset:
    return Dataset("fashion-mnist", fmnist.train.subset(64), fmnist.search.subset(32),
                   fmnist.test.subset(64), 10, "tiny-slice")


def test_pretrain_saves_a_reloadable_baseline_and_warns_when_it_learned_little(
        tiny_dataset, tmp_path, caplog):
    config = TrainConfig(epochs=1, batch_size=32, max_lr=0.05)
    path = tmp_path / "googlenet.pt"
    with caplog.at_level("WARNING", logger="compressor.zoo.baselines"):
        model, meta = baselines.pretrain("googlenet", tiny_dataset, DataConfig(), config, path,
                                         torch.device("cpu"), progress=False)
    assert meta["test_top1"] < 32.5 and "pretraining reached only" in meta["warning"]
    assert meta["warning"] in caplog.text
    loaded, loaded_meta = models.load_baseline(path, "googlenet", 10)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded.eval()(x))
    assert loaded_meta["test_top1"] == meta["test_top1"]


OVERFLOWS_IN_EVAL = '''
import torch
from torch import nn


class OverflowsInEval(nn.Module):
    """Trains like a linear classifier; in eval mode its activations overflow to inf (as a
    diverged network's do through BatchNorm's running statistics)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.conv(x).mean((2, 3))
        if not self.training:
            x = x * 1e30 * 1e30
        return self.head(x)


def make(num_classes=10):
    return OverflowsInEval(num_classes)
'''


def test_a_baseline_with_non_finite_eval_outputs_is_refused_and_not_saved(tiny_dataset, tmp_path):
    factory = tmp_path / "overflow.py"
    factory.write_text(OVERFLOWS_IN_EVAL)
    path = tmp_path / "models" / "overflow.pt"
    path.parent.mkdir()
    with pytest.raises(UserError, match="NaN or infinite outputs .* lower --lr"):
        baselines.pretrain(f"{factory}:make", tiny_dataset, DataConfig(),
                           TrainConfig(epochs=1, batch_size=32, max_lr=0.05), path,
                           torch.device("cpu"), progress=False)
    assert list(path.parent.iterdir()) == []  # neither the baseline nor a partial to resume


def test_finite_outputs_pass_the_check(fmnist_batch):
    model = models.build_model("resnet18", 10)
    models.check_finite_outputs(model.train(), fmnist_batch[0], "resnet18")
    assert model.training  # the caller's mode is restored


def test_a_causal_lm_pretrains_caches_its_perplexity_and_corpus_and_is_reused(stdlib_text,
                                                                               tmp_path):
    path = models.baseline_path(tmp_path, "gpt_tiny", baselines.TEXT_DATASET)
    assert path.name == "gpt_tiny-stdlib.pt"
    model, meta = baselines.pretrain_lm("gpt_tiny", stdlib_text, path, torch.device("cpu"),
                                        steps=4, eval_windows=64)
    assert meta["steps"] == 4 and meta["data_fingerprint"] == stdlib_text.fingerprint
    assert meta["python_version"] == stdlib_text.python_version and meta["task"] == "text"
    # Bytes: bits per byte is the cross-entropy in bits; perplexity its exp in nats.
    assert meta["test_bits_per_byte"] == pytest.approx(meta["test_cross_entropy"] / math.log(2))
    assert meta["test_perplexity"] == pytest.approx(math.exp(meta["test_cross_entropy"]))
    assert 0 <= meta["test_next_byte_top1"] <= 100 and meta["train_minutes"] > 0
    assert meta["test_perplexity"] < 256  # four steps already beat a uniform guess over bytes
    # The cache is reused (same weights, no training) and loads with weights_only=True.
    again, again_meta = baselines.load_or_pretrain_lm("gpt_tiny", stdlib_text, tmp_path,
                                                      torch.device("cpu"))
    tokens = next(stdlib_text.test.windows(2, context=128))[0]
    with torch.no_grad():
        assert torch.equal(model(tokens), again.eval()(tokens))
    assert again_meta["test_perplexity"] == meta["test_perplexity"]


def test_a_cached_causal_lm_of_another_corpus_is_refused(stdlib_text, tmp_path):
    path = models.baseline_path(tmp_path, "gpt_tiny", baselines.TEXT_DATASET)
    models.save_baseline(path, models.build_model("gpt_tiny", 256), "gpt_tiny", 256,
                         {**baselines.text_metadata(stdlib_text), "data_fingerprint": "other"})
    with pytest.raises(UserError, match="data_fingerprint=other"):
        baselines.load_or_pretrain_lm("gpt_tiny", stdlib_text, tmp_path, torch.device("cpu"))
