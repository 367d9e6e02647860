"""Latency: the paired ONNX Runtime probe, the per-layer latency model, and the fit to a budget.

    from compressor import latency
    settings = latency.ProbeSettings(threads=1, batch_size=32)
    paired = latency.measure_pair(latency.make_session("model.onnx", settings),
                                  latency.make_session("dense.onnx", settings), settings)
    paired.ratio  # candidate / dense, measured in alternating blocks
"""

from compressor.latency.correction import ProbeCorrection
from compressor.latency.decode import DecodeProbe, DecodeShape
from compressor.latency.fit import FitResult, fit_to_latency
from compressor.latency.model import LatencyModel, Quantize, load_or_build
from compressor.latency.probe import (
    LatencyResult,
    PairedLatency,
    Probe,
    ProbeSettings,
    Session,
    architecture_key,
    auto_batch_size,
    check_same_input,
    fresh_rounds,
    make_session,
    measure_against_limit,
    measure_ms,
    measure_pair,
    pool_rounds,
    resolve_batch_size,
)

__all__ = ["DecodeProbe", "DecodeShape", "FitResult", "LatencyModel", "LatencyResult",
           "PairedLatency", "Probe", "ProbeCorrection",
           "ProbeSettings", "Quantize", "Session", "architecture_key", "auto_batch_size",
           "check_same_input", "fit_to_latency", "fresh_rounds", "load_or_build", "make_session",
           "measure_against_limit", "measure_ms", "measure_pair", "pool_rounds",
           "resolve_batch_size"]
