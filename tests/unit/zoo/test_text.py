"""The standard library as a byte corpus: split by whole file, deterministically and disjointly,
fingerprinted, capped, and served as shifted token windows."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from compressor.errors import UserError
from compressor.zoo.text import (
    TEXT_SPLITS,
    VOCAB_SIZE,
    TextConfig,
    load_corpus,
    source_files,
    split_of,
    stdlib_root,
)


def test_the_split_is_by_whole_file_deterministic_and_disjoint(stdlib_text):
    again = load_corpus(TextConfig(max_bytes=400_000))
    files = {s: set(getattr(stdlib_text, s).files) for s in TEXT_SPLITS}
    assert all(files.values())
    assert not files["train"] & files["validation"] and not files["train"] & files["test"]
    assert not files["validation"] & files["test"]
    for split in TEXT_SPLITS:
        assert getattr(again, split).files == getattr(stdlib_text, split).files
        assert torch.equal(getattr(again, split).data, getattr(stdlib_text, split).data)
        assert all(split_of(f, TextConfig()) == split for f in files[split])
    assert again.fingerprint == stdlib_text.fingerprint and len(stdlib_text.fingerprint) == 16
    # The cap is shared out by fraction: 90% train, 5% validation, 5% test.
    assert (len(stdlib_text.train), len(stdlib_text.validation), len(stdlib_text.test)) == \
        (360_000, 20_000, 20_000)
    # A file's split depends on its path and the seed only; about 5% of files go to each
    # held-out split.
    every = source_files(stdlib_root())
    splits = [split_of(f, TextConfig()) for f in every]
    assert splits != [split_of(f, TextConfig(split_seed=1)) for f in every]
    assert 0.02 < splits.count("validation") / len(every) < 0.08
    assert 0.02 < splits.count("test") / len(every) < 0.08


def test_the_corpus_is_the_standard_library_without_its_tests():
    files = source_files(stdlib_root())
    assert "os.py" in files and "json/decoder.py" in files
    assert not any(part in ("test", "tests", "site-packages") for f in files
                   for part in f.split("/")[:-1])
    assert files == sorted(files)


def test_another_seed_or_other_text_changes_the_fingerprint(stdlib_text, tmp_path):
    reseeded = load_corpus(TextConfig(max_bytes=400_000, split_seed=1))
    assert reseeded.fingerprint != stdlib_text.fingerprint
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("skipped = True\n")
    for i in range(40):
        (tmp_path / f"m{i}.py").write_text(f"x = {i}\n" * 10)
    own = load_corpus(TextConfig(root=str(tmp_path)))
    everything = own.train.files + own.validation.files + own.test.files
    assert sorted(everything) == [f"m{i}.py" for i in sorted(range(40), key=lambda i: f"m{i}")]
    assert own.vocab_size == VOCAB_SIZE == 256
    with pytest.raises(UserError, match="no .py files"):
        load_corpus(TextConfig(root=str(tmp_path / "tests" / "none")))
    with pytest.raises(UserError, match="fractions"):
        load_corpus(dataclasses.replace(TextConfig(root=str(tmp_path)), test_fraction=0.96))


def test_batches_are_seeded_windows_whose_targets_are_the_next_bytes(stdlib_text):
    inputs, targets = next(stdlib_text.train.batches(4, context=32, seed=3))
    assert inputs.shape == targets.shape == (4, 32) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert 0 <= int(inputs.min()) and int(inputs.max()) < VOCAB_SIZE
    same, _ = next(stdlib_text.train.batches(4, context=32, seed=3))
    other, _ = next(stdlib_text.train.batches(4, context=32, seed=4))
    assert torch.equal(inputs, same) and not torch.equal(inputs, other)
    assert len(list(stdlib_text.train.batches(4, context=32, limit=3))) == 3


def test_evaluation_windows_cover_the_split_in_order_once(stdlib_text):
    windows = list(stdlib_text.validation.windows(8, context=100))
    inputs = torch.cat([x for x, _ in windows])
    assert len(inputs) == (len(stdlib_text.validation) - 100 + 99) // 100
    text = bytes(torch.cat([inputs.flatten(), windows[-1][1][-1, -1:]]).tolist())
    assert stdlib_text.validation.data[:len(text)].numpy().tobytes() == text
    with pytest.raises(UserError, match="max_bytes"):
        next(stdlib_text.validation.windows(1, context=len(stdlib_text.validation)))
