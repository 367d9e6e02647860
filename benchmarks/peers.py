"""Benchmark: the peers' own pruning code, measured by our probe (issue 33, "Side by side").

Every comparison elsewhere in results/ is against our re-implementations of the peers' methods.
This harness runs the peers' own code instead: Torch-Pruning's `MetaPruner` (the `BasePruner`
alias of torch-pruning 1.6.1) with `GroupMagnitudeImportance(p=2)`, in two modes,

- `torch-pruning-uniform`: `global_pruning=False`, one `pruning_ratio` for every group;
- `torch-pruning-global`: `global_pruning=True`, one ranking over every group's channels,

`ignored_layers` the classifier, `round_to` compressor's (`PruningConfig().round_to`). Each point
starts from the same cached baseline compressor uses (`load_or_pretrain`, `--models-dir`), gets
compressor's own final fine-tune recipe (`pipeline.final.finetune_winner`: one-cycle SGD at
`FinalConfig.lr`, warm-up 0.1, batch `FinalConfig.batch_size`, the point's seed), is scored on
the test split, exported with `export_onnx` (checker + parity) and measured against the dense
export as `compressor check` measures a pair: `--rounds` paired rounds, each on fresh sessions of
both files, pooled; the probe batch is resolved once per model on the dense reference (>= 10 ms).
The pruning ratio is the peer's constraint: sweep it (`--ratios`) to draw each mode's top-1 vs
measured-latency curve, and read the curve at a budget with `read_curve`.

    python -m benchmarks.peers --models resnet18 --ratios 0.1 0.15 0.2 0.25 0.3 0.35 0.4 \\
        --seeds 0 1 2 --out results/peers
    python -m benchmarks.peers --models vit_tiny --ratios 0.2 0.3 0.4 0.5 0.6 0.65 0.7 0.8 \\
        --seeds 0 1 2 --out results/peers

Those ratios bracket latency 0.3 and 0.5 (latency only, untrained weights, batch 32/64, AVX-512,
round_to 16): resnet18 uniform 0.1 -> 0.60, 0.2 -> 0.47, 0.3 -> 0.31, 0.4 -> 0.23; global 0.1 ->
0.56, 0.2 -> 0.37, 0.3 -> 0.32, 0.4 -> 0.24. vit_tiny uniform 0.4 -> 0.50, 0.5 -> 0.48, 0.6 ->
0.38, 0.7 -> 0.30; global 0.4 -> 0.71, 0.5 -> 0.39, 0.6 -> 0.31, 0.7 -> 0.81 (not monotone:
Torch-Pruning rounds kept widths *down* to `round_to` and skips a group that would keep none).

A transformer (torchvision's VisionTransformer, e.g. our `vit_tiny`) is pruned as Torch-Pruning's
torchvision example does: `round_to` a multiple of the head count, `class_token` and
`pos_embedding` registered as unwrapped parameters (last dim), `hidden_dim` set after pruning. On
`nn.MultiheadAttention` Torch-Pruning prunes width only: the residual stream (so every head's
dimension) and each MLP's hidden width; whole heads it cannot remove there (its `num_heads` /
`prune_num_heads` path is for timm-style qkv Linears; given torchvision's attention modules it
leaves the residual stream unpruned). The dense reference is the one compressor's probe times (a
transformer in its explicit attention form, `pruning.explicit_attention`), so the ratios read
against the same file as compressor's; the peer's fine-tuned ViT is exported in that same form
(the rewrite is checked for equal outputs; `nn.MultiheadAttention`'s eval fast path,
`aten::_native_multi_head_attention`, has no ONNX export). A peer that fails on a model is a row
with its reason.

ModelOpt FastNAS is not a row here: `nvidia-modelopt` 0.47 needs `torchprofile==0.0.4` and is
not in this project's environment; `benchmarks.modelopt_fastnas` measures what it can reach on a
model, from an install beside the environment (results/peers-vit).

Rows go to `<out>/summary.json` (atomically, after every point); a rerun skips the (tool, model,
constraint, seed) rows already there.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from compressor import latency, pruning
from compressor.errors import CompressorError
from compressor.io import atomic
from compressor.io.export import export_onnx
from compressor.pipeline.compress import FinalConfig, example_for, real_batch
from compressor.provenance import cpu_name, library_versions, seed_everything
from compressor.training.train import TrainConfig, evaluate_top1, train
from compressor.zoo.baselines import load_or_pretrain
from compressor.zoo.datasets import DataConfig, Dataset, load_dataset
from compressor.zoo.models import classifier_name

CPU = torch.device("cpu")
TOOLS = {"torch-pruning-uniform": False, "torch-pruning-global": True}
"""Row names -> Torch-Pruning's `global_pruning`."""


