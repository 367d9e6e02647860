"""results/vit/summary.json from the runs behind it: the embedded ViT's baseline, the latency model
on it, and one row per benchmark run (`benchmarks.bench` outputs), in the fields issue 34 names.

    python -m benchmarks.vit_study --baseline models/vit_tiny-fashion-mnist.pt \\
        --latency-model runs/bench/vit/lm/latency_model_vit_tiny.json \\
        --bench runs/bench/vit/short runs/bench/vit/full ... --out results/vit
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from compressor.io import atomic
from compressor.provenance import cpu_name

ROW_FIELDS = ("model", "budget", "method", "seed", "final", "depth", "precision", "test_top1",
              "latency_ratio", "verdict")


def study_row(bench_row: dict) -> dict:
    """A bench row in the study's fields: `final` is "short" (a fine-tune on a slice of the
    train split) or "full"; the agent rows are ddpg's."""
    return {
        "model": bench_row["model"], "budget": bench_row["budget"],
        "method": "ddpg" if bench_row["method"] == "agent" else bench_row["method"],
        "seed": bench_row["seed"],
        "final": "short" if bench_row.get("train_size") else "full",
        "depth": bench_row.get("depth", True), "precision": bench_row.get("precision"),
        "test_top1": bench_row.get("test_top1"), "latency_ratio": bench_row.get("latency_ratio"),
        "verdict": bench_row.get("verdict"), "error": bench_row.get("error"),
        "search_seconds": bench_row.get("search_seconds"),
    }


def cells(rows: list[dict]) -> list[dict]:
    """Mean and sd of test top-1 and the shipped latency ratio per (budget, final, depth,
    precision, method) over the finished seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["test_top1"] is not None:
            key = (r["budget"], r["final"], r["depth"], r["precision"], r["method"])
            groups.setdefault(key, []).append(r)
    out = []
    for (budget, final, depth, precision, method), members in sorted(groups.items()):
        tops = [m["test_top1"] for m in members]
        ratios = [m["latency_ratio"] for m in members]
        out.append({"budget": budget, "final": final, "depth": depth, "precision": precision,
                    "method": method, "seeds": len(members), "top1_mean": statistics.mean(tops),
                    "top1_sd": statistics.stdev(tops) if len(tops) > 1 else None,
                    "latency_ratio_mean": statistics.mean(ratios),
                    "latency_ratio_range": [min(ratios), max(ratios)]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="the cached vit_tiny baseline checkpoint")
    p.add_argument("--latency-model", required=True,
                   help="benchmarks.latency_model's JSON for vit_tiny")
    p.add_argument("--bench", nargs="+", required=True, help="benchmarks.bench output folders")
    p.add_argument("--out", default="results/vit")
    args = p.parse_args(argv)
    import torch

    meta = torch.load(args.baseline, map_location="cpu", weights_only=True)["metadata"]
    latency_model = json.loads(Path(args.latency_model).read_text())
    rows = [study_row(r) for folder in args.bench
            for r in json.loads((Path(folder) / "benchmarks.json").read_text())]
    summary = {
        "machine": cpu_name(),
        "baseline": {"top1": meta["test_top1"], "pretrain_minutes": meta["train_seconds"] / 60,
                     "wall_minutes": meta["wall_seconds"] / 60,
                     "epochs": meta["train_config"]["epochs"],
                     "history": [h["test_top1"] for h in meta["history"]]},
        "latency_model": {"median_error": latency_model["median_error"],
                          "max_error": latency_model["max_error"],
                          "policies": latency_model["policies"],
                          "command": latency_model["command"]},
        "cells": cells(rows),
        "rows": rows,
    }
    atomic.write_json(Path(args.out) / "summary.json", summary)
    print(json.dumps(summary["cells"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
