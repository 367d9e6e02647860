"""Search honesty: does the search's reward rank policies the way the final fine-tune does?

Policies come from a random search at the budget (real rewards, a spread of accuracies). Each is
scored by the episode's reward (BatchNorm recalibration only) and by recoveries with a short
fine-tune of K steps, then given the final stage's full fine-tune and scored on the test split.
The Spearman correlation of each proxy with the final top-1 says how much the search can be trusted.

    python -m benchmarks.honesty --model resnet18 --budget 0.5 --policies 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from compressor.budgets.kinds import BudgetConfig
from compressor.io import atomic
from compressor.pipeline import recovery
from compressor.pipeline.compress import CompressConfig, prepare
from compressor.pipeline.job import search_context
from compressor.pipeline.train import TrainConfig, evaluate_top1, train
from compressor.search.evaluator import RECOVERY_SEED
from compressor.search.loop import CHECKPOINT, LoopConfig
from compressor.search.methods import get_method
from compressor.zoo.datasets import DataConfig


def spearman(x, y) -> float:
    """Rank correlation (ties get their mean rank); nan when either side is constant."""
    def ranks(values):
        values = np.asarray(values, dtype=float)
        order = np.argsort(values, kind="stable")
        r = np.empty(len(values))
        r[order] = np.arange(len(values), dtype=float)
        for v in np.unique(values):  # mean rank of ties
            r[values == v] = r[values == v].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def distinct_policies(episodes: list[dict], count: int) -> list[dict]:
    """Up to `count` episodes with distinct policies, spread evenly over the reward range."""
    seen, unique = set(), []
    for e in sorted(episodes, key=lambda e: e["reward"]):
        key = json.dumps(e["policy"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(e)
    if len(unique) <= count:
        return unique
    picks = np.linspace(0, len(unique) - 1, count).round().astype(int)
    return [unique[i] for i in picks]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--budget", type=float, default=0.5, help="latency ratio")
    p.add_argument("--policies", type=int, default=20)
    p.add_argument("--episodes", type=int, default=40, help="random-search episodes to draw from")
    p.add_argument("--proxy-steps", type=int, nargs="+", default=[50, 200],
                   help="short fine-tune lengths (SGD steps, batch 64) tried as rewards")
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--final-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/honesty")
    args = p.parse_args(argv)
    out = Path(args.out)
    config = CompressConfig(model=args.model, seed=args.seed,
                            data=DataConfig(train_size=args.train_size),
                            budget=BudgetConfig(latency=args.budget, probe_every=0),
                            loop=LoopConfig(episodes=args.episodes, agent="random"),
                            method="random",
                            results_dir=str(out), policies_dir=str(out / "policies")).resolved()
    ws = prepare(config)
    run_dir = out / f"{args.model}-b{args.budget}-random-s{args.seed}"
    resume = (run_dir / CHECKPOINT).exists()
    # The random method through the one interface; its episode log is what the study samples.
    get_method("random").search(search_context(ws, run_dir, resume=resume))
    episodes = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    chosen = distinct_policies(episodes, args.policies)

    rows_path = out / f"{args.model}-b{args.budget}.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []  # resumable
    dataset, device = ws.dataset, ws.device
    # The same images for every policy, as in the search: only the policy differs.
    proxies = {}
    for steps in args.proxy_steps:
        cfg = replace(ws.evaluator.recovery_config, finetune_steps=steps)
        proxies[steps] = (cfg, list(dataset.train.batches(64, shuffle=True, seed=RECOVERY_SEED,
                                                          limit=cfg.bn_batches + steps)))
    for e in chosen[len(rows):]:
        t = time.time()
        row = {"episode": e["episode"], "reward": e["reward"], "search_top1_bn": e["top1"],
               "policy": e["policy"]}
        for steps, (cfg, batches) in proxies.items():
            model = ws.evaluator.prune(e["policy"])
            recovery.recover(model, batches, cfg, device)
            row[f"search_top1_ft{steps}"] = ws.evaluator.evaluate(model)
        model = ws.evaluator.prune(e["policy"])
        ws.evaluator.recover(model, steps=0)  # BatchNorm recalibration, as the final stage does
        train(model, dataset.train, None, TrainConfig(
            epochs=args.final_epochs, max_lr=config.final.lr, warmup_fraction=0.1,
            seed=args.seed, batch_size=config.final.batch_size), device)
        row["test_top1_final"] = evaluate_top1(model, dataset.test.batches(500), device)
        row["seconds"] = time.time() - t
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "policy"}), flush=True)
        atomic.write_json(rows_path, rows)
    write_summary(rows, args, out, " ".join(["python -m benchmarks.honesty",
                                             *(sys.argv[1:] if argv is None else argv)]))
    return 0


def write_summary(rows: list[dict], args, out: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compressor.provenance import provenance

    final = [r["test_top1_final"] for r in rows]
    proxies = ["search_top1_bn", *[f"search_top1_ft{s}" for s in args.proxy_steps]]
    names = {"search_top1_bn": "episode reward (BN recalibration only, the default)",
             **{f"search_top1_ft{s}": f"BN recalibration + {s}-step fine-tune"
                for s in args.proxy_steps}}
    prov = provenance()
    lines = [f"# Search honesty: {args.model}, latency budget {args.budget}", "",
             f"Command: `{command}`", "",
             f"Machine: {prov['machine']['cpu']}, {prov['machine']['cores']} cores; "
             f"git {prov['git_commit']}.", "",
             f"{len(rows)} distinct policies from a {args.episodes}-episode random search, spread "
             "over its reward range; each given the final stage's fine-tune "
             f"({args.final_epochs} epoch(s), train size {args.train_size or 'full'}) and scored "
             "on the test split.", "",
             "| proxy | Spearman vs final test top-1 | proxy range (search top-1) |",
             "|---|---|---|"]
    fig, axes = plt.subplots(1, len(proxies), figsize=(4 * len(proxies), 3.6), squeeze=False)
    for ax, proxy in zip(axes[0], proxies, strict=True):
        values = [r[proxy] for r in rows]
        rho = spearman(values, final)
        lines.append(f"| {names[proxy]} | {rho:.2f} | {min(values):.1f}-{max(values):.1f} |")
        ax.scatter(values, final)
        ax.set(xlabel=f"{proxy} (%)", ylabel="final test top-1 (%)", title=f"rho = {rho:.2f}")
    lines.append(f"\nFinal test top-1 range: {min(final):.2f}-{max(final):.2f}.")
    fig.tight_layout()
    png = out / f"{args.model}-b{args.budget}.png"
    atomic.write_via(png, lambda p: fig.savefig(p, format="png", dpi=100))
    lines += ["", f"![proxy vs final]({png.name})", ""]
    atomic.write_text(out / f"{args.model}-b{args.budget}.md", "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
