"""What INT8 costs in accuracy, and the fallbacks tried when it costs too much."""

from __future__ import annotations

import torch
from torch import nn

from compressor.io.export import onnx_bytes
from compressor.pipeline.train import TrainConfig, train
from compressor.quantize import FORMATS, QuantizeConfig, compare, quantize_within
from compressor.quantize.int8 import calibration_batches
from tests.unit.quantize.test_int8 import small_cnn


def trained_cnn(fmnist) -> nn.Module:
    model = small_cnn().train()
    train(model, fmnist.train.subset(2000), None, TrainConfig(epochs=2, max_lr=0.05,
                                                              batch_size=64), torch.device("cpu"),
          progress=False)
    return model.eval()


def test_int8_keeps_the_accuracy_or_reports_every_attempt(fmnist):
    model = trained_cnn(fmnist)
    fp32 = onnx_bytes(model, torch.zeros(1, 3, 32, 32))
    score = list(fmnist.search.batches(250, limit=2))
    config = QuantizeConfig(mode="int8", calibration_batches=2, calibration_batch_size=32)
    calibration = calibration_batches(fmnist.train, config)
    done = quantize_within(fp32, calibration, FORMATS["qdq-u8s8"], config, score)
    assert done.chosen.accuracy.images == 500
    assert done.chosen.accuracy.fp32_top1 > 25  # well above chance (10%): the check means something
    assert done.chosen.accuracy.drop <= config.max_drop or done.warning
    again = compare(fp32, done.data, score)
    assert again == done.chosen.accuracy  # the bytes returned are the ones that were scored

    # A limit nothing can meet runs every fallback, keeps the one that lost least, and warns.
    impossible = QuantizeConfig(mode="int8", calibration_batches=1, calibration_batch_size=32,
                                max_drop=-100)
    worst = quantize_within(fp32, calibration, FORMATS["qdq-u8s8"], impossible, score)
    labels = [a.label for a in worst.attempts]
    assert labels == ["as configured", "percentile calibration", "entropy calibration",
                      "2x calibration images", "first and last layers FP32"]
    assert worst.attempts[-1].fp32_nodes and worst.attempts[3].calibration_images == 64
    assert worst.chosen.accuracy.drop == min(a.accuracy.drop for a in worst.attempts)
    assert "over the -100 point limit" in worst.warning
