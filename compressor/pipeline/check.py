"""`compressor check`: a CI gate on measured latency (and optionally accuracy) of an ONNX model.

Exit codes: 0 within every budget, 1 a budget missed, 2 bad input. The JSON report's schema:

    {"verdict": "pass" | "fail", "warnings": [str], "checks": {name: {"value", "limit", "ok"}},
     "latency": {"ratio", "ratio_spread": [lo, hi], "candidate_ms", "reference_ms",
                 "rounds": [{"ratio", "block_ratios", ...}], "settings": {...}},
     "accuracy": {"candidate_top1", "reference_top1", "drop", "dataset", "images"} | null,
     "model": path, "reference": path, "environment": {cpu, cores, threads, versions, ...}}

A verdict must not flip between runs on the same machine: the paired measurement is repeated in
`rounds` (each alternating blocks of the two models, each on fresh sessions of both), the ratio is
the median over all blocks, and its spread (min and max of the round medians) is reported. A model
within budget by less than that spread passes with a warning.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from compressor import latency
from compressor.errors import UserError
from compressor.io.export import onnx_top1
from compressor.latency.probe import measured_settings
from compressor.provenance import provenance


def check(model_path: str, reference_path: str, settings: latency.ProbeSettings, *,
          max_latency_ratio: float | None = None, max_latency_ms: float | None = None,
          max_accuracy_drop: float | None = None, test_batches=None, dataset_name: str = "",
          rounds: int = 3) -> dict[str, Any]:
    """Measure and judge; returns the report (see the module docstring)."""
    for name, value in (("--max-latency-ratio", max_latency_ratio),):
        if value is not None and not 0 < value < 1:
            raise UserError(f"{name} {value} must be between 0 and 1 (a ratio of the reference)")
    if rounds < 1:
        raise UserError(f"--rounds {rounds} must be at least 1")
    if max_latency_ms is not None and max_latency_ms <= 0:
        raise UserError(f"--max-latency-ms {max_latency_ms} must be positive")
    if max_latency_ratio is None and max_latency_ms is None and max_accuracy_drop is None:
        raise UserError("nothing to check: give --max-latency-ratio, --max-latency-ms or "
                        "--max-accuracy-drop")
    candidate = latency.make_session(model_path, settings)
    reference = latency.make_session(reference_path, settings)
    latency.check_same_input(candidate, reference)
    # The reference's fixed input shape decides (1-channel, non-square); the settings fill only
    # the sizes it leaves symbolic.
    settings = replace(settings, input_shape=reference.example_shape())
    settings = latency.resolve_batch_size(settings, reference)
    candidate.prepare(settings.batch_size, settings.input_shape)
    reference.prepare(settings.batch_size, settings.input_shape)

    # Every round after the first on fresh sessions of both files (`latency.fresh_rounds`), so
    # the spread reported shows a session's own speed too.
    measured = [latency.measure_pair(candidate, reference, settings)]
    measured += latency.fresh_rounds(model_path, reference_path, settings, rounds - 1)
    pooled = latency.pool_rounds(measured)
    ratio, candidate_ms, reference_ms = pooled.ratio, pooled.candidate_ms, pooled.reference_ms
    medians = [m.ratio for m in measured]
    spread = (min(medians), max(medians))

    checks: dict[str, dict] = {}
    warnings: list[str] = []
    if max_latency_ratio is not None:
        checks["latency_ratio"] = {"value": ratio, "limit": max_latency_ratio,
                                   "ok": ratio <= max_latency_ratio}
        if ratio <= max_latency_ratio < spread[1]:
            warnings.append(f"latency ratio {ratio:.3f} is within {max_latency_ratio} by less "
                            f"than its spread ({spread[0]:.3f}-{spread[1]:.3f}); the verdict may "
                            "flip on a noisier run")
    if max_latency_ms is not None:
        checks["latency_ms"] = {"value": candidate_ms, "limit": max_latency_ms,
                                "ok": candidate_ms <= max_latency_ms}
        ms_spread = (min(m.candidate_ms for m in measured), max(m.candidate_ms for m in measured))
        if candidate_ms <= max_latency_ms < ms_spread[1]:
            warnings.append(f"latency {candidate_ms:.2f} ms is within {max_latency_ms} ms by less "
                            f"than its spread ({ms_spread[0]:.2f}-{ms_spread[1]:.2f} ms)")
    accuracy = None
    if max_accuracy_drop is not None:
        if test_batches is None:
            raise UserError("--max-accuracy-drop needs --dataset")
        batches = list(test_batches)
        cand_top1, ref_top1 = onnx_top1(candidate.inner, batches), onnx_top1(reference.inner, batches)
        images = sum(len(y) for _, y in batches)
        drop = ref_top1 - cand_top1
        accuracy = {"candidate_top1": cand_top1, "reference_top1": ref_top1, "drop": drop,
                    "dataset": dataset_name, "images": images}
        checks["accuracy_drop"] = {"value": drop, "limit": max_accuracy_drop,
                                   "ok": drop <= max_accuracy_drop}
    import onnxruntime

    env = provenance()
    env["versions"]["onnxruntime"] = onnxruntime.__version__
    return {
        "verdict": "pass" if all(c["ok"] for c in checks.values()) else "fail",
        "warnings": warnings, "checks": checks,
        "latency": {"ratio": ratio, "ratio_spread": list(spread), "candidate_ms": candidate_ms,
                    "reference_ms": reference_ms, "rounds": [m.as_dict() for m in measured],
                    "settings": measured_settings(settings, reference)},
        "accuracy": accuracy, "model": str(model_path), "reference": str(reference_path),
        "environment": env,
    }
