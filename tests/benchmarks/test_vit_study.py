"""results/vit's summary: bench rows in the issue's fields, cells over seeds."""

import pytest

from benchmarks.vit_study import ROW_FIELDS, cells, study_row


def bench_row(method="agent", seed=0, top1=90.0, ratio=0.29, train_size=5000, depth=True,
              error=None):
    row = {"model": "vit_tiny", "budget": 0.3, "method": method, "seed": seed,
           "train_size": train_size, "depth": depth, "precision": "fp32",
           "latency_ratio": ratio, "verdict": "within budget"}
    return row | ({"error": error} if error else {"test_top1": top1})


def test_a_bench_row_becomes_a_study_row_with_every_field():
    row = study_row(bench_row())
    assert all(field in row for field in ROW_FIELDS)
    assert row["method"] == "ddpg" and row["final"] == "short" and row["depth"] is True
    assert study_row(bench_row(train_size=None))["final"] == "full"


def test_cells_average_finished_seeds_apart_by_depth_and_final():
    rows = [study_row(r) for r in (
        bench_row(seed=0, top1=88.0, ratio=0.28), bench_row(seed=1, top1=90.0, ratio=0.30),
        bench_row(seed=2, error="over budget"), bench_row(depth=False, top1=85.0),
        bench_row(method="uniform", train_size=None, top1=80.0))]
    by = {(c["method"], c["depth"], c["final"]): c for c in cells(rows)}
    ddpg = by[("ddpg", True, "short")]
    assert ddpg["seeds"] == 2 and ddpg["top1_mean"] == pytest.approx(89.0)
    assert ddpg["top1_sd"] == pytest.approx(1.41421, abs=1e-4)
    assert ddpg["latency_ratio_range"] == [0.28, 0.30]
    assert by[("ddpg", False, "short")]["top1_sd"] is None
    assert by[("uniform", True, "full")]["top1_mean"] == 80.0
