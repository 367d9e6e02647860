"""The INT8 latency benchmark's summary: errors judged against the latency model's targets."""

import json

from benchmarks.int8_latency import _error, write_markdown


def _result(model: str, median: float, worst: float) -> dict:
    errors = {"median": median, "max": worst}
    return {"model": model, "cpu": "test cpu", "batch_size": 8, "policies": 3,
            "int8": {"choice": {"chosen": "qdq-u8s8", "trials": [
                {"format": "qdq-u8s8", "ratio": 0.6}, {"format": "qdq-s8s8", "ratio": None}]}},
            "errors": {"int8": errors, "int8_curve": errors, "fp32": errors, "curve_alone": errors}}


def test_error_is_relative_to_the_measurement():
    assert abs(_error(0.55, 0.5) - 0.1) < 1e-12 and _error(0.5, 0.5) == 0


def test_markdown_says_met_or_missed_per_model(tmp_path):
    (tmp_path / "latency_a.json").write_text(json.dumps(_result("a", 0.03, 0.08)))
    (tmp_path / "latency_b.json").write_text(json.dumps(_result("b", 0.03, 0.12)))
    (tmp_path / "latency_c.json").write_text(json.dumps({"model": "c", "warning": "slower"}))
    write_markdown(tmp_path, "python -m benchmarks.int8_latency")
    rows = [line for line in (tmp_path / "latency.md").read_text().splitlines()
            if line.startswith("| ") and "model" not in line]
    assert rows[0].startswith("| a |") and rows[0].endswith("| met |")
    assert rows[1].startswith("| b |") and rows[1].endswith("| missed |")
    assert "qdq-u8s8 (0.600)" in rows[0] and "slower" in rows[2]
