"""Benchmark: does the agent beat uniform, random search, global magnitude and sensitivity-greedy?

Every method produces a policy for the same budget and then goes through the same final stage
(`compress.finish`: measured against the budget, short fine-tune, full fine-tune, export, paired
latency measurement), so only the policy differs.

    python -m benchmarks.bench --models resnet18 --budgets 0.5 --seeds 0 --episodes 200
    make bench-quick   # <= 10 minutes: resnet18, budget 0.5, short searches, 10k-image fine-tune

An agent ablation is one `--out` per variant, each with its `--agent-option`s (AgentConfig fields):

    python -m benchmarks.bench --methods agent --agent-option warm_start=true --out runs/bench/ablation/warm
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from compressor import pruning
from compressor.budgets.kinds import BudgetConfig
from compressor.errors import UserError
from compressor.io import atomic
from compressor.pipeline.compress import CompressConfig, FinalConfig, prepare
from compressor.pipeline.final import finish
from compressor.pipeline.job import search
from compressor.quantize import QuantizeConfig
from compressor.search.agent import parse_options
from compressor.search.distributed import DistributedConfig
from compressor.search.evaluator import EvaluatorConfig
from compressor.search.loop import LoopConfig, default_agent_config
from compressor.zoo.datasets import DataConfig

METHODS = ("agent", "uniform", "random", "global", "greedy", "agent-flops")
"""The benchmark's row names: `agent` is the ddpg method, `agent-flops` the bench-only control (ddpg
with a FLOPs budget matched to the uniform policy, judged on measured latency)."""


def search_method_for(method: str) -> str:
    """The registered search method (`compressor.search.methods.METHODS`) behind a row name."""
    return "ddpg" if method in ("agent", "agent-flops") else method


def run_method(method: str, base: CompressConfig, out_root: Path) -> dict:
    """One row: prepare, search with `method` through the one interface, the shared final stage."""
    config = replace(base, method=search_method_for(method)).resolved()
    key = {"method": method, "model": config.model, "budget": base.budget.latency,
           "seed": config.seed}
    started = time.time()
    try:
        ws = prepare(config)
    except UserError as exc:  # refused up front (e.g. an unreachable budget): the row says why
        return {**key, "error": str(exc)}
    if method == "agent-flops":
        # The FLOPs ratio of the uniform policy that meets the latency budget.
        uniform, _ = pruning.uniform_policy_for_budget(ws.skeleton, ws.budget_cost, 1.0,
                                                       config.max_ratio)
        flops = ws.skeleton.macs(uniform) / ws.skeleton.macs({})
        latency_limit = ws.request.latency
        # No fit to the measured latency either: it would make the final stage latency-aware and
        # answer a different question. An over-budget FLOPs policy is reported as such.
        config = replace(config, budget=replace(config.budget, latency=None, flops=flops),
                         final=replace(config.final, fit=False))
        ws = prepare(config)
        # Still judged on measured latency: the verdict reads the request's latency limit.
        ws.request = replace(ws.request, latency=latency_limit)
    run_dir = out_root / f"{config.model}-b{base.budget.latency}-{method}-s{config.seed}"
    ws.progress = False
    try:  # the job's own search step: with --workers its episodes are scored on Ray workers
        outcome, info = search(ws, run_dir)
    except UserError as exc:  # a method that cannot meet the budget (greedy's ratio grid): a row
        return {**key, "search_seconds": time.time() - started, "error": str(exc)}
    search_seconds = time.time() - started
    info = {**info, "method": method}
    row = {**key, "search_seconds": search_seconds, "evaluations": outcome.evaluations}
    try:
        done = finish(ws, outcome.candidates, run_dir, ["benchmarks.bench", method],
                      out_root / "runs" / run_dir.name, out_root / "policies" / f"{run_dir.name}.json",
                      info)
    except UserError as exc:
        return {**row, "error": str(exc)}
    report = done.run_report
    final = report.final
    if final.latency is None:  # export or measurement failed; the work is saved, the row says so
        return {**row, "error": report.failure or "export or measurement failed"}
    return {**row, "test_top1": final.test_top1,
            "precision": final.precision,
            "fp32_layers": ((final.int8 or {}).get("fp32_layers") or []
                            if final.precision == "mixed" else []),  # of what shipped
            "fp32_top1": final.fp32_test_top1 if final.fp32_test_top1 is not None
            else final.test_top1,
            "fp32_latency_ratio": (final.fp32_latency or final.latency)["ratio"],
            "baseline_top1": report.baseline["test_top1"],
            "latency_ratio": final.latency_ratio,
            "latency_spread": final.latency["spread"],
            "macs": final.macs, "params": final.params,
            "total_seconds": time.time() - started,
            "per_episode_seconds": report.per_episode_seconds,
            "verdict": report.verdict, "policy": report.policy}


def aggregate(rows: list[dict]) -> list[dict]:
    """One line per (model, budget, method): mean and spread over seeds of the finished runs."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "error" not in r:
            groups.setdefault((r["model"], r["budget"], r["method"]), []).append(r)
    models = list(dict.fromkeys(model for model, _, _ in groups))
    lines = []
    # Ordered for reading: model as first run, then budget, then the METHODS order.
    for (model, budget, method), rs in sorted(groups.items(), key=lambda kv: (
            models.index(kv[0][0]), kv[0][1], METHODS.index(kv[0][2]))):
        top1 = [r["test_top1"] for r in rs]
        lines.append({
            "model": model, "budget": budget, "method": method, "seeds": len(rs),
            "top1_mean": statistics.fmean(top1),
            "top1_sd": statistics.stdev(top1) if len(top1) > 1 else 0.0,
            "top1_range": (min(top1), max(top1)),
            "baseline_top1": rs[0]["baseline_top1"],
            "latency_ratio_mean": statistics.fmean(r["latency_ratio"] for r in rs),
            "latency_ratio_max": max(r["latency_ratio"] for r in rs),
            "macs_mean": statistics.fmean(r["macs"] for r in rs),
            "params_mean": statistics.fmean(r["params"] for r in rs),
            "search_seconds_mean": statistics.fmean(r["search_seconds"] for r in rs),
            "within_budget": sum(r["verdict"] == "within budget" for r in rs),
            "per_episode_seconds": {k: statistics.fmean(r["per_episode_seconds"][k] for r in rs)
                                    for k in rs[0]["per_episode_seconds"]},
        })
    return lines


