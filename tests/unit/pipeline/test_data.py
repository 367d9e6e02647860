"""A user's DataLoaders and tensors behind the split interface, with one-line errors."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from compressor.errors import UserError
from compressor.pipeline.data import LoaderSplit, TensorPairSplit, as_split, user_dataset


def _tensors(n=40, shape=(1, 12, 20)):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=gen), torch.randint(0, 7, (n,), generator=gen)


def test_tensor_pair_batches_shuffle_and_limit():
    split = as_split(_tensors(), "train")
    assert isinstance(split, TensorPairSplit) and len(split) == 40
    batches = list(split.batches(16, shuffle=True, seed=1, limit=2))
    assert [len(y) for _, y in batches] == [16, 16]
    again = list(split.batches(16, shuffle=True, seed=1, limit=2))
    assert torch.equal(batches[0][1], again[0][1])  # seeded: the same images every time
    assert len(split.subset(5)) == 5


def test_loader_split_keeps_the_loader_batches_and_caps_images():
    loader = DataLoader(TensorDataset(*_tensors()), batch_size=16)
    split = as_split(loader, "val")
    assert isinstance(split, LoaderSplit) and len(split) == 40
    assert [len(y) for _, y in split.batches(999)] == [16, 16, 8]
    assert sum(len(y) for _, y in split.subset(20).batches(999)) == 20
    assert len(list(split.batches(999, limit=1))) == 1


def test_user_dataset_carves_val_from_tensors_and_tests_on_val():
    data = user_dataset(_tensors(), None, None)
    assert len(data.search) == 4 and len(data.train) == 36 and data.test is data.search
    assert data.num_classes >= 1


@pytest.mark.parametrize("loader, match", [
    ([torch.zeros(4, 3, 8, 8)], "not \\(images, labels\\)"),
    ([{"image": torch.zeros(2), "label": torch.zeros(2)}], "yields dicts"),
    ([(torch.zeros(4, 3, 8, 8), torch.zeros(4))], "integer tensor of class indices"),
])
def test_loaders_without_labels_are_one_line_errors(loader, match):
    with pytest.raises(UserError, match=match):
        list(as_split(loader, "train").batches(4))


def test_a_train_loader_needs_val():
    loader = DataLoader(TensorDataset(*_tensors()), batch_size=16)
    with pytest.raises(UserError, match="pass val="):
        user_dataset(loader, None, None)


def test_neither_loader_nor_tensors_is_refused():
    with pytest.raises(UserError, match="DataLoader or an \\(images, labels\\) pair"):
        as_split(42, "train")
