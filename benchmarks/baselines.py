"""Write baselines.md and the test-accuracy curve from cached baseline checkpoints (results/baselines).

    python -m benchmarks.baselines models/resnet18-fashion-mnist.pt models/mobilenet_v2-...pt

The numbers come from the checkpoints' own metadata, recorded by `compressor pretrain`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compressor.io import atomic
from compressor.zoo.models import read_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--out", default="runs/bench/baselines")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ["| model | dataset | input | epochs | peak lr | test top-1 | train wall time | "
            "train img/s (mean, min-max per epoch) | CPU | command |", "|---" * 10 + "|"]
    notes: list[str] = []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for path in args.checkpoints:
        blob = read_checkpoint(path)
        meta = blob["metadata"]
        history = meta["history"]
        speeds = [h["images_per_second"] for h in history]
        lr = meta["train_config"]["max_lr"]
        command = (f"compressor pretrain --model {meta['model']} --dataset {meta['dataset']} "
                   f"--epochs {meta['train_config']['epochs']} --lr {lr:g}")
        rows.append(
            f"| {meta['model']} | {meta['dataset']} | {meta['input_size']} | "
            f"{meta['train_config']['epochs']} | {lr:g} | {meta['test_top1']:.2f}% | "
            f"{meta['train_seconds'] / 60:.1f} min | {sum(speeds) / len(speeds):.0f} "
            f"({min(speeds):.0f}-{max(speeds):.0f}) | {meta['machine']['cpu']}, "
            f"{meta['machine']['cores']} cores, {meta['machine']['torch_threads']} threads | "
            f"`{command}` |")
        ax.plot([h["epoch"] for h in history], [h["test_top1"] for h in history], "o-",
                label=f"{meta['model']}, lr {lr:g} ({meta['test_top1']:.2f}%)")
        notes.append(f"Test top-1 per epoch ({meta['model']}, lr {lr:g}): " + ", ".join(
            f"{h['epoch']}: {h['test_top1']:.2f}% ({h['seconds'] / 60:.1f} min)"
            for h in history))
    ax.set(xlabel="epoch", ylabel="test top-1 (%)", title="baseline test accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(args.out)
    atomic.write_via(out / "baselines.png", lambda p: fig.savefig(p, format="png", dpi=110))
    text = "\n".join(["# Baselines (dense, Fashion-MNIST)", "",
                      "Written by `python -m benchmarks.baselines models/*.pt`.", "",
                      *rows, "", *[f"- {n}" for n in notes], "",
                      "![test accuracy per epoch](baselines.png)", ""])
    atomic.write_text(out / "baselines.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