def goals(summary: list[dict], rows: list[dict]) -> list[str]:
    """The issue's goals, judged on the mean over seeds; a goal without its runs says so."""
    by = {(s["model"], s["budget"], s["method"]): s for s in summary}
    models = sorted({s["model"] for s in summary})
    out = []
    for model in models:
        agent, uniform = by.get((model, 0.3, "agent")), by.get((model, 0.3, "uniform"))
        if agent and uniform:
            gap = agent["top1_mean"] - uniform["top1_mean"]
            out.append(f"- {model}, budget 0.3: agent {agent['top1_mean']:.2f} vs uniform "
                       f"{uniform['top1_mean']:.2f}: {gap:+.2f} points (goal >= +1.0): "
                       f"**{'met' if gap >= 1.0 else 'missed'}**")
        for rival in ("random", "greedy"):
            other = by.get((model, 0.3, rival))
            if agent and other:
                gap = agent["top1_mean"] - other["top1_mean"]
                out.append(f"- {model}, budget 0.3: agent vs {rival} {other['top1_mean']:.2f}: "
                           f"{gap:+.2f} points (goal >= 0): **{'met' if gap >= 0 else 'missed'}**")
        agent = by.get((model, 0.5, "agent"))
        if agent:
            gap = agent["top1_mean"] - agent["baseline_top1"]
            out.append(f"- {model}, budget 0.5: agent {agent['top1_mean']:.2f} vs baseline "
                       f"{agent['baseline_top1']:.2f}: {gap:+.2f} points (goal >= -0.5): "
                       f"**{'met' if gap >= -0.5 else 'missed'}**")
    # agent-flops is the control that ignores latency (no fit either): its misses are its result.
    control = [r for r in rows if r["method"] == "agent-flops"]
    if control:
        within = sum(r.get("latency_ratio", 2) <= r["budget"] for r in control)
        out.append(f"- control agent-flops (FLOPs budget matched to the uniform policy at each "
                   f"latency budget, no fit): {within} of {len(control)} measured within the "
                   "latency budget")
    rows = [r for r in rows if r["method"] != "agent-flops"]
    finished = [r for r in rows if "error" not in r]
    over = [r for r in finished if r["verdict"] != "within budget"]
    failed = [r for r in rows if "error" in r]
    out.append(f"- every export within its budget: {len(finished) - len(over)} of "
               f"{len(finished)} finished runs measured within budget"
               + (f"; {len(failed)} run(s) found no policy within it" if failed else "")
               + f": **{'met' if not over and not failed else 'missed'}**")
    return out


