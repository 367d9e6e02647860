"""Measure gpt_tiny's decode and prefill latency in onnxruntime: dense FP32, dynamic INT8, pruned.

    python -m benchmarks.decode_latency [--past 96] [--prompt 128] [--rounds 3] [--policies 50]
                                        [--tables-only] [--out DIR]

The dense model (untrained weights: latency does not depend on them) is exported with its KV cache
(`pruning.decoder_export`) and timed alone (`measure_ms`: ms per decoded token after `--past`
cached positions, ms per prefill of `--prompt` tokens; batch 1, 1 thread). Then, each paired
against dense FP32 (`latency.decode`, `--rounds` rounds on fresh sessions): the same graph
quantized by `onnxruntime.quantization.quantize_dynamic` (MatMul only, INT8 weights, activations
quantized per run), and gpt_tiny uniformly pruned (half the heads and MLP width in every block),
with its greedy-token agreement with PyTorch. Last, the decode and prefill tables
(`measure_decode_tables`, every head count x 5 MLP widths) against paired measurements of
`--policies` random per-unit policies (`benchmarks.latency_model.random_policies`, max ratio 0.8;
a block unit at >= 0.5 removes its block): median and max |predicted - measured| / measured.
Results go to decode.json in `--out` (default runs/bench/decode). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.latency_model import random_policies
from compressor.io import atomic
from compressor.latency.decode import PHASES, DecodeProbe, DecodeShape, measure_decode_tables
from compressor.latency.probe import ProbeSettings, measure_ms
from compressor.latency.tables import channel_grid
from compressor.provenance import cpu_name, library_versions
from compressor.pruning import PruningConfig, apply_policy, build_skeleton
from compressor.pruning.attention import explicit_attention
from compressor.pruning.decoder_export import (
    decoder_onnx_bytes,
    decoder_session,
    empty_cache,
    greedy_onnx,
    read_layers,
    run_cached,
    verify_decoder,
)
from compressor.zoo.embedded import gpt_tiny

PROMPT = b"import os\nimport sys\n\n\ndef main(argv):\n    "


def dynamic_int8(fp32: bytes) -> bytes:
    """`quantize_dynamic` of a decoder graph: MatMul nodes with INT8 weights (per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as scratch:
        src, out = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
        src.write_bytes(fp32)
        quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul"],
                         weight_type=QuantType.QInt8, per_channel=True)
        return out.read_bytes()


def int8_agreement(fp32: bytes, int8: bytes, tokens: torch.Tensor, steps: int = 32) -> dict:
    """INT8 against FP32 in onnxruntime: max relative logit difference on the prompt, and the
    fraction of `steps` greedy tokens that agree."""
    a, b = decoder_session(fp32), decoder_session(int8)
    layers = read_layers(a)[0]
    want, _ = run_cached(a, tokens.numpy(), empty_cache(layers))
    got, _ = run_cached(b, tokens.numpy(), empty_cache(layers))
    prompt = tokens[0].tolist()
    same = np.mean([x == y for x, y in zip(greedy_onnx(a, prompt, steps),
                                            greedy_onnx(b, prompt, steps), strict=True)])
    return {"relative_logit_diff": float(np.abs(got - want).max() / np.abs(want).max()),
            "greedy_agreement": float(same), "steps": steps}


def rounds(probe: DecodeProbe, count: int, measure) -> dict:
    """`count` paired rounds of `measure(phase)` per phase, pooled: median ratio and block range."""
    summary = {}
    for phase in PHASES:
        results = [measure(phase) for _ in range(count)]
        blocks = [r for result in results for r in result.block_ratios]
        summary[phase] = {"ratio": statistics.median(blocks), "spread": [min(blocks), max(blocks)],
                          "round_ratios": [r.ratio for r in results],
                          "candidate_ms": statistics.median(r.candidate_ms for r in results),
                          "reference_ms": statistics.median(r.reference_ms for r in results)}
    return summary


