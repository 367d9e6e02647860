"""The pipeline's INT8 steps: plan what INT8 is worth before the search, quantize the winner after.

    int8 = plan_int8(model, example, skeleton, config, settings)   # format + curve, ~1 min
    int8 = replace(int8, tables=<INT8 latency model>, fp32_tables=<the FP32 one>)
    int8 = find_sensitive_layers(int8, trained_dense_onnx, layers, dataset, seed)
    int8.ratio(shapes)                                             # what the search sees
    shipped = quantize_winner(ws, fp32_onnx, run_dir)              # calibrated, checked, timed

Before the search the format is chosen on the dense network (its speed does not depend on the
weights, so an untrained instance serves) and the INT8/FP32 factor is measured at the dense network
and two uniformly pruned ones (the curve, reported). The search's latency ratio is then the INT8
model's, from per-layer INT8 tables (`latency.model` with `quantize`) times the dense INT8/FP32
ratio, so for the same budget it prunes less when INT8 carries part of it; the candidate fit and
the final measurement time the real INT8 model. The budget stays a ratio of dense FP32.

Mixed precision (`--quantize mixed`): both models price every layer and the edge nodes a switch
of precision adds at its input or output; the cheapest assignment runs (the FP32 layers are
onnxruntime's `nodes_to_exclude`), so the choice follows the pruned shapes: a depthwise conv
INT8 slows down once it is thin goes FP32 if that saves more than its switches cost, and the
search, seeing the mixed network's latency, can reach budgets all-INT8 cannot.

Accuracy enters before the search too (`find_sensitive_layers`): the trained dense network is
quantized as the winner will be (`quantize.quantize_within`); the layers it had to keep FP32 to
lose at most `max_drop` points stay FP32 in every policy the search prices, in both modes, so the
search pays for them instead of learning their cost from the final stage. On resnet18 and
mobilenet_v2 INT8 loses at most 0.1 points and none is kept; a layer behind an outlier activation
loses ~38 points and is (tests/unit/pipeline/test_int8.py). Pruning moves ranges, so the final
stage checks the winner again.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from compressor import latency, pruning, quantize
from compressor.io import atomic
from compressor.io.export import onnx_bytes, onnx_top1
from compressor.pruning.shapes import measure_layer_shapes

log = logging.getLogger(__name__)

CURVE_RATIOS = (0.5, None)
"""Uniform pruning ratios of the curve's pruned networks (None: the search's maximum ratio)."""


def cheapest_precisions(int8: Sequence[float], fp32: Sequence[float],
                        int8_edges: Sequence[tuple[float, float]],
                        fp32_edges: Sequence[tuple[float, float]]) -> tuple[list[bool], float]:
    """Per layer whether it runs INT8, and the network's cost, for the cheapest assignment: each
    layer's cost in its precision plus, where consecutive layers differ, the exit edge of the one
    before and the entry edge of the one after, each in its own precision (DequantizeLinear and
    layout reorders one way, reorders and QuantizeLinear the other; edges are (entry, exit)).

    Layers follow call order: the chain along which switches are priced (a skip connection's
    switch is priced as if it ran in that order). Dynamic programming over the two precisions:
    exact for the chain, linear in the layers. Ties go to INT8.
    """
    if not int8:
        return [], 0.0
    costs, edges = (int8, fp32), (int8_edges, fp32_edges)
    best = [int8[0], fp32[0]]  # cheapest cost of the layers so far, the last in INT8 / FP32
    came_from: list[tuple[int, int]] = []
    for i in range(1, len(int8)):
        step, cost = [], []
        for now in (0, 1):
            before = 1 - now
            switch = best[before] + edges[before][i - 1][1] + edges[now][i][0]
            step.append(now if best[now] <= switch else before)
            cost.append(min(best[now], switch) + costs[now][i])
        came_from.append(tuple(step))
        best = cost
    last = 0 if best[0] <= best[1] else 1
    total, path = best[last], [last]
    for step in reversed(came_from):
        path.append(step[path[-1]])
    return [p == 0 for p in reversed(path)], total


def chosen_precisions(skeleton: pruning.Skeleton, policy: dict[str, float]) -> dict[str, bool]:
    """Layer name -> runs INT8, for the layers whose output unit `policy` gives a precision
    (`pruning.unit_precisions`; `searched`); the others are left to the latency model."""
    units = pruning.unit_precisions(policy)
    return {shape.name: units[unit]
            for shape, unit in zip(skeleton.dense_shapes, skeleton.layer_units(), strict=True)
            if unit in units}


def policy_fp32_layers(plan: Int8Plan, skeleton: pruning.Skeleton, policy: dict[str, float]
                       ) -> list[str]:
    """The layers `plan` keeps FP32 under `policy`: its searched precisions, the rest priced."""
    return plan.fp32_layers(skeleton.layer_shapes(policy), chosen_precisions(skeleton, policy))


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
    fp32_tables: latency.LatencyModel | None = None
    """The FP32 latency model: what the curve scales, and the other side of a mixed choice."""
    sensitive: tuple[str, ...] = ()
    """Layers kept FP32 whatever their price: INT8 costs accuracy on them (`find_sensitive_layers`)."""
    dense_check: dict | None = None
    """The dense network's quantization that found them (`QuantizedModel.as_dict`, no bytes)."""

    @property
    def format(self) -> quantize.Int8Format | None:
        """The format that ships, None when the run ships FP32."""
        if self.choice.chosen is None or self.unreachable is not None:
            return None
        return quantize.FORMATS[self.choice.chosen]

    @property
    def warning(self) -> str | None:
        return self.unreachable or self.choice.warning

    @property
    def mixed(self) -> bool:
        """Each layer in its faster precision (`--quantize mixed`); needs the INT8 tables."""
        return self.config.mixed and self.tables is not None

    @property
    def priced_per_layer(self) -> bool:
        """Whether precisions are chosen layer by layer: `mixed`, or sensitive layers kept FP32
        (with the INT8 tables; the curve prices whole networks)."""
        return self.tables is not None and (self.config.mixed or bool(self.sensitive))

    def _precision_choice(self, shapes, fixed: Mapping[str, bool] | None = None
                          ) -> tuple[list[bool], float]:
        """`cheapest_precisions` over the two models' layer and edge prices (ratios of dense
        FP32; the INT8 tables' scaled by the dense INT8/FP32 ratio), a sensitive layer's INT8,
        the other precision of each layer `fixed` names (layer -> runs INT8) and, outside
        `mixed`, every other layer's FP32 priced out of reach."""
        dense_int8, never, fixed = self.choice.chosen_ratio, math.inf, fixed or {}
        int8 = [r * dense_int8 for r in self.tables.layer_ratios(shapes)]
        fp32 = self.fp32_tables.layer_ratios(shapes)
        for i, shape in enumerate(shapes):
            if shape.name in self.sensitive or fixed.get(shape.name) is False:
                int8[i] = never
            elif fixed.get(shape.name) or not self.config.mixed:
                fp32[i] = never
        return cheapest_precisions(
            int8, fp32, [(a * dense_int8, b * dense_int8) for a, b in self.tables.layer_edges(shapes)],
            self.fp32_tables.layer_edges(shapes))

    def int8_layers(self, shapes, fixed: Mapping[str, bool] | None = None) -> list[bool]:
        """Per layer, whether it runs INT8: all of them but the sensitive, or with `mixed` the
        cheapest assignment once each switch between precisions pays its Quantize/DequantizeLinear
        and layout nodes (mobilenet_v2's small depthwise convs are slower in INT8 here,
        results/int8-v2, but a lone one kept FP32 pays two switches); `fixed` layers
        (layer -> INT8, `searched`: the agent's choice) in their given precision."""
        if not self.priced_per_layer:
            return [True] * len(shapes)
        return self._precision_choice(shapes, fixed)[0]

    def fp32_layers(self, shapes, fixed: Mapping[str, bool] | None = None) -> list[str]:
        """Names of the layers kept FP32 (empty unless `mixed` or some are sensitive)."""
        return [s.name for s, quantized in zip(shapes, self.int8_layers(shapes, fixed),
                                               strict=True) if not quantized]

    def ratio(self, shapes, fixed: Mapping[str, bool] | None = None) -> float:
        """Predicted latency of the network with these layer shapes, as a ratio of dense FP32: the
        INT8 tables' ratio times the dense INT8/FP32 ratio the format choice measured (mixed or
        with sensitive layers: the assignment of precisions, switches priced, `fixed` layers in
        their given precision), or without tables the curve applied to the FP32 model's
        prediction."""
        if self.tables is None:
            return self.curve.ratio(self.fp32_tables.predict_ratio(shapes))
        if not self.priced_per_layer:
            return self.tables.predict_ratio(shapes) * self.choice.chosen_ratio
        return self._precision_choice(shapes, fixed)[1]

    def quantizer(self, layers: Sequence[str] = (),
                  fp32_layers: Sequence[str] = ()) -> latency.Quantize:
        """(ONNX FP32 bytes, input shape) -> INT8 bytes in the chosen format, calibrated on seeded
        noise: what latency is timed on (an INT8 graph's speed does not depend on its ranges).
        `fp32_layers` of the graph's `layers` (`quantize.layer_nodes`) are kept float."""
        fmt, config = self.format, self.config
        return lambda data, shape: quantize.quantize_bytes(
            data, quantize.random_calibration(shape), fmt, config,
            exclude=quantize.layer_nodes(data, layers, fp32_layers))

    def converter(self, batch_shape: tuple[int, ...], example: torch.Tensor):
        """(ONNX bytes, the module they came from, its FP32 layers or None) -> what ships, for
        graphs whose input is `batch_shape` (the probes'): `quantizer` with the FP32 layers given
        (a searched policy's) or else the module's (read off its shapes on `example`)."""
        def convert(data: bytes, model: nn.Module, fp32_layers: Sequence[str] | None = None
                    ) -> bytes:
            if not self.priced_per_layer:
                return self.quantizer()(data, batch_shape)
            shapes = measure_layer_shapes(model, example)
            if fp32_layers is None:
                fp32_layers = self.fp32_layers(shapes)
            return self.quantizer([s.name for s in shapes], fp32_layers)(data, batch_shape)
        return convert

    def as_dict(self) -> dict:
        return {"choice": self.choice.as_dict(),
                "curve": self.curve.as_dict() if self.curve else None, "seconds": self.seconds,
                "unreachable": self.unreachable, "per_layer_tables": self.tables is not None,
                "mixed": self.mixed, "sensitive_layers": list(self.sensitive),
                "dense_check": self.dense_check}


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


