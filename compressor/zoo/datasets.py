"""Datasets by name, split three ways (train / search / test), served as tensor batches.

Fashion-MNIST and CIFAR-10 fit in memory as uint8 tensors, so batches are cut, padded and normalised
with a few tensor ops instead of a per-image PIL pipeline: on a 2-core machine a DataLoader's worker
processes would compete with the model for the same cores. `imagefolder:PATH` (ImageNet-style
train/ and val/ folders) goes through torchvision's ImageFolder and a DataLoader.

The `search` split is carved from the training set with a seeded permutation: the agent's reward is
measured on it, never on `test`, which is kept for reported numbers.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F

from compressor.errors import UserError
from compressor.flags import flag

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# Per-channel statistics of the training sets (grayscale is replicated to three channels).
STATS = {
    "fashion-mnist": ((0.2860,) * 3, (0.3530,) * 3),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
SPLITS = ("train", "search", "test")


@dataclass(frozen=True)
class DataConfig:
    """Which data, where it lives and how it is split."""

    dataset: Annotated[str, flag("--dataset")] = "fashion-mnist"
    """`fashion-mnist` (embedded default), `cifar10`, or `imagefolder:PATH` (PATH/train, PATH/val)."""
    data_dir: Annotated[str, flag("--data-dir")] = "data"
    """Where dataset files are looked for (and downloaded to, when a download is possible)."""
    input_size: Annotated[int, flag("--input-size")] = 32
    """Side of the square network input. 28 px images are zero-padded to 32 (see README)."""
    search_size: Annotated[int, flag("--search-size")] = 5000
    """Images carved from the training set for the agent's reward (the `search` split)."""
    split_seed: int = 0
    """Seed of the permutation that carves `search` out of the training set."""
    train_size: Annotated[int | None, flag("--train-size")] = None
    """Use only this many training images (quick runs and tests; None: all)."""
    test_size: Annotated[int | None, flag("--test-size")] = None
    """Use only this many test images (quick runs and tests; None: all)."""


class TensorSplit:
    """One split held in memory as uint8 images [N, C, H, W] and int64 labels [N]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, input_size: int):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.input_size = input_size
        self.num_classes = int(labels.max()) + 1 if len(labels) else 0

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, count: int) -> TensorSplit:
        """The first `count` images (splits are already shuffled): a small slice for tests."""
        return TensorSplit(self.images[:count], self.labels[:count], self.mean.flatten().tolist(),
                           self.std.flatten().tolist(), self.input_size)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        side = x.shape[-1]
        if side != self.input_size:
            pad = self.input_size - side
            if pad > 0 and pad % 2 == 0:
                # Zero padding keeps every original pixel; Fashion-MNIST's background is 0 anyway.
                x = F.pad(x, (pad // 2,) * 4)
            else:
                x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True,
                                  align_corners=False)
        return (x - self.mean) / self.std

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                augment: bool = False, limit: int | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float batches; `augment` adds random horizontal flips; `limit` caps the batches."""
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=gen) if shuffle else torch.arange(len(self))
        count = 0
        for start in range(0, len(self), batch_size):
            if limit is not None and count >= limit:
                return
            idx = order[start:start + batch_size]
            x = self._prepare(self.images[idx])
            if augment:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x[flip] = x[flip].flip(-1)
            yield x.contiguous(), self.labels[idx]
            count += 1


@dataclass(frozen=True)
class Dataset:
    """The three splits of one dataset plus what identifies it."""

    name: str
    train: object
    search: object
    test: object
    num_classes: int
    fingerprint: str

    def split(self, name: str):
        return {"train": self.train, "search": self.search, "test": self.test}[name]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _fashion_mnist_dir(data_dir: Path) -> Path:
    """Files already present, else Debian's package, else torchvision's downloader."""
    for candidate in (data_dir / "fashion-mnist", data_dir, DEBIAN_FASHION_MNIST,
                      data_dir / "FashionMNIST" / "raw"):
        if all((candidate / f).exists() for f in FASHION_MNIST_FILES.values()):
            return candidate
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(data_dir), train=True, download=True)
        FashionMNIST(str(data_dir), train=False, download=True)
    except Exception as exc:  # no network, registry-only machines: say how to get the files
        raise UserError(
            f"Fashion-MNIST not found in {data_dir}/fashion-mnist or {DEBIAN_FASHION_MNIST} and the "
            f"download failed ({type(exc).__name__}); run `make data` (apt-get install "
            "dataset-fashion-mnist) or copy the four *-ubyte.gz files into "
            f"{data_dir}/fashion-mnist") from None
    return data_dir / "FashionMNIST" / "raw"


def _load_fashion_mnist(data_dir: Path):
    root = _fashion_mnist_dir(data_dir)
    try:
        arrays = {key: _read_idx(root / name) for key, name in FASHION_MNIST_FILES.items()}
    except (OSError, EOFError, ValueError) as exc:
        raise UserError(f"Fashion-MNIST files in {root} are unreadable ({exc}); "
                        "delete them and run `make data` again") from None
    return (arrays["train_images"][:, None], arrays["train_labels"],
            arrays["test_images"][:, None], arrays["test_labels"])


