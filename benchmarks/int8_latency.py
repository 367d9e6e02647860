"""Benchmark the INT8 latency prediction the search uses: predicted vs measured INT8 ratio.

    python -m benchmarks.int8_latency --model resnet18 --policies 30 --seed 0 [--mode mixed]

The prediction is `Plan.latency_ratio` with `--quantize int8`: per-layer INT8 tables times the dense
INT8/FP32 ratio (`pipeline.int8`); beside it the former prediction, the FP32 latency model's ratio
turned into the INT8 model's by the INT8/FP32 curve measured before the search. Random
per-unit policies (the latency model benchmark's) are pruned, exported, quantized in the chosen
format and measured paired against the dense FP32 model; the FP32 pruned network is measured too, so
the error of the curve and that of the FP32 model can be told apart. With `--mode mixed` each
policy's network keeps FP32 the layers the tables price faster in FP32 (`--quantize mixed`), and
is measured so. Results go to latency_<model>[-mixed].json and latency.md in `--out` (default
runs/bench/int8-latency; the committed study is results/int8). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.latency_model import TARGETS, random_policies
from compressor import latency, pruning
from compressor.budgets.kinds import BudgetConfig
from compressor.io import atomic
from compressor.io.export import onnx_bytes
from compressor.pipeline.compress import CompressConfig, plan
from compressor.provenance import cpu_name, library_versions
from compressor.quantize import QuantizeConfig
from compressor.zoo.models import build_model


def _error(predicted: float, measured: float) -> float:
    return abs(predicted - measured) / measured


def run(model_name: str, count: int, seed: int, mode: str = "int8") -> dict:
    torch.manual_seed(seed)
    config = CompressConfig(model=model_name, budget=BudgetConfig(latency=0.5),
                            quantize=QuantizeConfig(mode=mode))
    model = build_model(model_name, 10).eval()
    example = torch.zeros(1, 3, 32, 32)
    started = time.time()
    found = plan(model, example, config, model_name)
    plan_seconds = time.time() - started
    if found.int8.format is None:
        return {"model": model_name, "warning": found.int8.choice.warning}
    settings = replace(config.probe, batch_size=found.latency_model.batch_size,
                       input_shape=(3, 32, 32))
    convert = found.int8.converter((settings.batch_size, 3, 32, 32), example)
    reference = latency.make_session(onnx_bytes(model, example), settings)
    rows = []
    for policy in random_policies(found.skeleton.names, count, seed):
        pruned = pruning.apply_policy(model, policy, example, config.pruning)
        fp32 = onnx_bytes(pruned, example)
        fp32_measured = latency.measure_pair(latency.make_session(fp32, settings), reference,
                                             settings).ratio
        int8_measured = latency.measure_pair(
            latency.make_session(convert(fp32, pruned), settings), reference, settings).ratio
        shapes = found.skeleton.layer_shapes(policy)
        fp32_predicted = found.latency_model.predict_ratio(shapes)
        rows.append({"fp32_predicted": fp32_predicted, "fp32_measured": fp32_measured,
                     "int8_predicted": found.latency_ratio(policy),
                     "int8_curve_predicted": found.int8.curve.ratio(fp32_predicted),
                     "int8_measured": int8_measured,
                     "int8_with_measured_fp32": found.int8.curve.ratio(fp32_measured),
                     "fp32_layers": len(found.int8.fp32_layers(shapes))})
    errors = {
        "int8": [_error(r["int8_predicted"], r["int8_measured"]) for r in rows],
        "int8_curve": [_error(r["int8_curve_predicted"], r["int8_measured"]) for r in rows],
        "fp32": [_error(r["fp32_predicted"], r["fp32_measured"]) for r in rows],
        "curve_alone": [_error(r["int8_with_measured_fp32"], r["int8_measured"]) for r in rows]}
    return {"model": model_name, "mode": mode, "policies": count, "seed": seed, "cpu": cpu_name(),
            "versions": library_versions(), "batch_size": settings.batch_size,
            "plan_seconds": plan_seconds, "int8": found.int8.as_dict(),
            "errors": {k: {"median": statistics.median(v), "max": max(v)}
                       for k, v in errors.items()},
            "rows": rows}


def write_markdown(out: Path, command: str) -> None:
    results = [json.loads(p.read_text()) for p in sorted(out.glob("latency_*.json"))]
    lines = ["# INT8 latency prediction vs measurement", "",
             "Prediction (`INT8 tables`): per-layer INT8 latency tables times the dense "
             "INT8/FP32 ratio (`compressor/pipeline/int8.py`). Beside it the former prediction "
             "(`curve`): the FP32 latency model's ratio through the INT8/FP32 curve measured "
             "before the search. Measured: the pruned network quantized in the chosen format, "
             "paired against dense FP32. Errors are |predicted - measured| / measured. `curve "
             "alone` applies the curve to the *measured* FP32 ratio (the curve's own error).", "",
             f"Command: `{command}` (one per model)", "",
             "| model | CPU | batch | format (dense INT8 ratio) | policies | INT8 tables median / "
             "max | curve median / max | FP32 model median / max | curve alone median / max | "
             "goal (5% / 10%, INT8 tables) |",
             "|---" * 10 + "|"]
    for r in results:
        if "errors" not in r:
            lines.append(f"| {r['model']} | | | {r.get('warning')} | | | | | | |")
            continue
        e = r["errors"]
        choice = r["int8"]["choice"]
        dense = next(t["ratio"] for t in choice["trials"] if t["format"] == choice["chosen"])
        met = e["int8"]["median"] <= TARGETS["median"] and e["int8"]["max"] <= TARGETS["max"]
        name = r["model"] + (" (mixed)" if r.get("mode") == "mixed" else "")
        lines.append(
            f"| {name} | {r['cpu']} | {r['batch_size']} | {choice['chosen']} ({dense:.3f}) "
            f"| {r['policies']} | {e['int8']['median']:.1%} / {e['int8']['max']:.1%} | "
            f"{e['int8_curve']['median']:.1%} / {e['int8_curve']['max']:.1%} | "
            f"{e['fp32']['median']:.1%} / {e['fp32']['max']:.1%} | "
            f"{e['curve_alone']['median']:.1%} / {e['curve_alone']['max']:.1%} | "
            f"{'met' if met else 'missed'} |")
    atomic.write_text(out / "latency.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--policies", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("int8", "mixed"), default="int8")
    p.add_argument("--out", default="runs/bench/int8-latency")
    args = p.parse_args(argv)
    out = Path(args.out)
    result = run(args.model, args.policies, args.seed, args.mode)
    suffix = "-mixed" if args.mode == "mixed" else ""
    atomic.write_json(out / f"latency_{args.model}{suffix}.json", result)
    command = "python -m benchmarks.int8_latency " + " ".join(
        sys.argv[1:] if argv is None else argv)
    write_markdown(out, command)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "int8")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
