"""A user's own data behind the split interface the pipeline uses (`batches`, `subset`, `len`).

`compressor.compress` takes DataLoaders or `(images, labels)` tensors; they become splits here, so
the search, the recovery and the final stage read a user's data exactly as they read the embedded
datasets. Images are used as given (already normalised, any shape the model takes).

    split = as_split(torch.utils.data.DataLoader(my_dataset, batch_size=64), "train")
    for images, labels in split.batches(64, limit=2):
        ...
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch

from compressor.errors import UserError
from compressor.zoo.datasets import Dataset

Batch = tuple[torch.Tensor, torch.Tensor]


def _checked(batch: Any, what: str) -> Batch:
    """(images, labels) from one item of a user's loader, or a one-line error naming the fix."""
    if isinstance(batch, dict):
        raise UserError(f"the {what} DataLoader yields dicts; make it yield (images, labels) pairs")
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise UserError(f"the {what} DataLoader yields {type(batch).__name__}, not (images, "
                        "labels); pass a loader of (images, labels) pairs, or pass evaluate= and "
                        "finetune= callables for data without labels")
    images, labels = batch[0], batch[1]
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise UserError(f"the {what} DataLoader yields ({type(images).__name__}, "
                        f"{type(labels).__name__}); images and labels must be tensors")
    if labels.dtype.is_floating_point or labels.dim() != 1:
        raise UserError(f"the {what} labels must be a 1-D integer tensor of class indices, got "
                        f"{labels.dtype} of shape {tuple(labels.shape)}")
    return images, labels


class TensorPairSplit:
    """`(images, labels)` tensors held in memory; batched, shuffled and sliced by us."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, what: str):
        images, labels = _checked((images, labels), what)
        if len(images) != len(labels):
            raise UserError(f"the {what} images ({len(images)}) and labels ({len(labels)}) "
                            "differ in number")
        if len(images) == 0:
            raise UserError(f"the {what} data is empty")
        self.images, self.labels, self.what = images, labels, what

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, count: int) -> TensorPairSplit:
        return TensorPairSplit(self.images[:count], self.labels[:count], self.what)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                augment: bool = False, limit: int | None = None) -> Iterator[Batch]:
        """`augment` is ignored: a user's tensors are used as given."""
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=gen) if shuffle else torch.arange(len(self))
        starts = range(0, len(self), batch_size)
        for start in itertools.islice(starts, limit):
            idx = order[start:start + batch_size]
            yield self.images[idx], self.labels[idx]


class LoaderSplit:
    """A user's DataLoader (or any re-iterable of (images, labels)); its own batch size and order.

    `batch_size`, `shuffle`, `seed` and `augment` are the loader's business: a DataLoader already
    decides them. `limit` caps the batches, `subset` the images.
    """

    def __init__(self, loader: Any, what: str, max_images: int | None = None):
        self.loader, self.what, self.max_images = loader, what, max_images

    def __len__(self) -> int:
        try:
            size = len(self.loader.dataset)
        except (AttributeError, TypeError):
            try:
                size = len(self.loader) * (getattr(self.loader, "batch_size", None) or 1)
            except TypeError:
                raise UserError(f"the {self.what} loader has no length; pass a DataLoader over a "
                                "sized dataset") from None
        return size if self.max_images is None else min(size, self.max_images)

    def subset(self, count: int) -> LoaderSplit:
        return LoaderSplit(self.loader, self.what, count if self.max_images is None
                           else min(count, self.max_images))

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                augment: bool = False, limit: int | None = None) -> Iterator[Batch]:
        seen = 0
        for count, item in enumerate(self.loader):
            if (limit is not None and count >= limit) or (
                    self.max_images is not None and seen >= self.max_images):
                return
            images, labels = _checked(item, self.what)
            if self.max_images is not None:
                images, labels = images[:self.max_images - seen], labels[:self.max_images - seen]
            seen += len(labels)
            yield images, labels


def as_split(data: Any, what: str):
    """A split from a DataLoader, an iterable of batches, or an `(images, labels)` tensor pair."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, torch.Tensor) for t in data):
        return TensorPairSplit(data[0], data[1], what)
    if hasattr(data, "__iter__") and not isinstance(data, (str, bytes, torch.Tensor)):
        return LoaderSplit(data, what)
    raise UserError(f"{what}= must be a DataLoader or an (images, labels) pair of tensors, not "
                    f"{type(data).__name__}")


def first_batch(split, what: str) -> Batch:
    for batch in split.batches(16, limit=1):
        return batch
    raise UserError(f"the {what} data yields no batches")


def user_dataset(train: Any, val: Any | None, test: Any | None, num_classes: int | None = None
                 ) -> Dataset:
    """The three splits the pipeline reads: `val` scores the search (default: 10% of a tensor
    `train`), `test` gives the reported numbers (default: `val`)."""
    train_split = as_split(train, "train")
    if val is None:
        if not isinstance(train_split, TensorPairSplit):
            raise UserError("pass val= (a DataLoader the search scores policies on) beside a "
                            "train DataLoader; only tensor data can be split for you")
        cut = max(1, len(train_split) // 10)
        images, labels = train_split.images, train_split.labels
        val_split = TensorPairSplit(images[:cut], labels[:cut], "val")
        train_split = TensorPairSplit(images[cut:], labels[cut:], "train")
    else:
        val_split = as_split(val, "val")
    test_split = as_split(test, "test") if test is not None else val_split
    labels = first_batch(train_split, "train")[1]
    classes = num_classes or int(labels.max()) + 1
    fingerprint = hashlib.sha256(first_batch(val_split, "val")[0].numpy().tobytes()).hexdigest()[:16]
    return Dataset(name="user", train=train_split, search=val_split, test=test_split,
                   num_classes=classes, fingerprint=fingerprint)
