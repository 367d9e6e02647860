import math

import pytest
import torch

from compressor.errors import UserError
from compressor.training import train as train_module
from compressor.training.train import (
    REFERENCE_STEPS,
    LossWatch,
    TrainConfig,
    evaluate_top1,
    loss_diverged,
    make_optimizer,
    pretraining_warning,
    train,
    train_steps,
)
from compressor.zoo import models
from compressor.zoo.datasets import TensorSplit


def test_a_few_training_steps_lower_the_loss_on_real_data(fmnist):
    torch.manual_seed(0)
    model = models.build_model("resnet18", 10)
    config = TrainConfig(max_lr=0.05, augment=False, label_smoothing=0.0)
    optimizer = make_optimizer(model, config)
    batch = next(fmnist.train.batches(64, shuffle=True, seed=0))
    def loss() -> float:
        # Batch statistics (train mode): running BN stats are meaningless after 8 steps.
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model.train()(batch[0]), batch[1]).item()

    before = loss()
    train_steps(model, [batch] * 16, optimizer, None, config, torch.device("cpu"))
    after = loss()
    assert after < before * 0.7


def test_train_records_history_and_resumes_from_its_epoch_checkpoint(fmnist, tmp_path):
    small = fmnist.train.subset(256)
    test = fmnist.test.subset(200)
    config = TrainConfig(epochs=2, batch_size=64, max_lr=0.05)
    torch.manual_seed(0)
    model = models.build_model("mobilenet_v2", 10)
    result = train(model, small, test, config, torch.device("cpu"),
                   resume_path=tmp_path / "partial.pt", progress=False)
    assert [r.epoch for r in result.history] == [1, 2]
    assert all(r.test_top1 is not None for r in result.history)
    # A finished state on disk is picked up instead of training again.
    resumed = train(models.build_model("mobilenet_v2", 10), small, test, config,
                    torch.device("cpu"), resume_path=tmp_path / "partial.pt", progress=False)
    assert [r.test_top1 for r in resumed.history] == [r.test_top1 for r in result.history]


def test_evaluate_top1_counts_correct_predictions():
    class Constant(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 10)
            out[:, 3] = 1
            return out

    batches = [(torch.zeros(4, 3, 8, 8), torch.tensor([3, 3, 1, 2]))]
    assert evaluate_top1(Constant(), batches, torch.device("cpu"), channels_last=False) == 50.0


def test_loss_diverged_flags_nan_always_and_a_high_loss_only_after_the_warmup():
    assert loss_diverged(math.inf, 2.0, None, past_warmup=False)
    assert loss_diverged(math.nan, 2.0, 2.3, past_warmup=True)
    assert not loss_diverged(7.0, 7.0, 2.3, past_warmup=False)  # still warming up
    assert not loss_diverged(7.0, 6.8, 2.3, past_warmup=True)  # under 3x the start
    assert loss_diverged(7.0, 7.0, 2.3, past_warmup=True)
    assert not loss_diverged(7.0, 7.0, None, past_warmup=True)  # no starting loss yet


def test_loss_watch_counts_steps_and_names_a_lower_learning_rate():
    watch = LossWatch(max_lr=0.2, warmup_steps=0)
    for loss in [2.3] * REFERENCE_STEPS + [2.0, 9.0, 2.0]:  # one bad batch is not divergence
        watch.observe(loss)
    assert watch.reference == pytest.approx(2.3)
    with pytest.raises(UserError) as info:
        for _ in range(5):
            watch.observe(20.0)
    assert str(info.value).startswith("training diverged at step ")
    assert str(info.value).endswith("lower the learning rate, e.g. --lr 0.05")
    with pytest.raises(UserError, match=r"diverged at step 1 \(loss nan\)"):
        LossWatch(0.2).observe(math.nan)


def random_images(count: int, seed: int = 0) -> TensorSplit:
    """Image-shaped uint8 noise with random labels: enough to see a learning rate diverge."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 16, 16), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (count,), generator=gen)
    return TensorSplit(images, labels, [0.5] * 3, [0.25] * 3, 16)


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))


def test_a_diverging_learning_rate_stops_train_steps_and_train():
    split = random_images(64)
    config = TrainConfig(epochs=3, batch_size=16, max_lr=1e4, augment=False, channels_last=False)
    model = small_cnn()
    batches = list(split.batches(16)) * 4
    with pytest.raises(UserError, match=r"training diverged at step \d+ .*--lr 2.5e\+03"):
        train_steps(model, batches, make_optimizer(model, config), None, config,
                    torch.device("cpu"))
    with pytest.raises(UserError, match="training diverged at step"):
        train(small_cnn(), split, None, config, torch.device("cpu"), progress=False)
    # The same run at a sane learning rate trains through.
    calm = TrainConfig(epochs=3, batch_size=16, max_lr=0.05, augment=False, channels_last=False)
    assert len(train(small_cnn(), split, None, calm, torch.device("cpu"),
                     progress=False).history) == 3


def test_a_learning_rate_that_diverges_is_retried_lower_from_the_same_weights(caplog):
    split = random_images(64)
    config = TrainConfig(epochs=3, batch_size=16, max_lr=100.0, augment=False,
                         channels_last=False)
    model, seen = small_cnn(), []
    start = [p.detach().clone() for p in model.parameters()]
    real = train_module.train_once

    def spy(model, *args, **kwargs):  # the real run, recording the weights each attempt starts at
        seen.append([p.detach().clone() for p in model.parameters()])
        return real(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "train_once", spy)
        result = train(model, split, None, config, torch.device("cpu"), progress=False)
    assert [a["max_lr"] for a in result.attempts] == [100.0, 25.0]
    assert "diverged at step" in result.attempts[0]["diverged"]
    assert result.attempts[1]["diverged"] is None and len(result.history) == 3
    assert all(torch.equal(a, b) for weights in seen for a, b in zip(weights, start, strict=True))
    assert "retrying from the same weights at lr 25" in caplog.text


def test_a_model_with_auxiliary_heads_trains_on_its_main_output():
    torch.manual_seed(0)
    model = models.build_model("googlenet", 10)
    config = TrainConfig(max_lr=0.01, augment=False)
    batch = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    loss, _ = train_steps(model, [batch], make_optimizer(model, config), None, config,
                          torch.device("cpu"))
    assert math.isfinite(loss)


def test_pretraining_warning_rule():
    assert pretraining_warning(12.0, 10).startswith("pretraining reached only 12.0% test top-1")
    assert pretraining_warning(32.4, 10) is not None and pretraining_warning(32.5, 10) is None
    assert pretraining_warning(60.0, 2) is not None and pretraining_warning(70.0, 2) is None
    assert pretraining_warning(30.0, 1000) is None  # 1000 classes: the line is at 25.1%
