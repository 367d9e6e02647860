"""The pipeline's INT8 steps: plan what INT8 is worth before the search, quantize the winner after.

    int8 = plan_int8(model, example, skeleton, config, settings)   # format + curve, ~1 min
    int8 = replace(int8, tables=<INT8 latency model>)               # per-layer INT8 tables
    int8.ratio(shapes, fp32_latency_model)                          # what the search sees
    shipped = quantize_winner(ws, fp32_onnx, run_dir)              # calibrated, checked, timed

Before the search the format is chosen on the dense network (its speed does not depend on the
weights, so an untrained instance serves) and the INT8/FP32 factor is measured at the dense network
and two uniformly pruned ones (the curve, reported). The search's latency ratio is then the INT8
model's, from per-layer INT8 tables (`latency.model` with `quantize`) times the dense INT8/FP32
ratio, so for the same budget it prunes less when INT8 carries part of it; the candidate fit and
the final measurement time the real INT8 model. The budget stays a ratio of dense FP32.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from compressor import latency, pruning, quantize
from compressor.io import atomic
from compressor.io.export import onnx_bytes

log = logging.getLogger(__name__)

CURVE_RATIOS = (0.5, None)
"""Uniform pruning ratios of the curve's pruned networks (None: the search's maximum ratio)."""


@dataclass(frozen=True)
class Int8Plan:
    """What INT8 is worth on this machine for one architecture."""

    config: quantize.QuantizeConfig
    choice: quantize.FormatChoice
    curve: quantize.Int8Curve | None
    """None when no format beat FP32 (the run ships FP32)."""
    seconds: float
    unreachable: str | None = None
    """Why INT8 was given up although a format is fast: the budget is out of INT8's reach (the
    run ships FP32)."""
    tables: latency.LatencyModel | None = None
    """Per-layer INT8 latency model in the chosen format (ratios to the dense INT8 network);
    None: the curve predicts."""

    @property
    def format(self) -> quantize.Int8Format | None:
        """The format that ships, None when the run ships FP32."""
        if self.choice.chosen is None or self.unreachable is not None:
            return None
        return quantize.FORMATS[self.choice.chosen]

    @property
    def warning(self) -> str | None:
        return self.unreachable or self.choice.warning

    def ratio(self, shapes, fp32_model: latency.LatencyModel) -> float:
        """Predicted INT8 latency of the network with these layer shapes, as a ratio of dense
        FP32: the INT8 tables' ratio times the dense INT8/FP32 ratio the format choice measured,
        or without tables the curve applied to `fp32_model`'s prediction."""
        if self.tables is not None:
            return self.tables.predict_ratio(shapes) * self.choice.chosen_ratio
        return self.curve.ratio(fp32_model.predict_ratio(shapes))

    def quantizer(self) -> latency.Quantize:
        """(ONNX FP32 bytes, input shape) -> INT8 bytes in the chosen format, calibrated on
        seeded noise: what latency is timed on (an INT8 graph's speed does not depend on its
        ranges)."""
        fmt, config = self.format, self.config
        return lambda data, shape: quantize.quantize_bytes(
            data, quantize.random_calibration(shape), fmt, config)

    def converter(self, batch_shape: tuple[int, ...]):
        """`quantizer` for graphs whose input is `batch_shape` (the probes')."""
        quantizer = self.quantizer()
        return lambda data: quantizer(data, batch_shape)

    def as_dict(self) -> dict:
        return {"choice": self.choice.as_dict(),
                "curve": self.curve.as_dict() if self.curve else None, "seconds": self.seconds,
                "unreachable": self.unreachable, "per_layer_tables": self.tables is not None}