def table_errors(plain: torch.nn.Module, dense: torch.nn.Module, tokens: torch.Tensor,
                 probe: DecodeProbe, count: int, phases: tuple[str, ...] = PHASES) -> dict:
    """Per phase: the tables' predicted ratio against the measured one on `count` random
    policies, and the median and max relative error."""
    config = PruningConfig(round_to=16)
    skeleton = build_skeleton(plain, tokens, config)
    policies = random_policies(list(skeleton.names), count, seed=0)
    found = {}
    for phase in phases:
        started = time.time()
        tables = measure_decode_tables(dense, tokens, probe.settings, probe.shape, phase,
                                       lambda heads: list(range(1, heads + 1)),
                                       lambda hidden: channel_grid(hidden, 16, 5))
        seconds = time.time() - started
        rows = []
        for policy in policies:
            predicted = tables.predict_ratio(skeleton.layer_shapes(policy))
            measured = probe.measure(apply_policy(plain, policy, tokens, config), phase).ratio
            rows.append({"predicted": predicted, "measured": measured,
                         "error": abs(predicted - measured) / measured,
                         "blocks_kept": sum(skeleton.kept_channels(policy)[u.name]
                                            for u in skeleton.units if u.kind == "block")})
        errors = [r["error"] for r in rows]
        found[phase] = {"median_error": statistics.median(errors), "max_error": max(errors),
                        "table_seconds": seconds, "rest_ms": tables.rest_ms,
                        "dense_ms": tables.dense_ms, "rows": rows}
        for kept in sorted({r["blocks_kept"] for r in rows}):
            mine = [r["error"] for r in rows if r["blocks_kept"] == kept]
            print(f"  {kept} blocks kept: {len(mine)} policies, median error "
                  f"{statistics.median(mine):.3f}, max {max(mine):.3f}", flush=True)
        print(f"{phase} tables: median error {statistics.median(errors):.3f}, max "
              f"{max(errors):.3f} over {len(rows)} policies ({seconds:.0f} s to build)",
              flush=True)
    return found


def run(past: int, prompt: int, count: int, policies: int, tables_only: bool = False,
        phases: tuple[str, ...] = PHASES) -> dict:
    torch.manual_seed(0)
    tokens = torch.tensor([list(PROMPT)])
    plain = gpt_tiny().eval()
    dense = explicit_attention(plain, tokens)
    settings = ProbeSettings(threads=1, warmup=20, runs=50, blocks=8)
    probe = DecodeProbe(dense, settings, DecodeShape(past=past, prompt=prompt))
    if tables_only:
        return {"latency_model": table_errors(plain, dense, tokens, probe, policies, phases)}
    alone = {}
    for phase in PHASES:
        timed = [measure_ms(probe.references[phase], replace(settings, statistic=s))
                 for s in ("min", "median")]
        alone[phase] = {"min_ms": timed[0].ms, "median_ms": timed[1].ms,
                        "iqr_ms": list(timed[1].iqr_ms)}
        print(f"dense FP32 {phase}: min {timed[0].ms:.3f} ms, median {timed[1].ms:.3f} ms "
              f"(IQR {timed[1].iqr_ms[0]:.3f}-{timed[1].iqr_ms[1]:.3f})", flush=True)
    int8 = dynamic_int8(probe.dense_onnx)
    quantized = {**rounds(probe, count, lambda phase: probe.measure_onnx(int8, phase)),
                 "against_fp32": int8_agreement(probe.dense_onnx, int8, tokens)}
    print(f"INT8 dynamic: {json.dumps(quantized)}", flush=True)
    units = [n for n, _ in dense.named_modules() if n.endswith(".attn") or n.endswith(".mlp.0")]
    pruned = apply_policy(dense, dict.fromkeys(units, 0.5), tokens, PruningConfig(round_to=16))
    check = verify_decoder(pruned, decoder_onnx_bytes(pruned), tokens)
    half = {**rounds(probe, count, lambda phase: probe.measure(pruned, phase)),
            "greedy_agreement": check.greedy_agreement, "relative_diff": check.relative_diff}
    print(f"uniform 0.5 (heads and MLP): {json.dumps(half)}", flush=True)
    errors = table_errors(plain, dense, tokens, probe, policies) if policies else None
    return {"model": "gpt_tiny (untrained)", "shape": asdict(probe.shape),
            "settings": settings.as_dict(), "cpu": cpu_name(), "versions": library_versions(),
            "dense_fp32": alone, "int8_dynamic": quantized, "uniform_half": half,
            "latency_model": errors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--past", type=int, default=96)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--policies", type=int, default=50)
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--tables-only", action="store_true",
                        help="only the latency model's errors")
    parser.add_argument("--out", default="runs/bench/decode")
    args = parser.parse_args(argv)
    result = run(args.past, args.prompt, args.rounds, args.policies, args.tables_only,
                 tuple(args.phases))
    atomic.write_text(Path(args.out) / "decode.json", json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
