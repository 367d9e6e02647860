"""Latency, measured one way: an onnxruntime session on the exported model, settings reported.

The absolute latency of one model drifts 12-35% between measurements on this kind of machine
(../shared/MEASURED.md), so budgets are judged as a ratio to the dense model measured in the same
window: the two sessions alternate in blocks of runs (not run by run, which flushes caches), and the
ratio is the median of the per-block ratios.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from compressor.errors import UserError


@dataclass(frozen=True)
class ProbeSettings:
    """How a latency is measured. Reported beside every number."""

    threads: int = 1
    """onnxruntime intra-op threads. One: two threads slow small graphs here (MEASURED.md)."""
    graph_optimization: str = "all"
    """onnxruntime graph optimisation level: disable, basic, extended or all."""
    batch_size: int | None = None
    """Images per run; None picks the smallest power of two at which the dense model takes
    >= 5 ms, above this machine's noise floor (resnet18 at 32 px: 8)."""
    input_size: int = 32
    """Side of the square input."""
    warmup: int = 10
    """Untimed runs per session before measuring."""
    runs: int = 20
    """Timed runs per block."""
    blocks: int = 6
    """Alternating blocks per model in a paired measurement."""
    statistic: str = "median"
    """Per block: median of the runs' latencies."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class LatencyResult(NamedTuple):
    ms: float
    runs_ms: list[float]


class PairedLatency(NamedTuple):
    """A candidate against its reference, measured in the same window."""

    ratio: float  # median of the per-block ratios
    candidate_ms: float
    reference_ms: float
    block_ratios: list[float]
    settings: dict[str, Any]

    @property
    def spread(self) -> tuple[float, float]:
        """Smallest and largest per-block ratio."""
        return min(self.block_ratios), max(self.block_ratios)

    def as_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "candidate_ms": self.candidate_ms,
                "reference_ms": self.reference_ms, "block_ratios": self.block_ratios,
                "spread": list(self.spread), "settings": self.settings}


_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


class Session:
    """An onnxruntime session plus the input it is timed on."""

    def __init__(self, inner, input_name: str, input_shape: list, source: str):
        self.inner, self.input_name, self.input_shape, self.source = (
            inner, input_name, input_shape, source)
        self.feed: dict[str, np.ndarray] = {}

    def prepare(self, batch_size: int, input_size: int) -> None:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch_size, 3, input_size, input_size)).astype(np.float32)
        self.feed = {self.input_name: x}

    def run_once(self) -> float:
        started = time.perf_counter()
        self.inner.run(None, self.feed)
        return (time.perf_counter() - started) * 1000.0


def make_session(model: bytes | str | Path, settings: ProbeSettings) -> Session:
    """A CPU session for ONNX bytes or a file; a one-line error for anything that is not a model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               _LEVELS[settings.graph_optimization])
    if settings.threads > 1:
        # Spinning threads of one session steal the cores of the other (MEASURED.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = "<bytes>" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).exists():
        raise UserError(f"ONNX file {model} does not exist")
    try:
        inner = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                     providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError(f"{source} is not a loadable ONNX model ({type(exc).__name__}); pass a "
                        ".onnx file written by `compressor compress` or `compressor apply`") from None
    inputs = inner.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise UserError(f"{source} must take one NCHW image input, it takes "
                        f"{[i.shape for i in inputs]}")
    session = Session(inner, inputs[0].name, list(inputs[0].shape), source)
    if settings.batch_size is not None:
        session.prepare(settings.batch_size, settings.input_size)
    return session


def check_same_input(candidate: Session, reference: Session) -> None:
    """Both models must take the same image shape (the batch axis may differ)."""
    a, b = candidate.input_shape[1:], reference.input_shape[1:]
    if a != b:
        raise UserError(f"{candidate.source} takes inputs {a} but the reference "
                        f"{reference.source} takes {b}; compare models of the same input size")


def _block(session: Session, runs: int) -> float:
    return statistics.median(session.run_once() for _ in range(runs))


def measure_ms(session: Session, settings: ProbeSettings) -> LatencyResult:
    for _ in range(settings.warmup):
        session.run_once()
    runs = [session.run_once() for _ in range(settings.runs * settings.blocks)]
    return LatencyResult(statistics.median(runs), runs)


def measure_pair(candidate: Session, reference: Session, settings: ProbeSettings
                 ) -> PairedLatency:
    """Alternate blocks of runs of the two sessions; the ratio is the median block ratio."""
    check_same_input(candidate, reference)
    for session in (candidate, reference):
        if not session.feed:
            raise ValueError("session has no input prepared: set settings.batch_size")
        for _ in range(settings.warmup):
            session.run_once()
    cand, ref = [], []
    for _ in range(settings.blocks):
        cand.append(_block(candidate, settings.runs))
        ref.append(_block(reference, settings.runs))
    ratios = [c / r for c, r in zip(cand, ref, strict=True)]
    return PairedLatency(statistics.median(ratios), statistics.median(cand),
                         statistics.median(ref), ratios, settings.as_dict())


def auto_batch_size(reference: Session, input_size: int, min_ms: float = 5.0,
                    largest: int = 256) -> int:
    """Smallest power-of-two batch at which `reference` takes at least `min_ms`."""
    batch = 1
    while batch < largest:
        reference.prepare(batch, input_size)
        for _ in range(3):
            reference.run_once()
        if statistics.median(reference.run_once() for _ in range(7)) >= min_ms:
            break
        batch *= 2
    reference.prepare(batch, input_size)
    return batch
