"""Recovery: BatchNorm recalibration and the short fine-tune, on real Fashion-MNIST batches."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from compressor.pruning import PruningConfig, apply_policy
from compressor.training.recovery import (
    RecoveryConfig,
    distillation_loss,
    finetune,
    recalibrate_bn,
    recover,
)
from compressor.training.train import evaluate_top1

CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8, momentum=0.3), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_recalibration_is_the_exact_average_and_restores_momentum(fmnist_loader):
    model = small_net().train()
    batches = fmnist_loader[:3]
    recalibrate_bn(model, batches, num_batches=2, device=CPU, channels_last=False)
    bn = model[1]
    assert not model.training and not bn.training
    assert bn.momentum == 0.3 and model[4].momentum == 0.1
    assert int(bn.num_batches_tracked) == 2
    # momentum None: the running mean is the plain average of the two batches' means.
    with torch.no_grad():
        means = [model[0](x).mean(dim=(0, 2, 3)) for x, _ in batches[:2]]
    torch.testing.assert_close(bn.running_mean, (means[0] + means[1]) / 2)


def test_recalibration_changes_the_stats_of_a_pruned_network(fmnist_loader):
    torch.manual_seed(0)
    dense = torchvision.models.get_model("mobilenet_v2", num_classes=10).eval()
    pruned = apply_policy(dense, {"features.1.conv.0.0": 0.5}, torch.zeros(1, 3, 32, 32),
                          PruningConfig())
    bn = pruned.features[1].conv[0][1]  # after the depthwise conv the unit pruned
    before = bn.running_var.clone()
    assert recalibrate_bn(pruned, fmnist_loader, num_batches=4, device=CPU) == 4
    assert not torch.allclose(bn.running_var, before)
    assert all(m.momentum == 0.1 for m in pruned.modules() if isinstance(m, nn.BatchNorm2d))


def test_recalibration_without_batches_leaves_the_stats_alone():
    model = small_net()
    before = model[1].running_mean.clone()
    with pytest.warns(UserWarning, match="recalibrated on 0 batches instead of 5"):
        assert recalibrate_bn(model, [], num_batches=5, device=CPU) == 0
    assert torch.equal(model[1].running_mean, before) and model[1].momentum == 0.3


def test_a_few_finetune_steps_lower_the_loss_on_a_fixed_batch(fmnist_loader):
    model = small_net()
    batch = fmnist_loader[0]
    config = RecoveryConfig(lr=0.1, label_smoothing=0.0, weight_decay=0.0)

    def loss() -> float:
        with torch.no_grad():
            return nn.functional.cross_entropy(model.eval()(batch[0]), batch[1]).item()

    recalibrate_bn(model, [batch], 1, CPU)
    before = loss()
    losses = finetune(model, [batch], 15, config, CPU)  # one batch, cycled 15 times
    assert len(losses) == 15 and not model.training
    assert loss() < before and losses[-1] < losses[0]


def test_finetune_replays_a_one_shot_iterator(fmnist_loader):
    model = small_net()
    losses = finetune(model, iter(fmnist_loader[:2]), 5, RecoveryConfig(), CPU)
    assert len(losses) == 5
    assert finetune(model, [], 0, RecoveryConfig(), CPU) == []
    with pytest.raises(ValueError, match="at least one batch"):
        finetune(model, [], 3, RecoveryConfig(), CPU)


def test_recover_recalibrates_then_finetunes_a_pruned_resnet(fmnist_loader):
    torch.manual_seed(0)
    dense = torchvision.models.get_model("resnet18", num_classes=10).eval()
    pruned = apply_policy(dense, {"conv1": 0.5, "layer1.0.conv1": 0.5},
                          torch.zeros(1, 3, 32, 32), PruningConfig())
    config = RecoveryConfig(bn_batches=6, finetune_steps=2)
    losses = recover(pruned, fmnist_loader, config, CPU)
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert 0.0 <= evaluate_top1(pruned, fmnist_loader[6:], CPU) <= 100.0


def test_distillation_loss_is_cross_entropy_without_a_share_and_zero_on_the_teacher():
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    plain = RecoveryConfig(distill=0.0, label_smoothing=0.0)
    assert torch.allclose(distillation_loss(logits, labels, torch.randn(8, 10), plain),
                          nn.functional.cross_entropy(logits, labels))
    only_teacher = RecoveryConfig(distill=1.0)
    assert float(distillation_loss(logits, labels, logits, only_teacher)) == pytest.approx(0, abs=1e-6)
    assert float(distillation_loss(logits, labels, torch.randn(8, 10), only_teacher)) > 0


def test_a_distilled_finetune_moves_the_student_toward_the_teacher():
    torch.manual_seed(0)
    teacher, student = nn.Linear(16, 10), nn.Linear(16, 10)
    x, labels = torch.randn(64, 16), torch.randint(0, 10, (64,))
    config = RecoveryConfig(distill=1.0, lr=0.1, channels_last=False)

    def gap() -> float:
        with torch.no_grad():
            return float(distillation_loss(student(x), labels, teacher(x), config))

    before = gap()
    finetune(student, [(x, labels)], 30, config, torch.device("cpu"), teacher=teacher)
    assert gap() < 0.5 * before
    assert not teacher.training and teacher.weight.grad is None  # the teacher is only read
