"""An INT8 model that keeps its FP32 model's accuracy, or says by how much it does not.

FP32 exports are held to parity with PyTorch (`io.export`); INT8 cannot be: its logits move by the
quantization step. What is checked instead is what a user loses: top-1 of the INT8 and FP32 ONNX
models on the same images, both run by onnxruntime, and the largest logit difference.

`quantize_within` tries what the literature does when post-training quantization costs accuracy,
in order, and stops at the first that loses at most `max_drop` points on the *search* split (the
test split only reports): the configured calibration; percentile and entropy calibration (they
clip outlier activations that stretch a minmax range); four times the calibration images; the
first and last weighted layers kept FP32 (the layers most sensitive to quantization, as in most
PTQ recipes). Each attempt is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

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


def _session(data: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _logits(session, batches: Sequence) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x.numpy()})[0] for x, _ in batches])


def compare(fp32: bytes, int8: bytes, batches: Iterable) -> Int8Accuracy:
    """Top-1 of both ONNX models on `batches` (image, label) and how far their logits differ."""
    batches = list(batches)
    labels = np.concatenate([y.numpy() for _, y in batches])
    ref, out = _logits(_session(fp32), batches), _logits(_session(int8), batches)
    top1 = [100.0 * float((a.argmax(1) == labels).mean()) for a in (ref, out)]
    return Int8Accuracy(top1[0], top1[1], top1[0] - top1[1], float(np.max(np.abs(ref - out))),
                        float((ref.argmax(1) == out.argmax(1)).mean()), len(labels))


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


def _rungs(config: QuantizeConfig, batches: int, available: int, nodes: list[str]):
    """(label, method, calibration batches, FP32 nodes) in the order they are tried."""
    ends = [nodes[0], nodes[-1]] if len(nodes) >= 2 else list(nodes)
    yield "as configured", config.calibration, batches, []
    for method in ("percentile", "entropy"):
        if method != config.calibration:
            yield f"{method} calibration", method, batches, []
    if available > batches:
        yield f"{available // batches}x calibration images", config.calibration, available, []
    yield "first and last layers FP32", config.calibration, batches, ends


def quantize_within(fp32: bytes, calibration: Sequence[np.ndarray], fmt: Int8Format,
                    config: QuantizeConfig, score_batches: Iterable,
                    exclude: Sequence[str] = ()) -> QuantizedModel:
    """The first attempt (see the module docstring) within `config.max_drop` on `score_batches`;
    if none is, the one that lost least, with a warning. `calibration` may hold more batches than
    `config.calibration_batches`: the extra ones serve the "more images" attempt. `exclude`: nodes
    kept FP32 in every attempt (a mixed-precision network's FP32 layers)."""
    pre = preprocess(fp32)
    score_batches = list(score_batches)
    nodes = weighted_nodes(pre)
    attempts, best = [], None
    size = len(calibration[0]) if calibration else 0
    for label, method, count, fp32_nodes in _rungs(config, config.calibration_batches,
                                                   len(calibration), nodes):
        fp32_nodes = [n for n in nodes if n in exclude or n in fp32_nodes]
        data = quantize_bytes(pre, calibration[:count], fmt, config, exclude=fp32_nodes,
                              method=method, preprocessed=True)
        accuracy = compare(pre, data, score_batches)
        attempt = Attempt(label, method, count * size, fp32_nodes, accuracy)
        attempts.append(attempt)
        log.info("INT8 (%s): %.2f%% vs FP32 %.2f%% (drop %.2f)", label, accuracy.int8_top1,
                 accuracy.fp32_top1, accuracy.drop)
        if accuracy.drop <= config.max_drop:
            return QuantizedModel(data, fmt.name, attempt, attempts)
        if best is None or accuracy.drop < best[0].accuracy.drop:
            best = (attempt, data)
    chosen, data = best
    warning = (f"INT8 loses {chosen.accuracy.drop:.2f} points on the search split even after "
               f"{len(attempts)} attempts (best: {chosen.label}); over the {config.max_drop} "
               "point limit")
    return QuantizedModel(data, fmt.name, chosen, attempts, warning)


__all__ = ["Attempt", "Int8Accuracy", "QuantizedModel", "compare", "quantize_within"]