class Pruned(NamedTuple):
    """A peer's pruned copy of the baseline."""

    model: nn.Module
    seconds: float
    """The peer's own time: building its pruner (tracing the graph) and its pruning step."""


def torch_pruning_prune(dense: nn.Module, example: torch.Tensor, pruning_ratio: float,
                        global_pruning: bool, round_to: int) -> Pruned:
    """Torch-Pruning's MetaPruner with L2 group magnitude on a copy of `dense` (never mutated)."""
    import torch_pruning as tp
    from torchvision.models.vision_transformer import VisionTransformer

    model = copy.deepcopy(dense).cpu().eval()
    head = model.get_submodule(classifier_name(model))
    extra: dict[str, Any] = {}
    vit = isinstance(model, VisionTransformer)
    if vit:  # Torch-Pruning's torchvision example: widths a multiple of the head count
        round_to = math.lcm(round_to, model.encoder.layers[0].num_heads)
        extra["unwrapped_parameters"] = [(model.class_token, 2), (model.encoder.pos_embedding, 2)]
    started = time.perf_counter()
    with torch.enable_grad():  # building the pruner traces with autograd (MEASURED.md)
        pruner = tp.pruner.MetaPruner(
            model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
            global_pruning=global_pruning, pruning_ratio=pruning_ratio, round_to=round_to,
            ignored_layers=[head], **extra)
        pruner.step()
    if vit:  # torchvision's forward reshapes by hidden_dim (the example sets it too)
        model.hidden_dim = model.class_token.shape[-1]
    return Pruned(model.eval(), time.perf_counter() - started)


def widths(model: nn.Module) -> dict[str, int]:
    """Output width of every Conv2d, Linear and attention module, by qualified name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
        elif isinstance(m, nn.MultiheadAttention):
            out[name] = m.embed_dim
    return out


def macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def read_curve(points: list[tuple[float, float]], budget: float) -> float | None:
    """Top-1 at latency `budget` on a curve of (latency_ratio, top1) points: linear between the
    two points that bracket it in latency (a point at the budget as it is), None when no two do
    (outside the curve).

    >>> read_curve([(0.2, 80.0), (0.4, 90.0), (0.6, 92.0)], 0.3)
    85.0
    >>> read_curve([(0.2, 80.0), (0.4, 90.0)], 0.5) is None
    True
    """
    pts = sorted(points)
    exact = [y for x, y in pts if x == budget]
    if exact:  # a point measured at the budget is read as it is
        return statistics.fmean(exact)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 < budget < x1:
            return y0 + (y1 - y0) * (budget - x0) / (x1 - x0)
    return None


def curve(rows: list[dict], tool: str, model: str) -> list[tuple[float, float]]:
    """One point per constraint of `tool` on `model`: mean latency ratio and top-1 over seeds."""
    by: dict[float, list[dict]] = {}
    for r in rows:
        if r["tool"] == tool and r["model"] == model and "error" not in r:
            by.setdefault(r["constraint"], []).append(r)
    return sorted((statistics.fmean(r["latency_ratio"] for r in rs),
                   statistics.fmean(r["test_top1"] for r in rs)) for rs in by.values())


@dataclass(frozen=True)
class PeersConfig:
    """What every point of one harness run shares (saved in each row)."""

    train_size: int | None = None
    """Training images of the final fine-tune (quick runs; None: the whole train split)."""
    test_size: int | None = None
    """Test images scored (quick runs; None: all)."""
    final_epochs: int = FinalConfig.epochs
    """Epochs of compressor's final fine-tune recipe."""
    rounds: int = 3
    """Paired latency rounds per point, each on fresh sessions (`compressor check`'s default)."""
    models_dir: str = "models"
    """Where compressor caches its baselines (the same ones compressor searches from)."""
    probe: latency.ProbeSettings = latency.ProbeSettings(blocks=FinalConfig.latency_blocks)
    """How a pair is timed (batch None: resolved once per model on the dense reference)."""


