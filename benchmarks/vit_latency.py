"""Two questions about a small ViT's latency in onnxruntime (results/vit-latency):

1. Does a block's latency step with its MLP width or head count (as convs step with the
   16-channel block)? One encoder block alone, pruned to every width in steps of 4 and every
   head count, timed by kernel time (`latency.model._time_graph`, all nodes).
2. What does onnxruntime's transformer optimizer fuse on our exported `ExplicitAttention` graph,
   is it faster, and is a pruned ViT with a different head count per block still correct?

    python -m benchmarks.vit_latency --out results/vit-latency    # ~1 minute on 2 cores
    python -m benchmarks.latency_model --model vit32 --policies 50 --blocks 6 --runs 10 \
        --calibration 0 --out results/vit-latency                    # ~4 minutes
    python -m benchmarks.vit_latency --summary results/vit-latency   # summary.json of both

The ViT is benchmarks.latency_model's `vit32` (torchvision, 32 px, patch 4: 65 tokens, width 96,
4 heads, MLP 192, 6 blocks), batch 16 (what `auto_batch_size` picked for it), 1 thread.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.latency_model import VITS, benchmark_model
from compressor import latency, pruning
from compressor.io import atomic
from compressor.io.export import onnx_bytes
from compressor.latency import model as lm
from compressor.latency.blocks import block_sites
from compressor.provenance import cpu_name, library_versions
from compressor.pruning.transformer import find_blocks, pruned_block

SETTINGS = latency.ProbeSettings(batch_size=16, runs=10, blocks=8)
MIXED_HEADS = {"encoder.layers.encoder_layer_0.self_attention": 0.5,
               "encoder.layers.encoder_layer_1.self_attention": 0.75,
               "encoder.layers.encoder_layer_2": 0.5,
               "encoder.layers.encoder_layer_3.mlp.0": 0.5,
               "encoder.layers.encoder_layer_4.self_attention": 0.25}
"""A pruned ViT with 2, 1, -, 4, 3, 4 heads (block 2 removed): what fusion must get right."""


def kernel_ms(data: bytes, shape: tuple[int, ...], profile_dir: str) -> dict[str, float]:
    """Kernel time (ms) per op type: each node's fastest of ~40 runs, summed by op type."""
    import onnxruntime as ort

    options = lm.session_options(SETTINGS)
    options.enable_profiling, options.profile_file_prefix = True, f"{profile_dir}/p"
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(
        shape).astype(np.float32)}
    for _ in range(40):
        session.run(None, feed)
    path = Path(session.end_profiling())
    runs: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for event in json.loads(path.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            runs.setdefault(event["name"], []).append(event["dur"] / 1000.0)
            ops[event["name"]] = event["args"]["op_name"]
    path.unlink()
    per_op: collections.Counter = collections.Counter()
    for name, times in runs.items():
        per_op[ops[name]] += min(times[2:])
    return dict(per_op.most_common())


def steps(dense: torch.nn.Module, x: torch.Tensor, profile_dir: str) -> dict:
    """Kernel time of one block alone over MLP widths (step 4) and head counts."""
    block = find_blocks(dense, x)[0]
    site, inputs = block_sites(dense, x)
    site, block_input = site[0], inputs[block.name]
    shape = (SETTINGS.batch_size, *block_input.shape[1:])

    def timed(heads: int, hidden: int) -> float:
        data = onnx_bytes(pruned_block(dense, block, heads, hidden), block_input)
        return round(sum(kernel_ms(data, shape, profile_dir).values()), 4)

    widths = {w: timed(site.heads, w) for w in range(site.hidden // 2, site.hidden + 1, 4)}
    heads = {h: timed(h, site.hidden) for h in range(1, site.heads + 1)}
    rounded = [w for w in widths if w % 16 == 0]
    # A width between two multiples of 16 against the next multiple: >= 1 means the kernels
    # charge the next multiple (rounding to 16 loses nothing).
    against_next = [widths[w] / widths[min(r for r in rounded if r >= w)]
                    for w in widths if w % 16 and any(r >= w for r in rounded)]
    return {"block_ms_by_mlp_width": widths, "block_ms_by_heads": heads,
            "between_multiples_of_16_over_the_next_multiple": {
                "median": float(np.median(against_next)), "min": min(against_next),
                "max": max(against_next)}}


def fusion(dense: torch.nn.Module, x: torch.Tensor, profile_dir: str) -> dict:
    """onnxruntime.transformers' optimizer on the dense and a mixed-head pruned export."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    pruned = pruning.apply_policy(dense, MIXED_HEADS, x, pruning.PruningConfig(round_to=16))
    batch = torch.randn(SETTINGS.batch_size, *x.shape[1:],
                        generator=torch.Generator().manual_seed(1))
    shape = tuple(batch.shape)
    found = {}
    for name, net in (("dense", dense), ("mixed heads", pruned)):
        data = onnx_bytes(net, x)
        fused = {}
        for model_type in ("bert", "vit"):
            optimized = optimize_model(onnx.load_from_string(data), model_type=model_type,
                                       num_heads=0, hidden_size=0, opt_level=0)
            fused[model_type] = {k: v for k, v in
                                 optimized.get_fused_operator_statistics().items() if v}
        fused_data = optimized.model.SerializeToString()
        with torch.no_grad():
            want = net(batch).numpy()
        got = ort.InferenceSession(fused_data, providers=["CPUExecutionProvider"]).run(
            None, {"input": batch.numpy()})[0]
        plain, merged = kernel_ms(data, shape, profile_dir), kernel_ms(fused_data, shape,
                                                                        profile_dir)
        paired = latency.measure_pair(latency.make_session(fused_data, SETTINGS),
                                      latency.make_session(data, SETTINGS), SETTINGS)
        found[name] = {
            "heads": [m.num_heads for m in net.modules()
                      if isinstance(m, pruning.ExplicitAttention)],
            "fused_ops": fused, "parity_max_relative": float(
                np.abs(got - want).max() / np.abs(want).max()),
            "kernel_ms_unfused": sum(plain.values()), "kernel_ms_fused": sum(merged.values()),
            "kernel_ms_by_op_unfused": plain, "kernel_ms_by_op_fused": merged,
            "fused_over_unfused_paired_wall": paired.ratio,
            "fused_over_unfused_spread": list(paired.spread)}
    return found


def summary(out: Path, model: str = "vit32") -> dict:
    """The rows behind results/vit-latency/README.md, from the two benchmarks' files."""
    errors = json.loads((out / f"latency_model_{model}.json").read_text())
    found = json.loads((out / f"vit_latency_{model}.json").read_text())
    rows = [{k: row[k] for k in ("measured", "predicted", "error", "kernel_ratio", "macs")}
            | {"per_layer_tables": row["variants"]["per-layer tables (no block tables)"],
               "spread": row["spread"]} for row in errors["rows"]]
    return {"busy_machine": True, "model": model, "config": found["config"], "cpu": found["cpu"],
            "load_average": {"latency_model": [errors["load_average_before"],
                                               errors["load_average_after"]],
                             "vit_latency": [found["load_average_before"],
                                             found["load_average_after"]]},
            "latency_model": {"median_error": errors["median_error"],
                              "max_error": errors["max_error"],
                              "ablations": errors["ablations"],
                              "batch_size": errors["latency_model"]["batch_size"],
                              "build_seconds": errors["build_seconds"],
                              "command": errors["command"]},
            "steps": found["steps"], "uniform_policies_vs_kernel_time": found["uniform"],
            "fusion": {name: {k: v for k, v in row.items() if not k.startswith("kernel_ms_by")}
                       for name, row in found["fusion"].items()},
            "versions": found["versions"], "rows": rows}


def uniform(dense: torch.nn.Module, x: torch.Tensor, profile_dir: str, rounds: int = 2
            ) -> list[dict]:
    """The block-table latency model against the kernel-time ratio (each node's fastest run,
    summed) of ViTs pruned the same way in every block, `rounds` times: what the model gets
    right by structure, with less of the load's noise than a wall-time ratio."""
    config = pruning.PruningConfig(round_to=16)
    skeleton = pruning.build_skeleton(dense, x, config)
    model = lm.build_latency_model(dense, x, SETTINGS, round_to=16, grid_points=4)
    blocks = [u.name for u in skeleton.units if u.kind == "block"]
    heads = [u.name for u in skeleton.units if u.kind == "heads"]
    mlps = [u.name for u in skeleton.units if u.kind == "mlp"]
    cases = {"every second block removed": {b: 0.5 for b in blocks[1::2]},
             "2 of 4 heads": dict.fromkeys(heads, 0.5), "1 of 4 heads": dict.fromkeys(heads, 0.75),
             "MLP 96 of 192": dict.fromkeys(mlps, 0.5), "MLP 16 of 192": dict.fromkeys(mlps, 0.9),
             "1 head, MLP 16": dict.fromkeys(heads, 0.75) | dict.fromkeys(mlps, 0.9)}
    shape = (SETTINGS.batch_size, *x.shape[1:])

    def kernel(net: torch.nn.Module) -> float:
        return sum(kernel_ms(onnx_bytes(net, x), shape, profile_dir).values())

    rows = []
    for i in range(rounds):
        reference = kernel(dense)
        for name, policy in cases.items():
            measured = kernel(pruning.apply_policy(dense, policy, x, config)) / reference
            predicted = model.predict_ratio(skeleton.layer_shapes(policy))
            rows.append({"round": i, "policy": name, "kernel_ratio": measured,
                         "predicted": predicted, "error": predicted / measured - 1})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit32", choices=sorted(VITS))
    parser.add_argument("--out", default="runs/bench/vit-latency")
    parser.add_argument("--summary", type=Path, help="write DIR/summary.json from the files of "
                        "both benchmarks in DIR, and nothing else")
    args = parser.parse_args(argv)
    if args.summary:
        atomic.write_json(args.summary / "summary.json", summary(args.summary, args.model))
        return 0
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = benchmark_model(args.model)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts it at zero
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dense = pruning.explicit_attention(model.eval(), x)
    started, load = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as profile_dir:
        result = {"model": args.model, "config": VITS[args.model],
                  "settings": SETTINGS.as_dict(), "steps": steps(dense, x, profile_dir),
                  "fusion": fusion(dense, x, profile_dir),
                  "uniform": uniform(dense, x, profile_dir)}
    result.update({"seconds": time.time() - started, "load_average_before": load,
                   "load_average_after": os.getloadavg(), "cpu": cpu_name(),
                   "cores": os.cpu_count(), "versions": library_versions(),
                   "command": f"python -m benchmarks.vit_latency --model {args.model}"})
    atomic.write_json(Path(args.out) / f"vit_latency_{args.model}.json", result)
    print(json.dumps({k: result[k] for k in ("steps", "uniform", "seconds")}, indent=1))
    for name, row in result["fusion"].items():
        print(name, row["heads"], row["fused_ops"]["bert"], f"parity {row['parity_max_relative']:.1e}",
              f"kernel {row['kernel_ms_fused']:.2f} vs {row['kernel_ms_unfused']:.2f} ms",
              f"paired wall {row['fused_over_unfused_paired_wall']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