def write_summary(rows: list[dict], out: Path) -> None:
    from compressor.provenance import provenance

    # The rows first: a failure drawing the summary must not lose a finished run.
    atomic.write_json(out / "benchmarks.json", rows)
    prov = provenance()
    lines = ["# Benchmarks: policy search methods at the same budget and final fine-tune", "",
             "Commands (a rerun skips the rows already in benchmarks.json):", "",
             *[f"- `{c}`" for c in dict.fromkeys(r.get("command", "?") for r in rows)], "",
             f"Machine: {prov['machine']['cpu']}, {prov['machine']['cores']} cores; "
             f"git {prov['git_commit']}.", "",
             "| model | budget | method | seed | test top-1 | baseline | measured latency ratio "
             "(block spread) | MMACs | params (M) | search s | total s | verdict |",
             "|---" * 12 + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['budget']} | {r['method']} | {r['seed']} | "
                         f"failed: {r['error']} |" + " |" * 7)
            continue
        lines.append(
            f"| {r['model']} | {r['budget']} | {r['method']} | {r['seed']} | "
            f"{r['test_top1']:.2f} | {r['baseline_top1']:.2f} | {r['latency_ratio']:.3f} "
            f"({r['latency_spread'][0]:.3f}-{r['latency_spread'][1]:.3f}) | "
            f"{r['macs'] / 1e6:.1f} | {r['params'] / 1e6:.2f} | {r['search_seconds']:.0f} | "
            f"{r['total_seconds']:.0f} | {r['verdict']} |")
    summary = aggregate(rows)
    lines += ["", "## Mean over seeds", "",
              "| model | budget | method | seeds | test top-1 mean (sd; min-max) | vs baseline | "
              "measured latency ratio mean (max) | MMACs | params (M) | search s | "
              "s/episode prune / recover / evaluate / latency | within budget |",
              "|---" * 12 + "|"]
    for g in summary:
        split = " / ".join(f"{g['per_episode_seconds'].get(k, 0):.2f}"
                           for k in ("prune", "recover", "evaluate", "latency"))
        lines.append(
            f"| {g['model']} | {g['budget']} | {g['method']} | {g['seeds']} | "
            f"{g['top1_mean']:.2f} ({g['top1_sd']:.2f}; {g['top1_range'][0]:.2f}-"
            f"{g['top1_range'][1]:.2f}) | {g['top1_mean'] - g['baseline_top1']:+.2f} | "
            f"{g['latency_ratio_mean']:.3f} ({g['latency_ratio_max']:.3f}) | "
            f"{g['macs_mean'] / 1e6:.1f} | {g['params_mean'] / 1e6:.2f} | "
            f"{g['search_seconds_mean']:.0f} | {split} | {g['within_budget']}/{g['seeds']} |")
    lines += ["", "## Goals (judged on the means above)", "", *goals(summary, rows)]
    _plot(rows, out / "benchmarks.png")
    lines += ["", "![top-1 vs latency](benchmarks.png)", ""]
    atomic.write_text(out / "BENCHMARKS.generated.md", "\n".join(lines) + "\n")


