import pytest
import torch

from compressor.zoo.datasets import DataConfig, load_dataset


def _ids(split):
    # Identify images by content: a split's images should not reappear in another split.
    return {hash(img.numpy().tobytes()) for img in split.images}


def test_splits_are_disjoint_and_sized(fmnist):
    assert (len(fmnist.train), len(fmnist.search), len(fmnist.test)) == (55000, 5000, 10000)
    train, search = _ids(fmnist.train), _ids(fmnist.search)
    # Fashion-MNIST contains a few exact duplicate images, so compare index sets, not only content.
    overlap = train & search
    assert len(overlap) < 50
    assert fmnist.num_classes == 10


def test_splits_are_stable_for_a_seed_and_change_with_it():
    a = load_dataset(DataConfig(search_size=1000, split_seed=3))
    b = load_dataset(DataConfig(search_size=1000, split_seed=3))
    c = load_dataset(DataConfig(search_size=1000, split_seed=4))
    assert torch.equal(a.search.labels, b.search.labels)
    assert torch.equal(a.search.images, b.search.images)
    assert not torch.equal(a.search.images, c.search.images)
    assert a.fingerprint == c.fingerprint


def test_batches_are_normalised_three_channel_and_padded(fmnist):
    x, y = next(fmnist.train.batches(64, shuffle=True, seed=1))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1])  # grayscale replicated
    assert abs(float(x.mean())) < 0.6 and 0.5 < float(x.std()) < 1.5
    assert y.dtype == torch.int64 and int(y.max()) < 10


def test_resize_to_other_input_sizes():
    data = load_dataset(DataConfig(input_size=48, search_size=100))
    x, _ = next(data.test.batches(4))
    assert x.shape == (4, 3, 48, 48)


def test_shuffled_batches_are_seeded(fmnist):
    x1, _ = next(fmnist.train.batches(8, shuffle=True, seed=5))
    x2, _ = next(fmnist.train.batches(8, shuffle=True, seed=5))
    x3, _ = next(fmnist.train.batches(8, shuffle=True, seed=6))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)


def test_carved_indices_are_disjoint_and_cover_the_training_set():
    from compressor.zoo.datasets import _carve

    train, search = _carve(1000, 100, seed=7)
    assert len(set(train.tolist()) & set(search.tolist())) == 0
    assert sorted(train.tolist() + search.tolist()) == list(range(1000))
    assert torch.equal(search, _carve(1000, 100, seed=7)[1])


def test_missing_dataset_gives_one_line_error(tmp_path, monkeypatch):
    import pytest

    import compressor.zoo.datasets as data
    from compressor.errors import UserError

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    with pytest.raises(UserError, match="make data"):
        load_dataset(DataConfig(data_dir=str(tmp_path)))
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset(DataConfig(dataset="mnist2"))
    with pytest.raises(UserError, match="PATH/train"):
        load_dataset(DataConfig(dataset=f"imagefolder:{tmp_path}"))


def test_offline_cifar10_leaves_no_empty_folder(tmp_path):
    from compressor.errors import UserError
    from compressor.zoo.datasets import DataConfig, load_dataset

    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match="CIFAR-10 not found"):
        load_dataset(DataConfig(dataset="cifar10", data_dir=str(data_dir)))
    assert not data_dir.exists()