class ModelContext(NamedTuple):
    """One model's shared pieces: its baseline, data, dense reference and resolved probe."""

    name: str
    dataset: Dataset
    dense: nn.Module
    baseline_top1: float | None
    example: torch.Tensor
    batch: torch.Tensor  # real test images: export parity
    dense_onnx: Path
    settings: latency.ProbeSettings
    dense_macs: int
    dense_params: int


def load_model(name: str, config: PeersConfig, out: Path) -> ModelContext:
    """The cached baseline compressor uses, its verified dense export and the probe batch."""
    data = DataConfig(train_size=config.train_size, test_size=config.test_size)
    dataset = load_dataset(data)
    dense, meta = load_or_pretrain(name, dataset, data, TrainConfig(seed=0), config.models_dir,
                                   CPU)
    dense = dense.cpu().eval()
    example, batch = example_for(dataset), real_batch(dataset, example_for(dataset))
    macs, params = macs_and_params(dense, example)
    reference = dense
    if pruning.has_attention(dense):  # the dense form compressor's probe times
        reference = pruning.explicit_attention(dense, example)
    path = out / "onnx" / f"{name}-dense.onnx"
    export_onnx(reference, batch, path)
    settings = replace(config.probe, input_size=data.input_size)
    settings = latency.resolve_batch_size(settings, latency.make_session(path, settings))
    return ModelContext(name, dataset, dense, meta.get("test_top1"), example, batch, path,
                        settings, macs, params)


def measure(candidate: Path, ctx: ModelContext, rounds: int) -> latency.PairedLatency:
    """As `compressor check` measures a pair: rounds on fresh sessions of both, pooled."""
    return latency.pool_rounds(latency.fresh_rounds(candidate, ctx.dense_onnx, ctx.settings,
                                                    rounds))


def run_point(tool: str, ctx: ModelContext, pruning_ratio: float, seed: int,
              config: PeersConfig, out: Path) -> dict:
    """One row: the peer prunes, compressor's final fine-tune, test top-1, export, latency."""
    row: dict[str, Any] = {"tool": tool, "model": ctx.name, "constraint": pruning_ratio,
                           "seed": seed}
    seed_everything(seed)
    try:
        pruned = torch_pruning_prune(ctx.dense, ctx.example, pruning_ratio, TOOLS[tool],
                                     pruning.PruningConfig().round_to)
        pruned.model(ctx.example)  # a pruner that broke the graph fails here, as its row
    except Exception as exc:  # the peer's own code: any failure is its row's result
        return {**row, "error": f"{type(exc).__name__}: {exc}"[:300]}
    model = pruned.model
    macs, params = macs_and_params(model, ctx.example)
    fin = FinalConfig(epochs=config.final_epochs)
    started = time.perf_counter()
    if fin.epochs > 0:  # `finetune_winner`'s recipe
        train(model, ctx.dataset.train, None,
              TrainConfig(epochs=fin.epochs, max_lr=fin.lr, warmup_fraction=0.1, seed=seed,
                          batch_size=fin.batch_size), CPU, progress=False)
    model = model.cpu().eval()
    top1 = evaluate_top1(model, ctx.dataset.test.batches(500), CPU)
    finetune_seconds = time.perf_counter() - started
    path = out / "onnx" / f"{ctx.name}-{tool}-r{pruning_ratio:g}-s{seed}.onnx"
    try:
        if pruning.has_attention(model):  # exported as the dense reference is (see the docstring)
            model = pruning.explicit_attention(model, ctx.example)
        exported = export_onnx(model, ctx.batch, path)
        paired = measure(path, ctx, config.rounds)
    except CompressorError as exc:  # a failed export or measurement: the row says which
        return {**row, "search_seconds": pruned.seconds, "error": str(exc)}
    return {**row, "latency_ratio": paired.ratio, "test_top1": top1,
            "search_seconds": pruned.seconds, "macs_ratio": macs / ctx.dense_macs,
            "params_ratio": params / ctx.dense_params, "machine": cpu_name(),
            "baseline_top1": ctx.baseline_top1, "finetune_seconds": finetune_seconds,
            "latency_spread": list(paired.spread), "latency": paired.as_dict(),
            "parity": {"max_abs_diff": exported.max_abs_diff,
                       "relative_diff": exported.relative_diff},
            "widths": widths(model)}


