"""An INT8 model that keeps its FP32 model's accuracy, or says by how much it does not.

FP32 exports are held to parity with PyTorch (`io.export`); INT8 cannot be: its logits move by the
quantization step. What is checked instead is what a user loses: top-1 of the INT8 and FP32 ONNX
models on the same images, both run by onnxruntime, and the largest logit difference.

`quantize_within` tries what the literature does when post-training quantization costs accuracy,
in order, and stops at the first that loses at most `max_drop` points on the *search* split (the
test split only reports): the configured calibration; percentile and entropy calibration (they
clip outlier activations that stretch a minmax range); four times the calibration images; then
the layers that measure most sensitive kept FP32. PTQ recipes keep the first and last layers FP32
by rule; here each weighted layer is quantized alone and scored (`layer_drops`), and the fewest
layers, largest drop first, are kept FP32 for the rest to lose at most `max_drop`
(`most_sensitive`), so a sensitive layer in the middle of the network is found and an insensitive
first layer stays INT8. With those layers FP32 every calibration is tried again (the one that did
best with all layers INT8 was picked by the layers now left out). Lone drops are an estimate, not
a sum (INT8 rounding differs by CPU and small losses combine), so while the limit is still missed
the next most sensitive layer is kept FP32 and the network measured again, up to every layer, and
only then the least lossy attempt is kept with a warning. Each attempt is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from compressor.io.export import onnx_logits, onnx_session, top1_of
from compressor.quantize.int8 import (
    Int8Format,
    QuantizeConfig,
    preprocess,
    quantize_bytes,
    weighted_nodes,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Accuracy:
    fp32_top1: float
    int8_top1: float
    drop: float
    """fp32_top1 - int8_top1, in points."""
    max_logit_diff: float
    top1_agreement: float
    """Fraction of images whose INT8 top-1 class is the FP32 model's."""
    images: int


class _Scorer:
    """INT8 graphs against one FP32 model on fixed batches (the FP32 logits computed once)."""

    def __init__(self, fp32: bytes, batches: Iterable):
        self.batches = list(batches)
        self.labels = np.concatenate([y.numpy() for _, y in self.batches])
        self.reference = onnx_logits(onnx_session(fp32), self.batches)

    def __call__(self, int8: bytes) -> Int8Accuracy:
        ref, out = self.reference, onnx_logits(onnx_session(int8), self.batches)
        top1 = [top1_of(a, self.labels) for a in (ref, out)]
        return Int8Accuracy(top1[0], top1[1], top1[0] - top1[1],
                            float(np.max(np.abs(ref - out))),
                            float((ref.argmax(1) == out.argmax(1)).mean()), len(self.labels))


def compare(fp32: bytes, int8: bytes, batches: Iterable) -> Int8Accuracy:
    """Top-1 of both ONNX models on `batches` (image, label) and how far their logits differ."""
    return _Scorer(fp32, batches)(int8)


def layer_drops(pre: bytes, calibration: Sequence[np.ndarray], fmt: Int8Format,
                config: QuantizeConfig, score, nodes: Sequence[str],
                exclude: Sequence[str] = (), method: str | None = None) -> dict[str, float]:
    """Top-1 points lost when only that weighted node of the preprocessed graph `pre` is INT8
    (every other node of `nodes` kept FP32), per node not in `exclude`; `score` maps an INT8
    graph to its `Int8Accuracy` against `pre`; `method` the calibration (None: the config's)."""
    return {node: score(quantize_bytes(pre, calibration, fmt, config, method=method,
                                       preprocessed=True,
                                       exclude=[n for n in nodes if n != node])).drop
            for node in nodes if node not in exclude}


def most_sensitive(drops: dict[str, float], total_drop: float, max_drop: float) -> list[str]:
    """The fewest nodes to keep FP32, largest drop first, for the rest in INT8 to lose at most
    `max_drop`: the measured all-INT8 `total_drop` is shared out over the nodes in proportion to
    their lone drops (losses below zero are noise and count as none). Empty when no node loses
    anything alone (the loss is then in no one layer)."""
    losses = {node: max(0.0, d) for node, d in drops.items()}
    lost = sum(losses.values())
    kept: list[str] = []
    left = total_drop
    for node in sorted(losses, key=lambda n: -losses[n]):
        if left <= max_drop or losses[node] == 0.0:
            break
        kept.append(node)
        left -= total_drop * losses[node] / lost
    return kept


@dataclass(frozen=True)
class Attempt:
    label: str
    calibration: str
    calibration_images: int
    fp32_nodes: list[str]
    accuracy: Int8Accuracy


