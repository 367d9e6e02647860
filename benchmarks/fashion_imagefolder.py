"""Write Fashion-MNIST images, upscaled, as an ImageFolder of PNGs (`--dataset imagefolder:PATH`).

    python -m benchmarks.fashion_imagefolder runs/bench/fashion224 --train 400 --val 100 --size 224

A stand-in for a user's own 224-px data: enough to time a `compress` episode's stages at the
resolution users deploy (results/latency-224), not to train a good model. Images are taken
in the files' order, `train` from the training set and `val` from the test set, one folder per
class (`0` .. `9`), each upscaled bilinearly from 28 px to `size` px (grayscale PNG; torchvision's
ImageFolder reads it as RGB).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from compressor.zoo.datasets import FASHION_MNIST_FILES, _fashion_mnist_dir, _read_idx


def write_imagefolder(root: str | Path, train: int, val: int, size: int,
                      data_dir: str | Path = "data") -> dict[str, int]:
    """`train` + `val` PNGs under root/train/CLASS and root/val/CLASS; returns the counts."""
    source = _fashion_mnist_dir(Path(data_dir))
    counts = {}
    for split, count, images, labels in (
            ("train", train, "train_images", "train_labels"),
            ("val", val, "test_images", "test_labels")):
        pixels = _read_idx(source / FASHION_MNIST_FILES[images])[:count]
        classes = _read_idx(source / FASHION_MNIST_FILES[labels])[:count]
        for i, (image, label) in enumerate(zip(pixels, classes, strict=True)):
            folder = Path(root) / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(image, np.uint8)).resize(
                (size, size), Image.BILINEAR).save(folder / f"{i:05d}.png")
        counts[split] = len(pixels)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args(argv)
    counts = write_imagefolder(args.root, args.train, args.val, args.size, args.data_dir)
    print(f"{args.root}: {counts['train']} train, {counts['val']} val images at {args.size} px")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
