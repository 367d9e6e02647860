"""Shared fixtures: real Fashion-MNIST slices (no network, no GPU)."""

from __future__ import annotations

import pytest
import torch

from compressor.zoo.datasets import DataConfig, load_dataset

# One thread: tests share 2 cores with each other's fixtures and other jobs; two threads on a
# busy machine were measured 10x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fmnist():
    """The whole Fashion-MNIST dataset, split (train / search / test), at 32x32, 3 channels."""
    return load_dataset(DataConfig(dataset="fashion-mnist", input_size=32, search_size=5000))


@pytest.fixture(scope="session")
def fmnist_batch(fmnist):
    """16 real, normalised test images [16, 3, 32, 32] and their labels."""
    return next(fmnist.test.batches(16))


@pytest.fixture(scope="session")
def fmnist_loader(fmnist):
    """A re-iterable of 8 real training batches of 32 (a small slice for recovery and Taylor)."""
    return list(fmnist.train.batches(32, shuffle=True, seed=0, limit=8))


@pytest.fixture(scope="session")
def stdlib_text():
    """A 400 kB slice of the Python standard library's source, split by file (train 360 kB,
    validation and test 20 kB each): real text for the language-model tests."""
    from compressor.zoo.text import TextConfig, load_corpus

    return load_corpus(TextConfig(max_bytes=400_000))
