"""Text every machine has: the Python standard library's own source, as bytes, split by file.

A causal language model needs a corpus that is there without a download. The `.py` files of the
running interpreter's standard library (`sysconfig.get_paths()["stdlib"]`, about 12 MB without its
tests) are: read in sorted order, test directories and site-packages left out, each file whole in
one split (train, validation or test) chosen by a seeded hash of its path relative to the library,
so a held-out module is never seen in training. Tokens are the bytes themselves (a vocabulary of
256: a 50k BPE vocabulary would dominate a tiny model's compute).

    corpus = load_corpus(TextConfig(max_bytes=2_000_000))
    for inputs, targets in corpus.train.batches(32, context=128, seed=0, limit=100): ...
    for inputs, targets in corpus.validation.windows(32, context=128): ...   # every window once

`max_bytes` caps what is read (each split fills its share of it and files beyond are not read),
so tests read little; `fingerprint` hashes the paths and bytes of every split and, with
`python_version`, identifies the corpus a model was trained on.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from compressor.errors import UserError

VOCAB_SIZE = 256
"""Tokens are bytes."""
TEXT_SPLITS = ("train", "validation", "test")
EXCLUDED_DIRECTORIES = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                                  "__pycache__"})
"""Directories of the standard library whose files are not in the corpus: its test suites
(generated-looking data, and not what a user's code reads like) and installed packages."""


@dataclass(frozen=True)
class TextConfig:
    """Which text, how much of it and how it is split."""

    root: str | None = None
    """Directory of `.py` files; None: this interpreter's standard library."""
    max_bytes: int | None = None
    """Read at most this many bytes in all (each split its share); None: every file."""
    validation_fraction: float = 0.05
    """Share of the files (by hash) held out for validation: the search's perplexity."""
    test_fraction: float = 0.05
    """Share of the files held out for test: reported perplexity only."""
    split_seed: int = 0
    """Seed of the hash that assigns each file to its split."""


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path) -> list[str]:
    """Relative paths (POSIX) of the `.py` files under `root`, sorted, without
    `EXCLUDED_DIRECTORIES`."""
    found = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if not EXCLUDED_DIRECTORIES.intersection(relative.parts[:-1]) and path.is_file():
            found.append(relative.as_posix())
    return sorted(found)


def split_of(relative_path: str, config: TextConfig) -> str:
    """The split a file belongs to: a seeded SHA-256 of its relative path, read as a number in
    [0, 1), against the validation and test fractions. Independent of every other file, so
    adding or removing files never moves another one."""
    digest = hashlib.sha256(f"{config.split_seed}:{relative_path}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2 ** 64
    if position < config.validation_fraction:
        return "validation"
    if position < config.validation_fraction + config.test_fraction:
        return "test"
    return "train"


class TextSplit:
    """One split as a flat uint8 tensor of bytes (its files concatenated in sorted order)."""

    def __init__(self, data: torch.Tensor, files: tuple[str, ...]):
        self.data, self.files = data, files

    def __len__(self) -> int:
        return len(self.data)

    def _window_check(self, context: int) -> None:
        if len(self) < context + 1:
            raise UserError(f"a text split of {len(self)} bytes holds no window of {context} + 1 "
                            "tokens; raise max_bytes")

    def batches(self, batch_size: int, *, context: int, seed: int = 0,
                limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Windows at seeded random offsets: (inputs, targets), int64 [batch, context] each,
        targets the inputs shifted by one token. Endless unless `limit` caps the batches."""
        self._window_check(context)
        gen = torch.Generator().manual_seed(seed)
        count = 0
        while limit is None or count < limit:
            starts = torch.randint(0, len(self) - context, (batch_size,), generator=gen)
            yield self._cut(starts, context)
            count += 1

    def windows(self, batch_size: int, *, context: int, limit: int | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive non-overlapping windows from the start (evaluation: every token predicted
        once, the same ones every time), in batches of up to `batch_size`."""
        self._window_check(context)
        starts = torch.arange(0, len(self) - context, context)
        for count, first in enumerate(range(0, len(starts), batch_size)):
            if limit is not None and count >= limit:
                return
            yield self._cut(starts[first:first + batch_size], context)

    def _cut(self, starts: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.data[starts[:, None] + torch.arange(context + 1)].long()
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


@dataclass(frozen=True)
class TextCorpus:
    """The three splits of a corpus plus what identifies it."""

    train: TextSplit
    validation: TextSplit
    test: TextSplit
    fingerprint: str  # SHA-256 (16 hex digits) of every split's file paths and bytes
    python_version: str  # of the interpreter whose library was read
    root: str
    vocab_size: int = VOCAB_SIZE


def _shares(config: TextConfig) -> dict[str, float]:
    held_out = config.validation_fraction + config.test_fraction
    if not (0 < config.validation_fraction and 0 < config.test_fraction and held_out < 1):
        raise UserError(f"validation and test fractions {config.validation_fraction} and "
                        f"{config.test_fraction} must be positive and sum below 1")
    return {"train": 1 - held_out, "validation": config.validation_fraction,
            "test": config.test_fraction}


def load_corpus(config: TextConfig) -> TextCorpus:
    """Read the files into their splits (`split_of`), each split until its share of
    `max_bytes` is full (the file that fills it is cut there); a UserError for a root without
    `.py` files."""
    root = Path(config.root) if config.root else stdlib_root()
    files = source_files(root) if root.is_dir() else []
    if not files:
        raise UserError(f"no .py files under {root}; pass a directory of Python sources")
    shares = _shares(config)
    caps = {s: None if config.max_bytes is None else max(1, int(config.max_bytes * shares[s]))
            for s in TEXT_SPLITS}
    parts: dict[str, list[bytes]] = {s: [] for s in TEXT_SPLITS}
    names: dict[str, list[str]] = {s: [] for s in TEXT_SPLITS}
    filled = dict.fromkeys(TEXT_SPLITS, 0)
    digest = hashlib.sha256()
    for relative in files:
        split = split_of(relative, config)
        cap = caps[split]
        if cap is not None and filled[split] >= cap:
            continue
        data = (root / relative).read_bytes()
        data = data if cap is None else data[:cap - filled[split]]
        parts[split].append(data)
        names[split].append(relative)
        filled[split] += len(data)
        if all(caps[s] is not None and filled[s] >= caps[s] for s in TEXT_SPLITS):
            break
    splits = {}
    for split in TEXT_SPLITS:
        blob = b"".join(parts[split])
        digest.update(f"{split}:{len(blob)}:{'|'.join(names[split])}".encode())
        digest.update(blob)
        data = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else \
            torch.empty(0, dtype=torch.uint8)
        splits[split] = TextSplit(data, tuple(names[split]))
    return TextCorpus(**splits, fingerprint=digest.hexdigest()[:16],
                      python_version=platform.python_version(), root=str(root))
