"""The distributed benchmark's rows, its scaling estimate and its summary files."""

import argparse
import json

import pytest

from benchmarks.distributed import parse_row, scaling, write_summary


def row(workers, threads, seconds, episodes=100, split=(0.1, 0.3, 0.4)):
    return {"model": "resnet18", "budget": 0.5, "seed": 0, "workers": workers,
            "threads_per_worker": threads, "episodes": episodes, "search_seconds": seconds,
            "episodes_per_minute": 60 * episodes / seconds, "workers_start_seconds": 0.0,
            "best_search_top1": 90.0, "test_top1": 91.0, "latency_ratio": 0.47,
            "verdict": "within budget", "worker_restarts": 0,
            "per_episode_seconds": dict(zip(("prune", "recover", "evaluate"), split,
                                            strict=True))}


def test_rows_are_workers_x_threads():
    assert parse_row("2x1") == (2, 1)
    for bad in ("2", "0x1", "ax1", "2x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_row(bad)


def test_scaling_divides_the_workers_part_and_keeps_the_driver_part():
    # 1 s per episode: 0.8 s on a worker, 0.2 s on the driver.
    predicted = {s["workers"]: s for s in scaling(row(1, 1, 100.0))}
    assert predicted[1]["speedup"] == pytest.approx(1.0)
    assert predicted[2]["speedup"] == pytest.approx(1 / 0.6)
    assert predicted[32]["speedup"] < 1 / 0.2  # never past the driver's share
    assert predicted[4]["episodes_per_minute"] == pytest.approx(60 / 0.4)


def test_summary_has_every_row_the_goal_and_the_estimate(tmp_path):
    rows = [row(1, 2, 100.0), row(1, 1, 150.0), row(2, 1, 55.0)]
    write_summary(rows, tmp_path, "python -m benchmarks.distributed")
    assert json.loads((tmp_path / "distributed.json").read_text()) == rows
    text = (tmp_path / "distributed.md").read_text()
    assert "`python -m benchmarks.distributed`" in text and "cores" in text
    assert "| 2 x 1 | 100 | 55 |" in text
    assert "1.82x, **met**" in text  # 109.1 / 60 episodes per minute
    assert "| 16 |" in text