def plan_int8(model: nn.Module, example: torch.Tensor, skeleton: pruning.Skeleton,
              config: quantize.QuantizeConfig, settings: latency.ProbeSettings,
              max_ratio: float, pruning_config: pruning.PruningConfig) -> Int8Plan:
    """Choose the format on `model` and measure the INT8 curve (see the module docstring)."""
    started = time.time()
    settings = replace(settings, input_shape=tuple(example.shape[1:]))
    dense = onnx_bytes(model, example)
    reference = latency.make_session(dense, settings)
    calibration = quantize.random_calibration((settings.batch_size, *example.shape[1:]))
    choice = quantize.choose_format(dense, reference, settings, calibration, config)
    if choice.chosen is None:
        log.warning(choice.warning)
        return Int8Plan(config, choice, None, time.time() - started)
    fmt = quantize.FORMATS[choice.chosen]
    pruned = [onnx_bytes(pruning.apply_policy(model, pruning.uniform_policy(
        skeleton, max_ratio if r is None else r), example, pruning_config), example)
        for r in CURVE_RATIOS]
    # The dense point is the format choice's own measurement of the chosen format.
    curve = quantize.measure_curve(pruned, reference, settings, calibration, fmt, config,
                                   known=[(choice.fp32_ratio,
                                           choice.chosen_ratio / choice.fp32_ratio)])
    log.info("INT8 %s: %s of FP32 at FP32 ratios %s", fmt.name,
             [round(f, 3) for f in curve.factors], [round(r, 3) for r in curve.fp32_ratios])
    return Int8Plan(config, choice, curve, time.time() - started)


@dataclass
class ShippedInt8:
    """The quantized winner as shipped, or why FP32 shipped instead."""

    path: Path | None
    quantized: quantize.QuantizedModel | None
    test: quantize.Int8Accuracy | None
    """INT8 vs FP32 ONNX top-1 on the test split."""
    paired: latency.PairedLatency | None
    """The INT8 model against dense FP32."""
    rounds: int
    warning: str | None
    seconds: float

    def as_dict(self) -> dict:
        return {"onnx": str(self.path) if self.path else None,
                "quantization": self.quantized.as_dict() if self.quantized else None,
                "test": self.test.__dict__ if self.test else None,
                "latency": self.paired.as_dict() if self.paired else None,
                "latency_rounds": self.rounds, "warning": self.warning, "seconds": self.seconds}


def quantize_winner(fp32_path: Path, dense_path: Path, out_path: Path, plan: Int8Plan, dataset,
                    seed: int, settings: latency.ProbeSettings, limit: float | None,
                    fp32_ratio: float, recheck_rounds: int) -> ShippedInt8:
    """Quantize the fine-tuned FP32 export, calibrated on `dataset`'s train split
    (`quantize.quantize_within`, scored on its search split), check it on the test split, time it
    against dense FP32 like the FP32 model (repeated when within its block spread of `limit`). If
    it measures slower than the FP32 model, FP32 ships and the warning says so."""
    started = time.time()
    config = plan.config
    # Four times the configured images: the accuracy fallbacks' "more images" attempt uses them.
    calibration = quantize.calibration_batches(
        dataset.train, replace(config, calibration_batches=4 * config.calibration_batches), seed)
    fp32 = fp32_path.read_bytes()
    done = quantize.quantize_within(fp32, calibration, plan.format, config,
                                    dataset.search.batches(250, limit=8))
    test = quantize.compare(fp32, done.data, dataset.test.batches(500))
    paired, rounds = latency.measure_against_limit(
        latency.make_session(done.data, settings), latency.make_session(dense_path, settings),
        settings, limit, recheck_rounds)
    if paired.ratio >= fp32_ratio:
        warning = (f"the INT8 model measured {paired.ratio:.3f} of dense FP32, slower than the "
                   f"FP32 model ({fp32_ratio:.3f}): shipping FP32")
        log.warning(warning)
        return ShippedInt8(None, done, test, paired, rounds, warning, time.time() - started)
    atomic.write_bytes(out_path, done.data)
    return ShippedInt8(out_path, done, test, paired, rounds, done.warning, time.time() - started)


__all__ = ["CURVE_RATIOS", "Int8Plan", "ShippedInt8", "plan_int8", "quantize_winner"]
