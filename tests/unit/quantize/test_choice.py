"""The measured INT8 format choice and latency curve: real sessions, real paired timings."""

from __future__ import annotations

import torch

from compressor import latency, pruning
from compressor.io.export import onnx_bytes
from compressor.quantize import (
    FORMATS,
    Int8Curve,
    QuantizeConfig,
    choose_format,
    measure_curve,
    random_calibration,
)
from compressor.quantize import choice as choice_module
from compressor.zoo.models import build_model

SETTINGS = latency.ProbeSettings(batch_size=8, blocks=4, runs=5, warmup=2)
EXAMPLE = torch.zeros(1, 3, 32, 32)


def resnet18_at(ratio: float) -> bytes:
    dense = build_model("resnet18", 10).eval()
    if ratio == 0:
        return onnx_bytes(dense, EXAMPLE)
    skeleton = pruning.build_skeleton(dense, EXAMPLE, pruning.PruningConfig())
    pruned = pruning.apply_policy(dense, {n: ratio for n in skeleton.names}, EXAMPLE,
                                  pruning.PruningConfig())
    return onnx_bytes(pruned, EXAMPLE)


def test_the_choice_keeps_the_fastest_measured_format(monkeypatch):
    timed = []  # (ONNX bytes, their paired measurement), in the order measured

    def paired(data, reference, settings):
        timed.append((data, real_paired(data, reference, settings)))
        return timed[-1][1]

    real_paired = choice_module._paired
    monkeypatch.setattr(choice_module, "_paired", paired)
    dense = resnet18_at(0)
    reference = latency.make_session(dense, SETTINGS)
    calibration = random_calibration((8, 3, 32, 32))
    config = QuantizeConfig(mode="int8")
    # QOperator S8S8 is onnxruntime's slow path on x86-64 (21x FP32 on a VNNI Xeon).
    choice = choose_format(dense, reference, SETTINGS, calibration, config,
                           candidates=["qdq-u8s8", "qoperator-s8s8"])
    ratios = {t.format: t.ratio for t in choice.trials}
    assert set(ratios) == {"qdq-u8s8", "qoperator-s8s8"}
    fastest = min(ratios, key=ratios.get)
    if ratios[fastest] < choice.fp32_ratio:
        assert choice.chosen == fastest and choice.warning is None
        # The chosen format's ratio pools its first round and two on fresh sessions.
        assert {t.format: t.rounds for t in choice.trials} == {
            fastest: 3, ({"qdq-u8s8", "qoperator-s8s8"} - {fastest}).pop(): 1}
    else:  # a CPU where INT8 does not pay: FP32 ships, and the report says why
        assert choice.chosen is None and "slower than FP32" in choice.warning
    # FP32's own ratio, the bar every format must beat: the dense network itself, timed first.
    assert timed[0][0] is dense and choice.fp32_ratio == timed[0][1].ratio
    forced = choose_format(dense, reference, SETTINGS, calibration,
                           QuantizeConfig(mode="int8", format="qdq-u8s8"), rounds=0)
    assert [(t.format, t.rounds) for t in forced.trials] == [("qdq-u8s8", 1)]


def test_curve_ranks_a_heavily_pruned_int8_model_faster_than_a_lightly_pruned_one():
    reference = latency.make_session(resnet18_at(0), SETTINGS)
    curve = measure_curve([resnet18_at(0.1), resnet18_at(0.75)], reference, SETTINGS,
                          random_calibration((8, 3, 32, 32)), FORMATS["qdq-u8s8"],
                          QuantizeConfig(mode="int8"))
    light, heavy = curve.fp32_ratios[1], curve.fp32_ratios[0]
    assert heavy < light
    assert curve.ratio(heavy) < curve.ratio(light)
    assert Int8Curve.from_dict(curve.as_dict()) == curve


def test_curve_interpolates_between_points_and_is_flat_beyond():
    curve = Int8Curve("qdq-u8s8", [0.2, 1.0], [0.9, 0.5])
    assert curve.factor(0.1) == 0.9 and curve.factor(2.0) == 0.5
    assert abs(curve.factor(0.6) - 0.7) < 1e-12
    assert abs(curve.ratio(0.6) - 0.42) < 1e-12
