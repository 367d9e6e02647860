"""Benchmark the latency model: predicted vs paired-measured latency ratio of random policies.

    python -m benchmarks.latency_model --model resnet18 --policies 50 --seed 0
    python -m benchmarks.latency_model --model mobilenet_v2 --policies 50 --seed 0
    python -m benchmarks.latency_model --model vit32 --policies 50 --seed 0 --out results/vit-latency
    python -m benchmarks.latency_model --model resnet50 --input-size 224 --num-classes 1000 \
        --policies 50 --policies-from runs/resnet50-run --searched 20

`--input-size` and `--num-classes` set the network's input side and head (224 and 1000: the
ImageNet shape users deploy; weights stay random, latency depends on shapes only): the latency
model's tables are timed at the feature-map sizes of that input and the probe measures it.
`--policies-from` scores, beside the random policies, the `--searched` best-rewarded distinct
policies of a real search (a compress run directory's episodes.jsonl, or policy files): the
policies a search prefers are the ones a latency model must not underestimate (issue 33).

Each run builds the latency model from scratch (timed: the build cost), draws random per-unit
pruning policies, prunes with `compressor.pruning.apply_policy`, measures every pruned network
against the dense one (paired, alternating blocks) and compares with `predict_ratio` on the
skeleton's predicted shapes, i.e. exactly what the budget wall sees. The MACs ratio is reported
beside it as the proxy the latency model replaces. Results per model go to
latency_model_<model>.json (latency_model_<model>_<size>px.json at another input
size) in `--out` (default runs/bench/latency-model); latency_model.md there is
rewritten from all of them (the committed study: results/latency-model).
Run it on a quiet machine: a training job on the other core adds its own noise to the measured
side.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import torch

from compressor import latency, pruning
from compressor.io import atomic
from compressor.io.export import onnx_bytes
from compressor.latency import model as lm
from compressor.latency.probe import measured_settings
from compressor.provenance import cpu_name, library_versions
from compressor.zoo.models import build_model

TARGETS = {"median": 0.05, "max": 0.10}

VITS = {"vit32": dict(image_size=32, patch_size=4, num_layers=6, num_heads=4, hidden_dim=96,
                      mlp_dim=192)}
"""Small ViTs (torchvision's VisionTransformer) the benchmark builds itself: the shape of the
embedded ViT (32 px, patch 4: 65 tokens, 6 blocks of 4 heads, MLP 2x)."""


def benchmark_model(name: str, classes: int = 10, input_size: int = 32) -> torch.nn.Module:
    """A zoo model by name (its input size is the example's), or one of `VITS` built for
    `input_size` (a ViT's positional embedding fixes its input)."""
    if name in VITS:
        import torchvision

        return torchvision.models.VisionTransformer(**{**VITS[name], "image_size": input_size},
                                                    num_classes=classes)
    return build_model(name, classes)


def random_policies(names: list[str], count: int, seed: int, max_ratio: float = 0.8
                    ) -> list[dict[str, float]]:
    """Per-unit ratios under a per-policy ceiling drawn in [0.1, max_ratio]: mild and heavy
    pruning, uneven across units (the agent's policies are uneven too). Seeded."""
    rng = random.Random(seed)
    policies = []
    for _ in range(count):
        ceiling = rng.uniform(0.1, max_ratio)
        policies.append({name: rng.uniform(0.0, ceiling) for name in names})
    return policies


SEARCH_METHODS = ("agent", "ddpg")
"""Rows of a benchmark summary whose policy came from the agent's search."""


def _summary_policies(node, model: str | None) -> list[tuple[float, dict[str, float]]]:
    """(test top-1, policy) of every row of a benchmark summary (results/*/summary.json) that
    holds a `policy`, is of `model` and was searched by the agent."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("policy"), dict) and node.get("model", model) == model \
                and node.get("method", "agent") in SEARCH_METHODS:
            found.append((float(node.get("test_top1") or 0.0), node["policy"]))
        for value in node.values():
            found += _summary_policies(value, model)
    elif isinstance(node, list):
        for value in node:
            found += _summary_policies(value, model)
    return found


def searched_policies(sources: list[str | Path], count: int, names: list[str],
                      model: str | None = None) -> list[dict[str, float]]:
    """The `count` best-rewarded distinct policies of real searches, best first.

    A source is a compress run directory (its episodes.jsonl: one line per episode, with
    `policy` and `reward`), an episodes .jsonl file, a policy file (`compressor-policy-v1`:
    its one `policy`, ranked first), or a benchmark summary (results/bench-v2/summary.json:
    the policies its agent runs of `model` shipped, best test top-1 first). A policy searched
    at another input size on the same architecture names the same units (a policy is keyed by
    unit name, not by shape). Units a policy leaves out stay dense; a unit `names` lacks is
    refused (another architecture)."""
    found: list[tuple[float, dict[str, float]]] = []
    for source in map(Path, sources):
        path = source / "episodes.jsonl" if source.is_dir() else source
        if not path.exists():
            raise SystemExit(f"--policies-from {source}: no {path.name} there")
        if path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                if line.strip():
                    episode = json.loads(line)
                    if episode.get("policy"):
                        found.append((float(episode.get("reward") or float("-inf")),
                                      episode["policy"]))
        else:
            document = json.loads(path.read_text())
            if isinstance(document.get("policy"), dict):
                found.append((float("inf"), document["policy"]))
            else:
                found += _summary_policies(document, model)
    known, chosen, seen = set(names), [], set()
    for _, policy in sorted(found, key=lambda rp: -rp[0]):
        unknown = sorted(set(policy) - known)
        if unknown:
            raise SystemExit(f"--policies-from: units {unknown[:3]} are not in this model "
                             "(a search on another architecture?)")
        key = tuple(round(policy.get(n, 0.0), 6) for n in names)
        if key not in seen:
            seen.add(key)
            chosen.append({n: float(policy.get(n, 0.0)) for n in names})
        if len(chosen) == count:
            break
    return chosen


class ClockedPair(NamedTuple):
    """One paired measurement read on two clocks from the same runs."""

    wall: latency.PairedLatency  # what the probe measures (`latency.measure_pair`'s protocol)
    cpu_ratio: float  # the same statistic over the calling thread's CPU time
    cpu_block_ratios: list[float]


def measure_pair_clocks(candidate: latency.Session, reference: latency.Session,
                        settings: latency.ProbeSettings) -> ClockedPair:
    """`latency.measure_pair`'s protocol (warm-up, blocks alternating C R / R C, the settings'
    statistic per block, median block ratio), each run timed twice: wall time, and the CPU time
    of the calling thread. With one intra-op thread onnxruntime runs the whole graph on the
    calling thread (its thread and process CPU times agree), so CPU time leaves out the time
    other jobs on the core take from it: on a loaded machine (load average 8-9 on 2 cores)
    dense resnet18 at 224 px took 96-163 ms of wall time a run and 21-24 ms of CPU time.
    What it keeps: the caches and memory bandwidth the other jobs share."""
    summarise = min if settings.statistic == "min" else statistics.median
    for session in (candidate, reference):
        for _ in range(settings.warmup):
            session.run_once()

    def block(session: latency.Session) -> tuple[float, float]:
        wall, cpu = [], []
        for _ in range(settings.runs):
            w0, c0 = time.perf_counter(), time.thread_time()
            session.inner.run(None, session.feed)
            cpu.append((time.thread_time() - c0) * 1000.0)
            wall.append((time.perf_counter() - w0) * 1000.0)
        return summarise(wall), summarise(cpu)

    cand, ref = [], []
    for i in range(settings.blocks):
        if i % 2 == 0:
            cand.append(block(candidate))
            ref.append(block(reference))
        else:
            ref.append(block(reference))
            cand.append(block(candidate))
    wall_ratios = [c[0] / r[0] for c, r in zip(cand, ref, strict=True)]
    cpu_ratios = [c[1] / r[1] for c, r in zip(cand, ref, strict=True)]
    wall = latency.PairedLatency(statistics.median(wall_ratios),
                                 statistics.median(c[0] for c in cand),
                                 statistics.median(r[0] for r in ref), wall_ratios,
                                 measured_settings(settings, reference))
    return ClockedPair(wall, statistics.median(cpu_ratios), cpu_ratios)


def kernel_ms(onnx: bytes, batch: int, settings: latency.ProbeSettings) -> float:
    """Sum over a network's nodes of each node's fastest run (onnxruntime's profiler): a second,
    less load-sensitive measurement beside the paired wall-time ratio (a busy core adds time to
    whole runs; the fastest run of each node is more likely to have been left alone)."""
    with tempfile.TemporaryDirectory() as profile_dir:
        return lm._time_graph(onnx, (batch, 3, settings.input_size, settings.input_size),
                              settings, 300.0, profile_dir, edge_ops=()).layer_ms


def busy() -> bool:
    """A `compressor pretrain` job is running (it would add noise to every measurement)."""
    found = subprocess.run(["pgrep", "-f", "compressor.*pretrain"], capture_output=True)
    return found.returncode == 0


def variants(model: lm.LatencyModel, calibration: list[tuple[float, float, float]],
             layers_only: lm.LatencyModel | None) -> dict[str, lm.LatencyModel]:
    """The built model and its ablations, sharing its tables: the plain layer sum, and the
    traffic term fitted on calibration networks instead of the dense excess. A transformer's
    model (block tables) has as its ablation `layers_only`: its layers timed alone, as a CNN's."""
    if model.blocks is not None:
        return {"latency model": model, "per-layer tables (no block tables)": layers_only}
    def with_fit(beta: float, knee: float) -> lm.LatencyModel:
        return lm.LatencyModel(model.tables, beta, knee, model.dense_ms, model.dense_shapes,
                               model.metadata)

    beta, knee = lm.fit_traffic(model.dense_sum, model.metadata["dense_traffic_mb"],
                                model.metadata["dense_excess_ms"], calibration)
    return {"latency model": model, "layer sum only": with_fit(0.0, 0.0),
            f"calibrated on {len(calibration)} networks": with_fit(beta, knee)}


def bench(model_name: str, policies: int, seed: int, settings: latency.ProbeSettings,
          measure: latency.ProbeSettings, grid_points: int, calibration: int,
          say=print, num_classes: int = 10, policies_from: list[str] | None = None,
          searched: int = 20, kernel_time: bool = True) -> dict:
    """Build the latency model of `model_name` at `settings.input_size` and score it on
    `policies` random policies and (with `policies_from`) up to `searched` searched ones."""
    torch.manual_seed(seed)
    # weights do not change latency; shapes do
    dense = benchmark_model(model_name, num_classes, settings.input_size).eval()
    x = torch.randn(1, 3, settings.input_size, settings.input_size)
    if pruning.has_attention(dense):  # the form every pruned copy has (as the pipeline does)
        dense = pruning.explicit_attention(dense, x)
    config = pruning.PruningConfig()
    skeleton = pruning.build_skeleton(dense, x, config)
    load_before = os.getloadavg()

    started = time.perf_counter()
    model = lm.build_latency_model(dense, x, settings, round_to=config.round_to,
                                   grid_points=grid_points,
                                   model_name=model_name)
    build_seconds = time.perf_counter() - started
    say(f"{model_name}: latency model built in {build_seconds:.1f} s (batch {model.batch_size}, "
        f"{model.metadata['grid_measurements']} grid points, tables "
        f"{model.metadata['table_seconds']:.1f} s)")

    measure = replace(measure, batch_size=model.batch_size, input_size=settings.input_size)
    reference = latency.make_session(onnx_bytes(dense, x), measure)

    def measured(policy: dict[str, float], probe: latency.ProbeSettings) -> latency.PairedLatency:
        pruned = pruning.apply_policy(dense, policy, x, config)
        return latency.measure_pair(latency.make_session(onnx_bytes(pruned, x), probe),
                                    reference, probe)

    def clocked(onnx: bytes) -> ClockedPair:
        return measure_pair_clocks(latency.make_session(onnx, measure), reference, measure)

    dense_kernel = kernel_ms(onnx_bytes(dense, x), model.batch_size, measure) \
        if kernel_time else float("nan")

    layers_only = None if model.blocks is None else lm.build_latency_model(
        dense, x, replace(settings, batch_size=model.batch_size), round_to=config.round_to,
        grid_points=grid_points, model_name=model_name, price_blocks=False)
    started = time.perf_counter()
    probe = replace(settings, batch_size=model.batch_size)
    calibrated = []
    for policy in lm.calibration_policies(skeleton, calibration):
        shapes = skeleton.layer_shapes(policy)
        calibrated.append((model.layer_sum(shapes), lm.traffic_mb(shapes, model.batch_size),
                           measured(policy, probe).ratio))
    calibration_seconds = time.perf_counter() - started
    models = variants(model, calibrated, layers_only)

    dense_macs = skeleton.macs({})
    chosen = [("random", p) for p in random_policies(list(skeleton.names), policies, seed + 1000)]
    if policies_from:
        chosen += [("searched", p) for p in searched_policies(
            policies_from, searched, list(skeleton.names), model_name)]
    rows = []
    for i, (source, policy) in enumerate(chosen):
        shapes = skeleton.layer_shapes(policy)
        onnx = onnx_bytes(pruning.apply_policy(dense, policy, x, config), x)
        both = clocked(onnx)
        paired = both.wall
        predicted = {name: m.predict_ratio(shapes) for name, m in models.items()}
        row = {"source": source, "measured": paired.ratio,
               "predicted": predicted["latency model"],
               "variants": predicted, "spread": list(paired.spread),
               "macs": skeleton.macs(policy) / dense_macs,
               "kernel_ratio": kernel_ms(onnx, model.batch_size, measure) / dense_kernel
               if kernel_time else float("nan"),
               "measured_cpu": both.cpu_ratio,
               "cpu_spread": [min(both.cpu_block_ratios), max(both.cpu_block_ratios)],
               "traffic_mb": lm.traffic_mb(shapes, model.batch_size),
               "candidate_ms": paired.candidate_ms, "reference_ms": paired.reference_ms}
        row["error"] = row["predicted"] / paired.ratio - 1
        rows.append(row)
        say(f"  {i:3d} {source}: measured {paired.ratio:.3f} ({paired.spread[0]:.3f}-"
            f"{paired.spread[1]:.3f}) predicted {row['predicted']:.3f} ({row['error']:+.1%}), "
            f"MACs {row['macs']:.3f}, kernel-time ratio {row['kernel_ratio']:.3f}, CPU-time "
            f"ratio {both.cpu_ratio:.3f} ({row['predicted'] / both.cpu_ratio - 1:+.1%})")
    started = time.perf_counter()
    shapes = skeleton.layer_shapes(random_policies(list(skeleton.names), 1, seed)[0])
    for _ in range(1000):
        model.predict_ratio(shapes)
    predict_us = (time.perf_counter() - started) * 1000.0

    def summary(predicted: list[float], against: str = "measured",
                among: list[dict] = rows) -> dict[str, float]:
        if not among:
            return {"median": float("nan"), "max": float("nan"), "mean_signed": float("nan")}
        errors = [abs(p / r[against] - 1) for p, r in zip(predicted, among, strict=True)]
        signed = [p / r[against] - 1 for p, r in zip(predicted, among, strict=True)]
        return {"median": statistics.median(errors), "max": max(errors),
                "mean_signed": statistics.mean(signed)}

    random_rows = [r for r in rows if r["source"] == "random"]
    ablations = {name: summary([r["variants"][name] for r in random_rows], among=random_rows)
                 for name in models}
    ablations["MACs ratio (proxy)"] = summary([r["macs"] for r in random_rows],
                                              among=random_rows)
    ablations["kernel-time ratio (a second measurement)"] = summary(
        [r["kernel_ratio"] for r in random_rows], among=random_rows)
    ablations["CPU-time ratio (the same runs' thread CPU time)"] = summary(
        [r["measured_cpu"] for r in random_rows], among=random_rows)
    for name in models:
        ablations[f"{name} vs the kernel-time ratio"] = summary(
            [r["variants"][name] for r in random_rows], "kernel_ratio", random_rows)
        ablations[f"{name} vs the CPU-time ratio"] = summary(
            [r["variants"][name] for r in random_rows], "measured_cpu", random_rows)
    searched_rows = [r for r in rows if r["source"] == "searched"]
    on_searched = {name: summary([r["variants"][name] for r in searched_rows],
                                 among=searched_rows) for name in models}
    on_searched["MACs ratio (proxy)"] = summary([r["macs"] for r in searched_rows],
                                                among=searched_rows)
    for name in models:
        on_searched[f"{name} vs the CPU-time ratio"] = summary(
            [r["variants"][name] for r in searched_rows], "measured_cpu", searched_rows)
    command = (f"python -m benchmarks.latency_model --model {model_name} --policies {policies} "
               f"--seed {seed}")
    if settings.input_size != 32 or num_classes != 10:
        command += f" --input-size {settings.input_size} --num-classes {num_classes}"
    if policies_from:
        command += "".join(f" --policies-from {p}" for p in policies_from) + \
            f" --searched {searched}"
    command += f" --calibration {calibration}" + ("" if kernel_time else " --no-kernel-time")
    return {
        "model": model_name, "input_size": settings.input_size, "num_classes": num_classes,
        "policies": len(random_rows), "searched_policies": len(searched_rows),
        "policies_from": [str(p) for p in policies_from or []], "seed": seed,
        "median_error": ablations["latency model"]["median"],
        "max_error": ablations["latency model"]["max"],
        "searched_median_error": on_searched["latency model"]["median"],
        "searched_max_error": on_searched["latency model"]["max"],
        "cpu_median_error": ablations["latency model vs the CPU-time ratio"]["median"],
        "cpu_max_error": ablations["latency model vs the CPU-time ratio"]["max"],
        "searched_cpu_median_error":
            on_searched["latency model vs the CPU-time ratio"]["median"],
        "searched_cpu_max_error": on_searched["latency model vs the CPU-time ratio"]["max"],
        "ablations": ablations, "ablations_searched": on_searched,
        "build_seconds": build_seconds, "calibration_seconds": calibration_seconds,
        "calibration_fit": {"beta_ms_per_mb": models[list(models)[-1]].beta,
                            "knee_mb": models[list(models)[-1]].knee_mb,
                            "networks": [{"layer_sum_ms": c[0], "traffic_mb": c[1],
                                          "measured": c[2]} for c in calibrated]},
        "predict_us": predict_us, "rows": rows,
        "latency_model": {k: v for k, v in model.metadata.items() if k != "key"},
        "measure_settings": measure.as_dict(), "cpu": cpu_name(), "cores": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "pretrain_running_after": busy(), "versions": library_versions(),
        "command": command + f" --blocks {measure.blocks} --runs {measure.runs}",
    }


def verdict(error: float, which: str) -> str:
    return "met" if error <= TARGETS[which] else "missed"


def report(results: list[dict]) -> str:
    lines = ["# Latency model: predicted vs measured latency ratio", "",
             "Written by `compressor/bench_latency_model.py`. Per model: the latency model is "
             "built from scratch (per-layer ONNX Runtime kernel tables + the memory-traffic term, "
             "see `compressor/latency_model.py`), then random per-unit pruning policies are "
             "pruned for real (`compressor.pruning.apply_policy`), exported and measured against "
             "the dense network (paired, alternating blocks); the prediction uses the skeleton's "
             "predicted shapes, as the budget wall does. Error = predicted / measured - 1. "
             f"Targets: median |error| <= {TARGETS['median']:.0%}, max <= {TARGETS['max']:.0%}.",
             "",
             "| model | input | policies | median abs error | max abs error | targets | "
             "searched policies: median / max abs error | MACs proxy median / max | build (s) | "
             "predict (us) | batch | threads | CPU | command |",
             "|---" * 14 + "|"]
    for r in results:
        meta, macs = r["latency_model"], r["ablations"]["MACs ratio (proxy)"]
        searched = (f"{r['searched_policies']}: {r['searched_median_error']:.1%} / "
                    f"{r['searched_max_error']:.1%}" if r.get("searched_policies") else "-")
        lines.append(
            f"| {r['model']} | {r.get('input_size', 32)} | {r['policies']} | "
            f"{r['median_error']:.1%} | {r['max_error']:.1%}"
            f" | median {verdict(r['median_error'], 'median')}, max "
            f"{verdict(r['max_error'], 'max')} | {searched} | "
            f"{macs['median']:.1%} / {macs['max']:.1%} | {r['build_seconds']:.1f} | "
            f"{r['predict_us']:.0f} | {meta['batch_size']} | {meta['threads']} | {r['cpu']} "
            f"({r['cores']} cores) | `{r['command']}` |")
    shapes = sorted({(r.get("input_size", 32), r.get("num_classes", 10)) for r in results})
    lines += ["", "Settings: input " + ", ".join(f"{size}x{size} with {classes} classes"
                                                  for size, classes in shapes) +
              ", random weights (latency depends on shapes only), onnxruntime "
              f"{results[0]['versions']['onnxruntime']}, graph optimisation all, 1 intra-op "
              "thread, batch picked by `auto_batch_size` (dense >= 10 ms); measured with "
              + ", ".join(f"{k}={v}" for k, v in results[0]["measure_settings"].items()
                          if k != "batch_size") + ".", ""]
    for r in results:
        meta, fit = r["latency_model"], r["calibration_fit"]
        measured = [row["measured"] for row in r["rows"]]
        lines += [f"## {r['model']}", "",
                  f"- build: {r['build_seconds']:.1f} s ({meta['grid_measurements']} grid "
                  f"measurements over {meta['distinct_tables']} distinct layer tables, "
                  f"{meta['table_seconds']:.1f} s of them)",
                  f"- dense: {meta['dense_min_ms']:.2f} ms (fastest run) at batch "
                  f"{meta['batch_size']}; sum of its layers' kernel tables "
                  f"{meta['dense_layer_sum_ms']:.2f} ms; {meta['dense_traffic_mb']:.1f} MB "
                  f"moved per run; traffic term {meta['beta_ms_per_mb']:.3f} ms per MB above "
                  f"{meta['knee_mb']:.1f} MB",
                  f"- measured ratios {min(measured):.3f}-{max(measured):.3f}; load average "
                  f"{r['load_average_before'][0]:.2f} before, {r['load_average_after'][0]:.2f} "
                  f"after; pretrain job running at the end: {r['pretrain_running_after']}", "",
                  "Ablations on the same measurements (calibration networks measured in "
                  f"{r['calibration_seconds']:.1f} s; fit {fit['beta_ms_per_mb']:.3f} ms per MB "
                  f"above {fit['knee_mb']:.1f} MB):", "",
                  "| predictor | median abs error | max abs error | mean signed error |",
                  "|---|---|---|---|"]
        order = ["latency model", "layer sum only"]
        for name, a in sorted(r["ablations"].items(),
                              key=lambda kv: (order + [kv[0]]).index(kv[0])):
            lines.append(f"| {name} | {a['median']:.1%} | {a['max']:.1%} | "
                         f"{a['mean_signed']:+.1%} |")
        lines += ["", "| # | policy | measured (block min-max) | predicted | error | MACs ratio | "
                  "traffic (MB) |", "|---|---|---|---|---|---|---|"]
        for i, row in enumerate(r["rows"]):
            lines.append(f"| {i} | {row.get('source', 'random')} | {row['measured']:.3f} "
                         f"({row['spread'][0]:.3f}-"
                         f"{row['spread'][1]:.3f}) | {row['predicted']:.3f} | "
                         f"{row['error']:+.1%} | {row['macs']:.3f} | {row['traffic_mb']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="repeatable; default resnet18 and "
                        "mobilenet_v2")
    parser.add_argument("--policies", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid-points", type=int, default=4)
    parser.add_argument("--calibration", type=int, default=6,
                        help="calibration networks for the 'calibrated' ablation")
    parser.add_argument("--blocks", type=int, default=10, help="paired blocks per policy")
    parser.add_argument("--runs", type=int, default=20, help="runs per block")
    parser.add_argument("--input-size", type=int, default=32,
                        help="side of the square input (224: the ImageNet shape)")
    parser.add_argument("--num-classes", type=int, default=10,
                        help="classifier outputs (1000: the ImageNet head)")
    parser.add_argument("--policies-from", action="append", metavar="RUN_DIR",
                        help="a compress run directory (episodes.jsonl), an episodes .jsonl, "
                             "a policy file or a benchmark summary.json (its agent rows of the "
                             "model); repeatable: the best policies are scored beside the random "
                             "ones")
    parser.add_argument("--searched", type=int, default=20,
                        help="how many distinct searched policies to score (best reward first)")
    parser.add_argument("--no-kernel-time", dest="kernel_time", action="store_false",
                        help="skip the profiler's kernel-time ratio of every policy (a second "
                             "measurement; on a loaded machine it is noise)")
    parser.add_argument("--out", default="runs/bench/latency-model")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # pruning and export on one core, like the probe
    if busy():
        print("warning: a `compressor pretrain` job is running; measurements will be noisy")
    out = Path(args.out)
    for name in args.model or ["resnet18", "mobilenet_v2"]:
        result = bench(name, args.policies, args.seed,
                       latency.ProbeSettings(input_size=args.input_size),
                       latency.ProbeSettings(runs=args.runs, blocks=args.blocks),
                       args.grid_points, args.calibration, num_classes=args.num_classes,
                       policies_from=args.policies_from, searched=args.searched,
                       kernel_time=args.kernel_time)
        suffix = "" if args.input_size == 32 else f"_{args.input_size}px"
        atomic.write_json(out / f"latency_model_{name}{suffix}.json", result)
        print(f"{name} at {args.input_size} px: median |error| {result['median_error']:.1%}, max "
              f"{result['max_error']:.1%}, build {result['build_seconds']:.1f} s")
    results = [json.loads(p.read_text()) for p in sorted(out.glob("latency_model_*.json"))]
    atomic.write_text(out / "latency_model.md", report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