def render_markdown(rows: list[dict], budgets: tuple[float, ...] = (0.3, 0.5)) -> str:
    """The rows as a table, and each tool's curve read at `budgets`."""
    lines = ["| tool | model | pruning ratio | seed | latency ratio (spread) | test top-1 | "
             "MACs ratio | params ratio | search s |", "|---" * 9 + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['tool']} | {r['model']} | {r['constraint']} | {r['seed']} | "
                         f"failed: {r['error']} |" + " |" * 4)
            continue
        lo, hi = r["latency_spread"]
        lines.append(f"| {r['tool']} | {r['model']} | {r['constraint']} | {r['seed']} | "
                     f"{r['latency_ratio']:.3f} ({lo:.3f}-{hi:.3f}) | {r['test_top1']:.2f} | "
                     f"{r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | "
                     f"{r['search_seconds']:.2f} |")
    lines += ["", "Curves read at the budgets (top-1 interpolated at that measured latency; "
              "- outside the curve):", "",
              "| tool | model | " + " | ".join(f"top-1 at {b}" for b in budgets) + " |",
              "|---" * (2 + len(budgets)) + "|"]
    for tool, model in dict.fromkeys((r["tool"], r["model"]) for r in rows):
        pts = curve(rows, tool, model)
        read = [read_curve(pts, b) for b in budgets]
        lines.append(f"| {tool} | {model} | "
                     + " | ".join("-" if v is None else f"{v:.2f}" for v in read) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet18"])
    p.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS))
    p.add_argument("--ratios", nargs="+", type=float, default=[0.2, 0.3, 0.4, 0.5, 0.6],
                   help="Torch-Pruning pruning_ratio values (the peer's constraint)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--train-size", type=int, default=None,
                   help="training images for the final fine-tune (quick runs)")
    p.add_argument("--test-size", type=int, default=None, help="test images scored (quick runs)")
    p.add_argument("--final-epochs", type=int, default=FinalConfig.epochs)
    p.add_argument("--rounds", type=int, default=PeersConfig.rounds,
                   help="paired latency rounds per point, each on fresh sessions")
    p.add_argument("--latency-batch-size", type=int, default=None,
                   help="images per timed run (default: the smallest at which the dense model "
                        "takes >= 10 ms)")
    p.add_argument("--latency-blocks", type=int, default=PeersConfig.probe.blocks,
                   help="alternating blocks per paired round")
    p.add_argument("--latency-runs", type=int, default=PeersConfig.probe.runs,
                   help="timed runs per block")
    p.add_argument("--models-dir", default="models")
    p.add_argument("--out", default="runs/bench/peers")
    args = p.parse_args(argv)
    out = Path(args.out)
    config = PeersConfig(train_size=args.train_size, test_size=args.test_size,
                         final_epochs=args.final_epochs, rounds=args.rounds,
                         models_dir=args.models_dir,
                         probe=replace(PeersConfig.probe, batch_size=args.latency_batch_size,
                                       blocks=args.latency_blocks, runs=args.latency_runs))
    command = "python -m benchmarks.peers " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = out / "summary.json"
    rows = json.loads(summary.read_text()) if summary.exists() else []
    finished = {(r["tool"], r["model"], r["constraint"], r["seed"]) for r in rows}
    for model in args.models:
        todo = [(tool, ratio, seed) for tool in args.tools for ratio in args.ratios
                for seed in args.seeds if (tool, model, ratio, seed) not in finished]
        if not todo:
            continue
        ctx = load_model(model, config, out)
        for tool, ratio, seed in todo:
            row = {**run_point(tool, ctx, ratio, seed, config, out), "command": command,
                   "train_size": args.train_size, "test_size": args.test_size,
                   "final_epochs": args.final_epochs, "rounds": args.rounds,
                   "probe": ctx.settings.as_dict(), "versions": library_versions()}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items()
                              if k not in ("widths", "latency", "versions", "probe")}),
                  flush=True)
            atomic.write_json(summary, rows)  # the rows first: a table failure loses nothing
            atomic.write_text(out / "peers.generated.md", render_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
