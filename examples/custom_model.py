"""Compress your own network through the Python API: a small CNN on a Fashion-MNIST slice.

    .venv/bin/python examples/custom_model.py [--out runs/custom_model] [--budget 0.5]

Defines a CNN here (not from torchvision), trains it for about a minute with a plain DataLoader,
compresses it to a latency budget with `compressor.compress`, and checks the exported ONNX model
against the dense one with `compressor.check_budget`. Exit code 0 when the budget is met.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compressor

FASHION_MNIST_DIRS = (Path("data/fashion-mnist"), Path("/usr/share/datasets/fashion-mnist"))


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(split: str, count: int) -> TensorDataset:
    """`count` images of Fashion-MNIST's `split` ("train" or "t10k") as normalised 1x28x28."""
    for folder in FASHION_MNIST_DIRS:
        images = folder / f"{split}-images-idx3-ubyte.gz"
        if images.exists():
            x = torch.from_numpy(read_idx(images)[:count].copy()).float().div_(255)
            y = torch.from_numpy(read_idx(folder / f"{split}-labels-idx1-ubyte.gz")[:count]
                                 .astype(np.int64))
            return TensorDataset(((x - 0.286) / 0.353).unsqueeze(1), y)
    sys.exit("Fashion-MNIST not found: run `make data` (Debian's dataset-fashion-mnist)")


class SmallNet(nn.Module):
    """Four conv-BN-ReLU blocks and a linear head: 1x28x28 in, 10 logits out."""

    def __init__(self, num_classes: int = 10):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(block(1, 32, 1), block(32, 64, 2), block(64, 128, 2),
                                      block(128, 128, 1))
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def make_model(num_classes: int = 10) -> nn.Module:
    """The factory the command line can use too: `--model examples/custom_model.py:make_model`."""
    return SmallNet(num_classes)


def train(model: nn.Module, loader: DataLoader, epochs: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.1, total_steps=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/custom_model")
    p.add_argument("--budget", type=float, default=0.5, help="latency ratio of the dense model")
    p.add_argument("--train-images", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--method", default="greedy")
    args = p.parse_args()
    torch.manual_seed(0)

    train_data, test_data = fashion_mnist("train", args.train_images), fashion_mnist("t10k", 2000)
    val_data = TensorDataset(*train_data[:1000])
    train_data = TensorDataset(*train_data[1000:])
    train_loader = DataLoader(train_data, batch_size=128, shuffle=True)
    model = make_model()
    started = time.time()
    train(model, train_loader, args.epochs)
    print(f"trained SmallNet in {time.time() - started:.0f} s")

    result = compressor.compress(
        model, train=train_loader, val=DataLoader(val_data, batch_size=250),
        test=DataLoader(test_data, batch_size=500), latency_budget=args.budget,
        method=args.method, final_epochs=1, out=args.out,
        # One candidate, the default's other settings: the example has to fit in CI's minutes.
        config=compressor.CompressConfig(final=compressor.FinalConfig(candidates=1)))
    print(f"dense {result.baseline_top1:.2f}% -> pruned {result.top1:.2f}% at "
          f"{result.latency_ratio:.3f} of the dense latency ({result.verdict}); "
          f"{result.evaluations} evaluations, search {result.search_seconds:.0f} s")
    report = compressor.check_budget(result.paths["onnx"], result.paths["dense_onnx"],
                                     max_latency_ratio=args.budget)
    print(f"compressor.check_budget: {report['verdict']} (ratio {report['latency']['ratio']:.3f})")
    print("wrote " + ", ".join(str(path) for path in result.paths.values()))
    return 0 if report["verdict"] == "pass" else 1


if __name__ == "__main__":
    raise SystemExit(main())
