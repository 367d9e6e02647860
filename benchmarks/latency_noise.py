"""How far apart two paired measurements of the same model land, and what margin covers that.

    python -m benchmarks.latency_noise --models resnet18 mobilenet_v2 convnext_tiny --rounds 12

The final stage accepts a fitted policy on one paired measurement and then judges the exported
model on another; the fit aims `margin` under the budget so that the second lands within it. For
each model (untrained 10-class build, 32 px, every unit pruned at `--ratio`) this measures
`--rounds` paired rounds, each with fresh sessions for both models as an export would make, and
records each round's ratio and its block spread. Then, for every ordered pair of rounds (a, b),
a policy accepted on round a right at the acceptance threshold of a margin rule would miss the
budget if round b measured over it: the miss rate of each rule is reported, with the margin it
spends. Results go to `--out`/latency_noise.json and .md. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from compressor import latency, pruning
from compressor.io import atomic
from compressor.io.export import onnx_bytes
from compressor.latency import fit
from compressor.pipeline.compress import CompressConfig
from compressor.provenance import cpu_name, library_versions
from compressor.zoo.models import build_model

RULES = {
    "fixed 4%": lambda p: 0.04,
    "max(4%, upper spread)": lambda p: max(0.04, p.spread[1] / p.ratio - 1),
    "max(4%, half range)": lambda p: fit.needed_margin(p, 0.04),  # the fit's own rule
    "max(4%, IQR)": lambda p: max(0.04, (p.iqr[1] - p.iqr[0]) / p.ratio),
}
"""Margin rules: the fraction under the budget a measurement must land to be accepted."""


def measure_rounds(model_name: str, ratio: float, rounds: int) -> dict:
    torch.manual_seed(0)
    config = CompressConfig(model=model_name)
    model = build_model(model_name, 10).eval()
    example = torch.zeros(1, 3, 32, 32)
    skeleton = pruning.build_skeleton(model, example, config.pruning, verify=False)
    pruned = pruning.apply_policy(model, dict.fromkeys(skeleton.names, ratio), example,
                                  config.pruning)
    dense_bytes, pruned_bytes = onnx_bytes(model, example), onnx_bytes(pruned, example)
    settings = replace(config.probe, input_shape=(3, 32, 32))
    batch = latency.auto_batch_size(latency.make_session(dense_bytes, settings))
    settings = replace(settings, batch_size=batch)
    measured = latency.fresh_rounds(pruned_bytes, dense_bytes, settings, rounds)
    return {"model": model_name, "ratio_pruned": ratio, "batch_size": batch,
            "dense_ms": statistics.median(p.reference_ms for p in measured),
            "rounds": [p.as_dict() for p in measured],
            "rules": _judge_rules(measured)}


def _judge_rules(measured: list[latency.PairedLatency]) -> dict:
    """Per rule: the share of ordered round pairs (a, b), a != b, where a policy accepted on
    round a at the threshold (limit = ratio_a / (1 - margin_a)) measures over it on round b."""
    out = {}
    for name, rule in RULES.items():
        margins = [rule(p) for p in measured]
        pairs = misses = 0
        for a, first in enumerate(measured):
            limit = first.ratio / (1 - margins[a])
            for b, second in enumerate(measured):
                if a != b:
                    pairs += 1
                    misses += second.ratio > limit
        out[name] = {"miss_rate": misses / pairs, "median_margin": statistics.median(margins),
                     "max_margin": max(margins)}
    return out


def _summary(doc: dict) -> str:
    lines = ["# Latency noise: a second paired measurement against the fit's margin\n",
             f"Command: `{doc['command']}`  ",
             f"Date: {doc['date']}; CPU: {doc['cpu']}; onnxruntime "
             f"{doc['versions'].get('onnxruntime')}; 1 thread, the probe's default blocks.\n",
             "Each model: every unit pruned at the given ratio, untrained weights, 32 px; each round "
             "has fresh sessions for both models. Round-to-round range is the ratio's min and max "
             "over the rounds divided by their median; block spread is one round's (max - min) / 2 "
             "of its block ratios over its ratio (median over rounds). Miss rate: share of round "
             "pairs where a policy accepted on the first at the rule's threshold measures over the "
             "budget on the second.\n",
             "| model | batch | dense ms | ratio (median) | round-to-round range | block spread "
             "| " + " | ".join(f"{r} miss rate (median margin)" for r in RULES) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(RULES)]
    for row in doc["rows"]:
        ratios = [r["ratio"] for r in row["rounds"]]
        mid = statistics.median(ratios)
        spread = statistics.median((r["spread"][1] - r["spread"][0]) / 2 / r["ratio"]
                                   for r in row["rounds"])
        rules = " | ".join(f"{v['miss_rate']:.1%} ({v['median_margin']:.1%})"
                           for v in row["rules"].values())
        lines.append(f"| {row['model']} | {row['batch_size']} | {row['dense_ms']:.1f} | {mid:.3f} "
                     f"| {min(ratios) / mid:.3f}-{max(ratios) / mid:.3f} | {spread:.1%} "
                     f"| {rules} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2", "convnext_tiny"])
    p.add_argument("--ratio", type=float, default=0.3, help="every unit's pruning ratio")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--out", default="runs/bench/latency-noise")
    args = p.parse_args(argv)
    words = sys.argv[1:] if argv is None else argv
    doc = {"command": "python -m benchmarks.latency_noise " + " ".join(words),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": cpu_name(),
           "versions": library_versions(), "rows": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        started = time.time()
        doc["rows"].append(measure_rounds(name, args.ratio, args.rounds))
        print(f"{name}: {time.time() - started:.0f} s", flush=True)
        atomic.write_text(out / "latency_noise.json", json.dumps(doc, indent=1))
        atomic.write_text(out / "latency_noise.md", _summary(doc))
    print(_summary(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
