"""What INT8 costs in accuracy, and the fallbacks tried when it costs too much."""

from __future__ import annotations

import torch
from torch import nn

from compressor.io.export import onnx_bytes
from compressor.quantize import FORMATS, QuantizeConfig, compare, quantize_within
from compressor.quantize.accuracy import _Scorer, layer_drops, most_sensitive
from compressor.quantize.int8 import calibration_batches, preprocess, weighted_nodes
from compressor.training.train import TrainConfig, train
from tests.unit.quantize.test_int8 import small_cnn


def trained_cnn(fmnist) -> nn.Module:
    model = small_cnn().train()
    train(model, fmnist.train.subset(6000), None, TrainConfig(epochs=2, max_lr=0.05,
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
    assert labels[:4] == ["as configured", "percentile calibration", "entropy calibration",
                          "2x calibration images"]
    assert worst.attempts[3].calibration_images == 64
    # Then layers kept FP32, the set only growing once the calibrations were retried, up to every
    # weighted layer: nothing was left untried before the warning.
    kept = [set(a.fp32_nodes) for a in worst.attempts[4:]]
    assert kept and all(label.endswith("layers FP32") for label in labels[4:])
    assert all(a <= b for a, b in zip(kept, kept[1:], strict=False))
    assert kept[-1] == set(weighted_nodes(preprocess(fp32)))
    assert worst.chosen.accuracy.drop == min(a.accuracy.drop for a in worst.attempts)
    assert "over the -100 point limit" in worst.warning


def with_an_outlier_channel(model: nn.Module) -> nn.Module:
    """The same function, but channel 0 entering the third conv is 1000x larger (its BatchNorm
    scaled up, the conv's weights for it scaled down): one activation range per tensor then
    spends its 256 levels on that channel and the other 31 round to a few levels."""
    bn, conv = model[4], model[6]
    with torch.no_grad():
        bn.weight[0] *= 1000.0
        bn.bias[0] *= 1000.0
        conv.weight[:, 0] /= 1000.0
    return model


def test_the_layer_behind_an_outlier_activation_measures_most_sensitive(fmnist):
    model = trained_cnn(fmnist)
    example = torch.zeros(1, 3, 32, 32)
    plain = onnx_bytes(model, example)
    skewed = onnx_bytes(with_an_outlier_channel(model), example)
    score_batches = list(fmnist.search.batches(250, limit=2))
    assert abs(compare(plain, skewed, score_batches).drop) < 0.5  # same function in FP32
    config = QuantizeConfig(mode="int8", calibration_batches=2, calibration_batch_size=32)
    calibration = calibration_batches(fmnist.train, config)
    pre = preprocess(skewed)
    nodes = weighted_nodes(pre)
    drops = layer_drops(pre, calibration, FORMATS["qdq-u8s8"], config,
                        _Scorer(pre, score_batches), nodes)
    assert list(drops) == nodes
    worst = max(drops, key=drops.get)
    assert "/6/" in worst or "/3/" in worst, drops  # the third conv or the one before it
    assert drops[worst] > 5 and drops[nodes[0]] < 2, drops
    assert worst in most_sensitive(drops, drops[worst], max_drop=0.5)
    # No calibration clips a whole channel's outlier away (each loses ~38 points here, as does
    # the usual rule of keeping the first and last layers FP32); the measured rung recovers it.
    done = quantize_within(skewed, calibration, FORMATS["qdq-u8s8"], config, score_batches)
    assert done.warning is None and done.chosen.label.endswith("layers FP32")
    assert worst in done.chosen.fp32_nodes and nodes[0] not in done.chosen.fp32_nodes
    assert done.chosen.accuracy.drop <= config.max_drop


def test_most_sensitive_keeps_the_fewest_largest_first():
    drops = {"a": 0.1, "b": 3.0, "c": 1.0, "d": -0.2}
    # 4 points lost in all: b's share (3.0 / 4.1 of it) brings the rest to 1.07, c's to 0.10.
    assert most_sensitive(drops, 4.0, max_drop=1.5) == ["b"]
    assert most_sensitive(drops, 4.0, max_drop=0.5) == ["b", "c"]
    assert most_sensitive(drops, 0.4, max_drop=0.5) == []  # already within the limit
    assert most_sensitive(drops, 4.0, max_drop=-1.0) == ["b", "c", "a"]  # never d: it lost none
    assert most_sensitive({"a": 0.0, "b": -0.1}, 2.0, max_drop=0.5) == []
