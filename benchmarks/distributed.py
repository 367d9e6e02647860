"""Benchmark: episodes per minute of the search on Ray workers against in-process (issue 15).

    python -m benchmarks.distributed --model resnet18 --budget 0.5 --episodes 100 --seed 0

Each row is WORKERSxTHREADS, one compress job: `1x2` is today's default (in-process, 2 torch
threads), `1x1` in-process with 1 thread, `2x1` two Ray workers with 1 thread each (as many threads
as the first). The search runs with the row's torch threads (in-process rows) or the workers'
(Ray rows); the final stage, which is not timed here, always gets every core. Rows are appended
to OUT/distributed.json (rows already there are kept and skipped, so a killed benchmark resumes)
and OUT/distributed.md gets the command, the machine, the table, each row's speed-up over the
first, and the scaling to N workers that the serial row's per-episode split predicts. Run it alone:
it measures time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from compressor.budgets.kinds import BudgetConfig
from compressor.io import atomic
from compressor.pipeline.compress import CompressConfig, FinalConfig, prepare
from compressor.pipeline.final import finish
from compressor.pipeline.job import search
from compressor.provenance import cpu_name, provenance
from compressor.search.distributed import DistributedConfig, cores
from compressor.search.evaluator import EvaluatorConfig
from compressor.search.loop import LoopConfig, default_agent_config
from compressor.zoo.datasets import DataConfig

ROWS = ("1x2", "1x1", "2x1")
GOAL = 1.6
"""Issue 15: 2 workers x 1 thread give at least 1.6x the episodes per minute of 1 worker x 2."""
WORKER_PHASES = ("prune", "recover", "evaluate")
"""What a worker does per episode (the rest of an episode's time stays on the driver)."""


def parse_row(text: str) -> tuple[int, int]:
    """"2x1" -> (2 workers, 1 thread each)."""
    workers, sep, threads = text.partition("x")
    if not sep or not workers.isdigit() or not threads.isdigit() or min(int(workers),
                                                                           int(threads)) < 1:
        raise argparse.ArgumentTypeError(f"a row is WORKERSxTHREADS, e.g. 2x1; got {text!r}")
    return int(workers), int(threads)


def run_row(workers: int, threads: int, base: CompressConfig, runs: Path) -> dict:
    """One compress job with `workers` x `threads`; its timing and quality numbers."""
    name = f"{base.model}-b{base.budget.latency}-w{workers}x{threads}-s{base.seed}"
    run_dir = runs / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh search: a resumed one times less
    config = replace(base, distributed=DistributedConfig(
        workers=workers, worker_threads=threads if workers > 1 else None)).resolved()
    ws = prepare(config)
    ws.progress = False
    everything = torch.get_num_threads()
    torch.set_num_threads(threads)  # in-process rows evaluate with it; Ray rows' driver too
    try:
        outcome, info = search(ws, run_dir)
    finally:
        torch.set_num_threads(everything)
    done = finish(ws, outcome.candidates, run_dir, ["benchmarks.distributed", name],
                  runs / "results" / name, runs / "policies" / f"{name}.json", info)
    report = done.run_report
    return {
        "model": config.model, "budget": config.budget.latency, "seed": config.seed,
        "workers": workers, "threads_per_worker": threads, "episodes": config.loop.episodes,
        "search_seconds": outcome.seconds,
        "episodes_per_minute": 60 * config.loop.episodes / outcome.seconds,
        "workers_start_seconds": ws.times.get("workers_start", 0.0),
        "best_search_top1": outcome.candidates[0].top1, "test_top1": report.final.test_top1,
        "latency_ratio": report.final.latency_ratio,
        "verdict": report.verdict, "worker_restarts": info.get("worker_restarts", 0),
        "per_episode_seconds": report.per_episode_seconds,
        "policy": report.policy,
    }


def scaling(serial: dict, workers: tuple[int, ...] = (1, 2, 4, 8, 16, 32)) -> list[dict]:
    """Episodes per minute predicted for N workers from a serial (1 worker) row.

    An episode's worker part w (prune, recover, evaluate) divides by N; the rest d (the agent's
    proposals and updates, the wall, the log, latency probes) stays on the driver, serial:
    time per episode = d + w / N. Past N = w / d the driver is the bottleneck.
    """
    per_episode = serial["search_seconds"] / serial["episodes"]
    w = min(sum(serial["per_episode_seconds"].get(p, 0.0) for p in WORKER_PHASES), per_episode)
    d = per_episode - w
    return [{"workers": n, "episodes_per_minute": 60 / (d + w / n),
             "speedup": per_episode / (d + w / n)} for n in workers]


def write_summary(rows: list[dict], out: Path, command: str) -> None:
    """OUT/distributed.json (every row) and OUT/distributed.md."""
    atomic.write_json(out / "distributed.json", rows)
    first = rows[0]
    lines = [
        "# Distributed search: episodes per minute (issue 15)", "",
        f"`{command}`", "",
        f"Machine: {cpu_name()}, {cores()} cores; versions "
        + ", ".join(f"{k} {v}" for k, v in _versions().items()) + ".",
        "With workers, latency probes run on the driver between batches (no worker computing); "
        "the search time excludes starting the workers (column `start s`).", "",
        "| workers x threads | episodes | search s | start s | episodes/min | speed-up | "
        "best search top-1 | test top-1 | latency ratio | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} x {r['threads_per_worker']} | {r['episodes']} | "
            f"{r['search_seconds']:.0f} | {r['workers_start_seconds']:.1f} | "
            f"{r['episodes_per_minute']:.1f} | "
            f"{r['episodes_per_minute'] / first['episodes_per_minute']:.2f}x | "
            f"{r['best_search_top1']:.2f} | {_number(r['test_top1'])} | "
            f"{_number(r['latency_ratio'], 3)} | {r['verdict']} |")
    baseline = _find(rows, 1, 2)
    parallel = _find(rows, 2, 1)
    if baseline and parallel:
        gain = parallel["episodes_per_minute"] / baseline["episodes_per_minute"]
        lines += ["", f"Goal: 2 workers x 1 thread >= {GOAL}x the episodes per minute of 1 worker "
                      f"x 2 threads: {gain:.2f}x, **{'met' if gain >= GOAL else 'missed'}**."]
    serial = _find(rows, 1, 1) or _find(rows, 1, first["threads_per_worker"])
    if serial:
        lines += ["", f"On paper, from the {serial['workers']} x {serial['threads_per_worker']} "
                      "row's per-episode split (workers prune, recover and score; the agent, "
                      "the wall, the log and latency probes stay serial on the driver):", "",
                  "| workers | episodes/min | speed-up |", "|---|---|---|"]
        lines += [f"| {s['workers']} | {s['episodes_per_minute']:.1f} | {s['speedup']:.2f}x |"
                  for s in scaling(serial)]
    atomic.write_text(out / "distributed.md", "\n".join(lines) + "\n")


def _find(rows: list[dict], workers: int, threads: int) -> dict | None:
    return next((r for r in rows if (r["workers"], r["threads_per_worker"]) ==
                 (workers, threads)), None)


def _number(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _versions() -> dict[str, str]:
    versions = provenance()["versions"]
    try:
        import ray

        versions = {**versions, "ray": ray.__version__}
    except ImportError:
        pass
    return {k: versions[k] for k in ("torch", "onnxruntime", "ray") if k in versions}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--budget", type=float, default=0.5, help="latency ratio")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", nargs="+", type=parse_row, default=[parse_row(r) for r in ROWS],
                   metavar="WORKERSxTHREADS", help=f"default {' '.join(ROWS)}")
    p.add_argument("--models-dir", default="models")
    p.add_argument("--train-size", type=int, default=None, help="quick runs")
    p.add_argument("--test-size", type=int, default=None, help="quick runs")
    p.add_argument("--search-size", type=int, default=5000)
    p.add_argument("--search-images", type=int, default=None,
                   help="per episode (default: EvaluatorConfig's)")
    p.add_argument("--final-epochs", type=int, default=1)
    p.add_argument("--candidates", type=int, default=3)
    p.add_argument("--out", default="runs/bench/distributed", help="where distributed.json and .md go")
    p.add_argument("--runs", default="runs/distributed", help="run directories and reports")
    args = p.parse_args(argv)
    out, runs = Path(args.out), Path(args.runs)
    command = " ".join(["python -m benchmarks.distributed",
                        *(sys.argv[1:] if argv is None else argv)])
    evaluator = EvaluatorConfig() if args.search_images is None else \
        EvaluatorConfig(search_images=args.search_images)
    base = CompressConfig(
        model=args.model, seed=args.seed, models_dir=args.models_dir,
        data=DataConfig(train_size=args.train_size, test_size=args.test_size,
                        search_size=args.search_size),
        budget=BudgetConfig(latency=args.budget), evaluator=evaluator,
        loop=LoopConfig(episodes=args.episodes),
        agent=default_agent_config(args.episodes, args.seed),
        final=FinalConfig(epochs=args.final_epochs, candidates=args.candidates),
        results_dir=str(runs / "results"), policies_dir=str(runs / "policies"))
    done = out / "distributed.json"
    rows = json.loads(done.read_text()) if done.exists() else []
    for workers, threads in args.rows:
        key = (args.model, args.budget, args.seed, workers, threads, args.episodes)
        if any((r["model"], r["budget"], r["seed"], r["workers"], r["threads_per_worker"],
                r["episodes"]) == key for r in rows):
            continue
        started = time.time()
        row = {**run_row(workers, threads, base, runs), "command": command,
               "total_seconds": time.time() - started}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "policy"}), flush=True)
        write_summary(rows, out, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