@dataclass
class QuantizedModel:
    data: bytes
    format: str
    chosen: Attempt
    attempts: list[Attempt] = field(default_factory=list)
    warning: str | None = None

    def as_dict(self) -> dict:
        return {"format": self.format, "chosen": asdict(self.chosen),
                "attempts": [asdict(a) for a in self.attempts], "warning": self.warning}


def _rungs(config: QuantizeConfig, batches: int, available: int):
    """(label, method, calibration batches) of the attempts tried before any layer is kept FP32."""
    yield "as configured", config.calibration, batches
    for method in ("percentile", "entropy"):
        if method != config.calibration:
            yield f"{method} calibration", method, batches
    if available > batches:
        yield f"{available // batches}x calibration images", config.calibration, available


def quantize_within(fp32: bytes, calibration: Sequence[np.ndarray], fmt: Int8Format,
                    config: QuantizeConfig, score_batches: Iterable,
                    exclude: Sequence[str] = ()) -> QuantizedModel:
    """The first attempt (see the module docstring) within `config.max_drop` on `score_batches`;
    if none is, the one that lost least, with a warning. `calibration` may hold more batches than
    `config.calibration_batches`: the extra ones serve the "more images" attempt. `exclude`: nodes
    kept FP32 in every attempt (a mixed-precision network's FP32 layers)."""
    pre = preprocess(fp32)
    score = _Scorer(pre, score_batches)
    nodes = weighted_nodes(pre)
    excluded = [n for n in nodes if n in exclude]
    base = config.calibration_batches
    size = len(calibration[0]) if calibration else 0
    attempts: list[Attempt] = []
    graphs: list[bytes] = []  # each attempt's INT8 graph

    def attempt(label: str, method: str, count: int, fp32_nodes: list[str]) -> Attempt:
        graphs.append(quantize_bytes(pre, calibration[:count], fmt, config, exclude=fp32_nodes,
                                     method=method, preprocessed=True))
        accuracy = score(graphs[-1])
        attempts.append(Attempt(label, method, count * size, fp32_nodes, accuracy))
        log.info("INT8 (%s): %.2f%% vs FP32 %.2f%% (drop %.2f)", label, accuracy.int8_top1,
                 accuracy.fp32_top1, accuracy.drop)
        return attempts[-1]

    def result(i: int, warning: str | None = None) -> QuantizedModel:
        return QuantizedModel(graphs[i], fmt.name, attempts[i], attempts, warning)

    for label, method, count in _rungs(config, base, len(calibration)):
        if attempt(label, method, count, excluded).accuracy.drop <= config.max_drop:
            return result(-1)
    rungs = sorted(attempts, key=lambda a: a.accuracy.drop)  # stable: ties keep the rung order
    best = rungs[0]

    def batches(rung: Attempt) -> int:
        return rung.calibration_images // size if size else base

    drops = layer_drops(pre, calibration[:batches(best)], fmt, config, score, nodes, excluded,
                        method=best.calibration)
    ranked = sorted(drops, key=lambda n: -drops[n])  # most sensitive first
    sensitive = most_sensitive(drops, best.accuracy.drop, config.max_drop)  # ranked[:k]

    def kept_fp32(k: int, rung: Attempt) -> Attempt:
        label = f"{rung.label}, the {k} most sensitive of {len(drops)} layers FP32"
        return attempt(label, rung.calibration, batches(rung), excluded + ranked[:k])

    # The calibration that lost least with every layer INT8 was chosen by the layers now kept
    # FP32 (an outlier spoils every calibration alike): each rung is tried again without them.
    tried: list[Attempt] = []
    for again in rungs if sensitive else []:
        tried.append(kept_fp32(len(sensitive), again))
        if tried[-1].accuracy.drop <= config.max_drop:
            return result(-1)
    rung = rungs[min(range(len(tried)), key=lambda i: tried[i].accuracy.drop)] if tried else best
    # Lone drops do not add up: keep the next most sensitive layer FP32 and measure again, up to
    # every layer.
    for k in range(len(sensitive) + 1, len(ranked) + 1):
        if kept_fp32(k, rung).accuracy.drop <= config.max_drop:
            return result(-1)
    least = min(range(len(attempts)), key=lambda i: attempts[i].accuracy.drop)
    chosen = attempts[least]
    return result(least, f"INT8 loses {chosen.accuracy.drop:.2f} points on the search split even "
                         f"after {len(attempts)} attempts (best: {chosen.label}); over the "
                         f"{config.max_drop} point limit")


__all__ = ["Attempt", "Int8Accuracy", "QuantizedModel", "compare", "layer_drops", "most_sensitive",
           "quantize_within"]