def find_sensitive_layers(plan: Int8Plan, dense_onnx: bytes, layers: Sequence[str], dataset,
                          seed: int) -> Int8Plan:
    """`plan` with the layers INT8 costs accuracy on (module docstring): the trained dense export
    `dense_onnx` quantized by `quantize.quantize_within` as `quantize_winner` quantizes the winner
    (calibrated on the train split, scored on the search split), its chosen attempt's FP32 nodes
    mapped back to `layers` (every conv/linear module in call order). A plan shipping FP32 is
    returned as it is."""
    if plan.format is None:
        return plan
    started, config = time.time(), plan.config
    calibration = quantize.calibration_batches(
        dataset.train, replace(config, calibration_batches=4 * config.calibration_batches), seed)
    done = quantize.quantize_within(dense_onnx, calibration, plan.format, config,
                                    dataset.search.batches(250, limit=8))
    sensitive = quantize.node_layers(dense_onnx, layers, done.chosen.fp32_nodes)
    if sensitive:
        log.info("INT8 loses accuracy on %s of the dense network: kept FP32 in every policy",
                 ", ".join(sensitive))
    return replace(plan, sensitive=tuple(sensitive), dense_check=done.as_dict(),
                   seconds=plan.seconds + time.time() - started)


class SearchedPrecision:
    """What an episode of `--quantize searched` needs of INT8: the layers its policy keeps FP32
    (the agent's units, the rest priced) and its INT8 network's top-1, calibrated on real train
    images and scored by onnxruntime on the search images (0.5-2.9 s more per episode for
    resnet18 at 32 px on these machines; the evaluator's cache and workers carry it like the rest)."""

    def __init__(self, plan: Int8Plan, skeleton: pruning.Skeleton, example: torch.Tensor,
                 calibration: Sequence, batches: Sequence):
        self.plan, self.skeleton, self.example = plan, skeleton, example
        self.calibration, self.batches = list(calibration), list(batches)
        self.layers = [s.name for s in skeleton.dense_shapes]

    def fp32_layers(self, policy: dict[str, float]) -> list[str]:
        return policy_fp32_layers(self.plan, self.skeleton, policy)

    def top1(self, model: nn.Module, policy: dict[str, float]) -> float:
        data = onnx_bytes(copy.deepcopy(model).cpu().eval(), self.example)
        int8 = quantize.quantize_bytes(
            data, self.calibration, self.plan.format, self.plan.config,
            exclude=quantize.layer_nodes(data, self.layers, self.fp32_layers(policy)))
        return onnx_top1(int8, self.batches)


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
                    fp32_ratio: float, recheck_rounds: int, layers: Sequence[str] = (),
                    fp32_layers: Sequence[str] = ()) -> ShippedInt8:
    """Quantize the fine-tuned FP32 export, calibrated on `dataset`'s train split
    (`quantize.quantize_within`, scored on its search split), check it on the test split, time it
    against dense FP32 like the FP32 model (repeated when within its block spread of `limit`). If
    it measures slower than the FP32 model, FP32 ships and the warning says so. `fp32_layers`:
    modules kept float (a mixed-precision network's), among all its conv/linear `layers`."""
    started = time.time()
    config = plan.config
    # Four times the configured images: the accuracy fallbacks' "more images" attempt uses them.
    calibration = quantize.calibration_batches(
        dataset.train, replace(config, calibration_batches=4 * config.calibration_batches), seed)
    fp32 = fp32_path.read_bytes()
    done = quantize.quantize_within(fp32, calibration, plan.format, config,
                                    dataset.search.batches(250, limit=8),
                                    exclude=quantize.layer_nodes(fp32, layers, fp32_layers))
    test = quantize.compare(fp32, done.data, dataset.test.batches(500))
    paired, rounds = latency.measure_against_limit(done.data, dense_path, settings, limit,
                                                   recheck_rounds)
    if paired.ratio >= fp32_ratio:
        warning = (f"the INT8 model measured {paired.ratio:.3f} of dense FP32, slower than the "
                   f"FP32 model ({fp32_ratio:.3f}): shipping FP32")
        log.warning(warning)
        return ShippedInt8(None, done, test, paired, rounds, warning, time.time() - started)
    atomic.write_bytes(out_path, done.data)
    return ShippedInt8(out_path, done, test, paired, rounds, done.warning, time.time() - started)


__all__ = ["CURVE_RATIOS", "Int8Plan", "SearchedPrecision", "ShippedInt8", "chosen_precisions",
           "find_sensitive_layers", "plan_int8", "policy_fp32_layers", "quantize_winner"]
