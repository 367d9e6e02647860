"""Search honesty: does the search's reward rank policies the way the final fine-tune does?

Policies come from a random search at the budget (real rewards, a spread of accuracies). Each is
scored by the episode's reward (BatchNorm recalibration only) and by recoveries with a short
fine-tune of K steps, then given the final stage's full fine-tune and scored on the test split.
The Spearman correlation of each proxy with the final top-1 says how much the search can be trusted.

    python -m benchmarks.honesty --model resnet18 --budget 0.3 --policies 10
    python -m benchmarks.honesty --summarize     # README.md over every setting in --out
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from compressor.budgets.kinds import BudgetConfig
from compressor.io import atomic
from compressor.pipeline.compress import CompressConfig, prepare
from compressor.pipeline.job import search_context
from compressor.search.evaluator import RECOVERY_SEED, EvaluatorConfig
from compressor.search.loop import CHECKPOINT, LoopConfig
from compressor.search.methods import get_method
from compressor.training import recovery
from compressor.training.train import TrainConfig, evaluate_top1, memory_format, train
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


DISTILL = 0.5
"""Distillation share of a `kd` proxy (`training.recovery.distillation_loss`)."""


def parse_proxy(text: str) -> tuple[int, float, float]:
    """`STEPS`, `STEPS@LR`, either with a `kd` suffix: a short fine-tune tried as the reward (lr
    defaults to the search's; `kd` adds distillation from the dense logits, share `DISTILL`)."""
    distill = DISTILL if text.endswith("kd") else 0.0
    steps, _, lr = text.removesuffix("kd").partition("@")
    return int(steps), float(lr) if lr else EvaluatorConfig().finetune_lr, distill


def proxy_name(steps: int, lr: float, distill: float = 0.0) -> str:
    if steps == 0:
        return "bn"
    return (f"ft{steps}" + ("" if lr == EvaluatorConfig().finetune_lr else f"@{lr:g}")
            + ("kd" if distill else ""))


def prefix_top1(model, batches, device) -> list[float]:
    """Top-1 (%) on the first 1, 2, ... batches: the score with fewer search images, for free."""
    model.eval()
    correct = total = 0
    out = []
    with torch.no_grad():
        for x, y in batches:
            correct += int((model(x.to(device, memory_format=memory_format(device, True))).argmax(1)
                            .cpu() == y).sum())
            total += len(y)
            out.append(100.0 * correct / total)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--budget", type=float, default=0.5, help="latency ratio")
    p.add_argument("--policies", type=int, default=20)
    p.add_argument("--episodes", type=int, default=40, help="random-search episodes to draw from")
    p.add_argument("--proxies", nargs="+", default=["10", "25", "50", "25@0.05"],
                   help="short fine-tunes tried as rewards: STEPS or STEPS@LR (batch 64); the "
                        "BatchNorm-only reward is always scored")
    p.add_argument("--search-images", type=int, nargs="+", default=[500, 1000, 2000],
                   help="search-split sizes each proxy is scored on (prefixes of the largest)")
    p.add_argument("--short-train-size", type=int, default=5000,
                   help="train images of the short final fine-tune (5,000, as in results/honesty-v2)")
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--final-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench/honesty")
    p.add_argument("--summarize", action="store_true",
                   help="only write the README table over every setting already in --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    command = " ".join(["python -m benchmarks.honesty", *(sys.argv[1:] if argv is None else argv)])
    if args.summarize:
        write_overview(out)
        return 0
    config = CompressConfig(model=args.model, seed=args.seed,
                            data=DataConfig(train_size=args.train_size),
                            # The sampling search scores by recalibration only whatever the
                            # default reward: its scores only spread the picked policies.
                            evaluator=EvaluatorConfig(search_images=max(args.search_images),
                                                      finetune_steps=0),
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

    # Seed 0 keeps the first study's file names; other seeds add policies from another search.
    stem = f"{args.model}-b{args.budget}" + (f"-s{args.seed}" if args.seed else "")
    rows_path = out / f"{stem}.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []  # resumable
    dataset, device = ws.dataset, ws.device
    search_batches = ws.evaluator.search_batches
    per_batch = len(search_batches[0][1])
    # The same images for every policy, as in the search: only the policy differs.
    proxies = [(0, EvaluatorConfig().finetune_lr, 0.0), *map(parse_proxy, args.proxies)]
    longest = max(steps for steps, _, _ in proxies)
    batches = list(dataset.train.batches(64, shuffle=True, seed=RECOVERY_SEED,
                                         limit=ws.evaluator.recovery_config.bn_batches + longest))
    short_train = dataset.train.subset(args.short_train_size)

    def final_top1(policy: dict, split, seed: int) -> tuple[float, float]:
        started = time.perf_counter()
        model = ws.evaluator.prune(policy)
        ws.evaluator.recover(model, steps=0)  # BatchNorm recalibration, as the final stage does
        train(model, split, None, TrainConfig(
            epochs=args.final_epochs, max_lr=config.final.lr, warmup_fraction=0.1,
            seed=seed, batch_size=config.final.batch_size), device)
        return (evaluate_top1(model, dataset.test.batches(500), device),
                time.perf_counter() - started)

    for e in chosen[len(rows):]:
        row = {"episode": e["episode"], "reward": e["reward"], "policy": e["policy"]}
        for steps, lr, distill in proxies:
            name = proxy_name(steps, lr, distill)
            started = time.perf_counter()
            model = ws.evaluator.prune(e["policy"])
            recovery.recover(model, batches, replace(ws.evaluator.recovery_config,
                                                     finetune_steps=steps, lr=lr,
                                                     distill=distill), device,
                             teacher=ws.evaluator.dense)
            recovered = time.perf_counter()
            scores = prefix_top1(model, search_batches, device)
            row[f"seconds_{name}"] = time.perf_counter() - started
            row[f"seconds_{name}_eval"] = time.perf_counter() - recovered
            for n in args.search_images:
                row[f"search_top1_{name}_{n}"] = scores[min(len(scores), -(-n // per_batch)) - 1]
        for final, split in (("full", dataset.train), ("short", short_train)):
            row[f"test_top1_{final}"], row[f"seconds_final_{final}"] = final_top1(
                e["policy"], split, args.seed)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "policy"}), flush=True)
        atomic.write_json(rows_path, rows)
    # The noise ceiling: the same policies fine-tuned again with another seed. No proxy can rank
    # the finals better than the finals of two seeds rank each other.
    for row in rows:
        for final, split in (("full", dataset.train), ("short", short_train)):
            key = f"test_top1_{final}_again"
            if key not in row:
                row[key] = final_top1(row["policy"], split, args.seed + 1)[0]
                atomic.write_json(rows_path, rows)
    meta = {"model": args.model, "budget": args.budget, "seed": args.seed, "stem": stem,
            "episodes": args.episodes,
            "proxies": [proxy_name(*proxy) for proxy in proxies],
            "search_images": args.search_images, "short_train_size": args.short_train_size,
            "final_epochs": args.final_epochs, "train_size": args.train_size, "command": command}
    atomic.write_json(out / f"{stem}.meta.json", meta)
    write_summary(rows, meta, out)
    write_overview(out)
    return 0


def proxy_label(name: str) -> str:
    if name == "again":
        return "noise ceiling: the same final fine-tune, another seed"
    if name == "bn":
        return "BN recalibration only"
    distill = name.endswith("kd")
    steps, _, lr = name[2:].removesuffix("kd").partition("@")
    return (f"BN + {steps}-step fine-tune" + (f", lr {lr}" if lr else "")
            + (", distilled from the dense logits" if distill else ""))


TARGETS = {"full": "full final", "short": "short final",
           "full2": "full final, mean of 2 seeds", "short2": "short final, mean of 2 seeds"}


def targets(rows: list[dict]) -> dict[str, list[float]]:
    """Final top-1 per policy: each final fine-tune, and the mean of its two seeds when run."""
    out = {f: [r[f"test_top1_{f}"] for r in rows] for f in ("full", "short")}
    if all("test_top1_full_again" in r for r in rows):
        for f in ("full", "short"):
            out[f"{f}2"] = [(r[f"test_top1_{f}"] + r[f"test_top1_{f}_again"]) / 2 for r in rows]
    return out


def correlations(rows: list[dict], meta: dict) -> list[dict]:
    """One line per (proxy, search images): Spearman against every final target, and cost."""
    finals = targets(rows)
    lines = []
    for name in meta["proxies"]:
        seconds = float(np.median([r[f"seconds_{name}"] for r in rows]))
        eval_full = float(np.median([r[f"seconds_{name}_eval"] for r in rows]))
        for n in meta["search_images"]:
            values = [r[f"search_top1_{name}_{n}"] for r in rows]
            # Scoring time scales with the images scored; recovery does not.
            cost = seconds - eval_full * (1 - n / max(meta["search_images"]))
            lines.append({"proxy": name, "images": n, "seconds": cost,
                          "rho": {t: spearman(values, v) for t, v in finals.items()},
                          "range": (min(values), max(values))})
    if "full2" in finals:
        # The ceiling: how well one seed's final ranks the policies like another seed's.
        lines.append({"proxy": "again", "images": 0, "seconds": float("nan"),
                      "rho": {f: spearman([r[f"test_top1_{f}_again"] for r in rows], finals[f])
                              for f in ("full", "short")},
                      "range": (float("nan"), float("nan"))})
    return lines


def write_summary(rows: list[dict], meta: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compressor.provenance import provenance

    prov = provenance()
    stem = meta.get("stem", f"{meta['model']}-b{meta['budget']}")
    lines = [f"# Search honesty: {meta['model']}, latency budget {meta['budget']}", "",
             f"Command: `{meta['command']}`", "",
             f"Machine: {prov['machine']['cpu']}, {prov['machine']['cores']} cores; "
             f"git {prov['git_commit']}.", "",
             f"{len(rows)} distinct policies from a {meta['episodes']}-episode random search, "
             "spread over its reward range. Each is scored by every proxy (seconds: prune, "
             "recover and score one policy, median) and given two final fine-tunes, each scored on "
             f"the test split: {meta['final_epochs']} epoch on the full train split, and "
             f"{meta['final_epochs']} epoch on its first {meta['short_train_size']} images.", "",
             "Spearman of each proxy against test top-1 after:", ""]
    names = list(targets(rows))
    lines += ["| proxy | search images | " + " | ".join(TARGETS[t] for t in names)
              + " | seconds per episode | proxy range |", "|---|---|" + "---|" * (len(names) + 2)]
    for c in correlations(rows, meta):
        rhos = " | ".join(f"{c['rho'][t]:.2f}" if t in c["rho"] else "-" for t in names)
        lines.append(f"| {proxy_label(c['proxy'])} | {c['images'] or '-'} | {rhos} | "
                     f"{c['seconds']:.1f} | "
                     f"{c['range'][0]:.1f}-{c['range'][1]:.1f} |".replace("nan", "-"))
    for final in ("full", "short"):
        values = [r[f"test_top1_{final}"] for r in rows]
        seconds = np.median([r[f"seconds_final_{final}"] for r in rows])
        lines.append(f"\n{final.capitalize()} final top-1 range: {min(values):.2f}-"
                     f"{max(values):.2f} ({seconds:.0f} s per policy).")
    n = max(meta["search_images"])
    fig, axes = plt.subplots(2, len(meta["proxies"]), figsize=(3.6 * len(meta["proxies"]), 6.4),
                             squeeze=False)
    for col, name in enumerate(meta["proxies"]):
        values = [r[f"search_top1_{name}_{n}"] for r in rows]
        for row_index, final in enumerate(("full", "short")):
            target = [r[f"test_top1_{final}"] for r in rows]
            ax = axes[row_index][col]
            ax.scatter(values, target)
            ax.set(xlabel=f"{name} search top-1 (%)", ylabel=f"{final} final top-1 (%)",
                   title=f"rho = {spearman(values, target):.2f}")
    fig.tight_layout()
    png = out / f"{stem}.png"
    atomic.write_via(png, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    lines += ["", f"![proxy vs final]({png.name})", ""]
    atomic.write_text(out / f"{stem}.md", "\n".join(lines))


def write_overview(out: Path) -> None:
    """README.md: every setting's Spearman per proxy, the policies of all its seeds pooled.

    Seconds come from the seed-0 study alone (run with nothing beside it); later seeds add
    policies and may have shared the machine.
    """
    pooled: dict[tuple, dict] = {}
    for meta_path in sorted(out.glob("*.meta.json")):
        meta = json.loads(meta_path.read_text())
        rows = json.loads((out / meta_path.name.replace(".meta.json", ".json")).read_text())
        group = pooled.setdefault((meta["model"], meta["budget"]), {"rows": []})
        group["rows"].extend(rows)
        if meta.get("seed", 0) == 0:
            group["meta"], group["timed"] = meta, correlations(rows, meta)
    settings = [(g["meta"], {(c["proxy"], c["images"]): c for c in correlations(g["rows"],
                                                                                 g["meta"])},
                 {(c["proxy"], c["images"]): c["seconds"] for c in g["timed"]}, len(g["rows"]))
                for g in pooled.values() if "meta" in g]
    if not settings:
        return
    head = [f"{m['model']} {m['budget']} ({n} policies)" for m, _, _, n in settings]
    lines = ["# Search honesty: which reward ranks policies like the final fine-tune", "",
             "Spearman of each proxy (the episode's search top-1) against test top-1 after the "
             "full / short final fine-tune (the mean of its two seeds where both ran; the noise "
             "ceiling row: one seed's final against the other's), its mean over the settings, "
             "and seconds per episode on this machine (seed-0 runs, alone). Commands and "
             "per-setting tables: the `*.md` files beside this one.", "",
             "| proxy | search images | " + " | ".join(head) + " | mean | seconds per episode |",
             "|---|---|" + "---|" * (len(head) + 2)]
    order = [*settings[0][0]["proxies"], "again"]
    keys = sorted({k for _, table, _, _ in settings for k in table},
                  key=lambda k: (order.index(k[0]) if k[0] in order else 99, k[1]))
    for key in keys:
        cells, seconds, means = [], [], {"full": [], "short": []}
        for _, table, timed, _ in settings:
            c = table.get(key)
            if c is None:
                cells.append("-")
                continue
            # Against the two-seed mean when there is one (less noise), else the single final.
            rho = {f: c["rho"].get(f"{f}2", c["rho"][f]) for f in ("full", "short")}
            cells.append(f"{rho['full']:.2f} / {rho['short']:.2f}")
            for f in means:
                means[f].append(rho[f])
            if timed.get(key, float("nan")) == timed.get(key, float("nan")):
                seconds.append(f"{timed[key]:.1f}")
        mean = f"{np.mean(means['full']):.2f} / {np.mean(means['short']):.2f}"
        lines.append(f"| {proxy_label(key[0])} | {key[1] or '-'} | " + " | ".join(cells)
                     + f" | {mean} | " + " / ".join(seconds) + " |")
    atomic.write_text(out / "README.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