def _plot(rows: list[dict], path: Path) -> None:
    """Test top-1 against measured latency ratio, one panel per model, budgets as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finished = [r for r in rows if "error" not in r]
    models = list(dict.fromkeys(r["model"] for r in finished)) or ["(no runs)"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in finished if r["model"] == model]
        for i, method in enumerate(METHODS):
            pts = [(r["latency_ratio"], r["test_top1"]) for r in mine if r["method"] == method]
            if pts:
                ax.scatter(*zip(*pts, strict=True), label=method, color=f"C{i}", s=22)
        for budget in sorted({r["budget"] for r in mine}):
            ax.axvline(budget, color="grey", linestyle="--", linewidth=0.8)
        if mine:
            ax.axhline(mine[0]["baseline_top1"], color="black", linewidth=0.8, label="dense")
        ax.set(xlabel="measured ONNX latency ratio (paired; dashed: budgets)",
               ylabel="test top-1 (%)", title=model)
        if ax.collections:
            ax.legend(fontsize=8)
    fig.tight_layout()
    atomic.write_via(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet18"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--train-size", type=int, default=None,
                   help="training images for the final fine-tune (quick runs)")
    p.add_argument("--final-epochs", type=int, default=1)
    p.add_argument("--episode-finetune-steps", type=int, default=EvaluatorConfig.finetune_steps,
                   help="SGD steps of each episode's recovery before it is scored (the reward)")
    p.add_argument("--agent-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a DDPG setting of the agent rows (AgentConfig; repeatable), e.g. "
                        "warm_start=true, sensitivity=true, noise_floor=0, noise_schedule=decay")
    p.add_argument("--quantize", default="none", choices=["none", "int8", "mixed", "searched"],
                   help="int8: every row ships INT8 (the search sees INT8 latency); mixed: "
                        "each layer INT8 or FP32 as the latency model prices them; one "
                        "precision per --out")
    p.add_argument("--workers", type=int, default=1,
                   help="Ray workers scoring each row's episodes (compress --workers)")
    p.add_argument("--no-depth", action="store_true",
                   help="transformers: search heads and MLP width only, no whole blocks")
    p.add_argument("--out", default="runs/bench/methods")
    args = p.parse_args(argv)
    out = Path(args.out)
    options = parse_options(args.agent_option)
    command = "python -m benchmarks.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    # Rows already in the summary are kept and their runs skipped: a killed benchmark resumes.
    done = out / "benchmarks.json"
    rows = json.loads(done.read_text()) if done.exists() else []
    finished = {(r["model"], r["budget"], r["method"], r["seed"]) for r in rows}
    # One variant per summary: its means must not mix agents configured differently.
    other = {tuple(r.get("agent_options", [])) for r in rows} - {tuple(args.agent_option)}
    if other:
        raise SystemExit(f"{out} holds rows made with --agent-option {sorted(other)}; give the "
                         "same options or another --out")
    if {r.get("depth", True) for r in rows} - {not args.no_depth}:
        raise SystemExit(f"{out} holds rows of another --no-depth; give another --out")
    if {r.get("quantize", "none") for r in rows} - {args.quantize}:
        raise SystemExit(f"{out} holds rows of another --quantize; give another --out")
    # Every method runs every seed (uniform and greedy then differ only in the final fine-tune's
    # seed, so their means have a spread too), but global: its ranking and fine-tune are fixed.
    for model in args.models:
        for budget in args.budgets:
            for method in args.methods:
                for seed in (args.seeds[:1] if method == "global" else args.seeds):
                    if (model, budget, method, seed) in finished:
                        continue
                    base = CompressConfig(
                        model=model, seed=seed,
                        data=DataConfig(train_size=args.train_size),
                        budget=BudgetConfig(latency=budget),
                        loop=LoopConfig(episodes=args.episodes),
                        agent=default_agent_config(args.episodes, seed, **options),
                        evaluator=EvaluatorConfig(finetune_steps=args.episode_finetune_steps),
                        final=FinalConfig(epochs=args.final_epochs),
                        quantize=QuantizeConfig(mode=args.quantize),
                        pruning=pruning.PruningConfig(depth=not args.no_depth),
                        distributed=DistributedConfig(workers=args.workers),
                        policies_dir=str(out / "policies"))
                    row = {**run_method(method, base, out), "command": command,
                           "train_size": args.train_size, "episodes": args.episodes,
                           "episode_finetune_steps": args.episode_finetune_steps,
                           "final_epochs": args.final_epochs,
                           "agent_options": args.agent_option, "quantize": args.quantize,
                           "depth": not args.no_depth,
                           "workers": args.workers}
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "policy"}),
                          flush=True)
                    write_summary(rows, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