def _load_cifar10(data_dir: Path):
    root = data_dir / "cifar-10-batches-py"
    if not root.exists():
        existed = data_dir.exists()
        try:
            from torchvision.datasets import CIFAR10

            CIFAR10(str(data_dir), train=True, download=True)
        except Exception as exc:
            if not existed:  # a failed download leaves no empty folder behind
                shutil.rmtree(data_dir, ignore_errors=True)
            raise UserError(f"CIFAR-10 not found in {root} and the download failed "
                            f"({type(exc).__name__}); put the python version of CIFAR-10 "
                            f"(cifar-10-batches-py) under {data_dir}") from None

    def read(names):
        images, labels = [], []
        for name in names:
            with open(root / name, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch["labels"])
        return np.concatenate(images), np.asarray(labels, dtype=np.int64)

    train_x, train_y = read([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = read(["test_batch"])
    return train_x, train_y, test_x, test_y


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _carve(n: int, search_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0 < search_size < n:
        raise UserError(f"--search-size {search_size} must be between 1 and {n - 1}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[search_size:], order[:search_size]


def load_dataset(config: DataConfig) -> Dataset:
    """Load `config.dataset` and split it into disjoint, seeded train / search / test splits."""
    name = config.dataset
    if name.startswith("imagefolder:"):
        return _load_imagefolder(config)
    loaders = {"fashion-mnist": _load_fashion_mnist, "cifar10": _load_cifar10}
    if name not in loaders:
        raise UserError(f"unknown dataset {name!r}; choose fashion-mnist, cifar10 or "
                        "imagefolder:PATH")
    train_x, train_y, test_x, test_y = loaders[name](Path(config.data_dir))
    mean, std = STATS[name]
    train_x, train_y = torch.from_numpy(train_x.copy()), torch.from_numpy(train_y.astype(np.int64))
    test_x, test_y = torch.from_numpy(test_x.copy()), torch.from_numpy(test_y.astype(np.int64))
    train_idx, search_idx = _carve(len(train_y), config.search_size, config.split_seed)

    def split(x, y):
        return TensorSplit(x, y, mean, std, config.input_size)

    # Shuffle the test set once (seeded) so that a `subset` of it is a fair sample of every class.
    test_order = torch.randperm(len(test_y), generator=torch.Generator().manual_seed(1))
    train_idx, test_order = train_idx[:config.train_size], test_order[:config.test_size]
    return Dataset(
        name=name,
        train=split(train_x[train_idx], train_y[train_idx]),
        search=split(train_x[search_idx], train_y[search_idx]),
        test=split(test_x[test_order], test_y[test_order]),
        num_classes=int(train_y.max()) + 1,
        fingerprint=_fingerprint(train_y.numpy(), test_y.numpy(), train_x[:1000].numpy()),
    )


class FolderSplit:
    """An ImageFolder (or a subset of one) served through a DataLoader, same interface as TensorSplit."""

    def __init__(self, dataset, indices=None):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.dataset)

    def subset(self, count: int) -> FolderSplit:
        indices = self.indices if self.indices is not None else torch.arange(len(self.dataset))
        return FolderSplit(self.dataset, indices[:count])

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                augment: bool = False, limit: int | None = None):
        from torch.utils.data import DataLoader, Subset

        data = Subset(self.dataset, self.indices.tolist()) if self.indices is not None else self.dataset
        loader = DataLoader(data, batch_size=batch_size, shuffle=shuffle, num_workers=2,
                            generator=torch.Generator().manual_seed(seed))
        for count, (x, y) in enumerate(loader):
            if limit is not None and count >= limit:
                return
            if augment:
                flip = torch.rand(len(y)) < 0.5
                x[flip] = x[flip].flip(-1)
            yield x, y


def _load_imagefolder(config: DataConfig) -> Dataset:
    from torchvision import datasets, transforms

    root = Path(config.dataset.split(":", 1)[1]).expanduser()
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise UserError(f"{root / sub} is missing: imagefolder:PATH needs PATH/train and "
                            "PATH/val with one folder of images per class")
    mean, std = STATS["imagefolder"]
    resize = int(round(config.input_size * 256 / 224))
    transform = transforms.Compose([
        transforms.Resize(resize), transforms.CenterCrop(config.input_size),
        transforms.ToTensor(), transforms.Normalize(mean, std),
    ])
    try:
        train = datasets.ImageFolder(str(root / "train"), transform=transform)
        test = datasets.ImageFolder(str(root / "val"), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"{root} holds no readable images ({exc}); expected PATH/train/CLASS/*.jpg"
                        ) from None
    train_idx, search_idx = _carve(len(train), config.search_size, config.split_seed)
    test_order = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))
    train_idx, test_order = train_idx[:config.train_size], test_order[:config.test_size]
    labels = np.asarray(train.targets)
    return Dataset(
        name=config.dataset,
        train=FolderSplit(train, train_idx), search=FolderSplit(train, search_idx),
        test=FolderSplit(test, test_order), num_classes=len(train.classes),
        fingerprint=_fingerprint(labels, np.frombuffer("".join(train.classes).encode(), np.uint8)),
    )


def example_input(config: DataConfig, batch_size: int = 1) -> torch.Tensor:
    """A zero tensor of the network's input shape (for tracing and export)."""
    return torch.zeros(batch_size, 3, config.input_size, config.input_size)
