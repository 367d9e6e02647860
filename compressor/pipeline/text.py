"""A causal language model's task: the stdlib corpus as the pipeline's dataset, its reward, its
recoveries and the perplexity the report gives.

The search, the final stage and the export read a dataset through splits (`batches`, `subset`,
`len`) and score a network through the evaluator's `score` / `finetune` hooks; a text task is
those four things for a causal LM (token ids [batch, tokens] in, logits [batch, tokens, vocab]
out):

- the splits serve (inputs, targets) windows of `context` bytes, targets shifted by one
  (`zoo.text`); `len` counts windows;
- the search score is minus the next-token cross-entropy (nats per token) on fixed validation
  windows, and the reward (`search.env`, "cross-entropy") is that score;
- a recovery is `finetune_steps` of AdamW on the LM loss (`training.language.train_lm`) on
  fixed, seeded training windows, and the final fine-tune is the same loop for longer;
- the reported test number is top-1 of the next byte (%, where an image model reports top-1),
  with the test perplexity and bits per byte beside the dense model's in the report.

Latency is timed on the network's own forward at batch 1 over `context` tokens: the prefill of
a prompt of that length. The workload is looked up by name (`LATENCY_WORKLOADS`), so a decode
workload (KV cache in and out) can be registered beside it without the pipeline changing.

    task = TextTask.build(load_corpus(TextConfig(max_bytes=400_000)), context=128,
                          config=TextTaskConfig())
    score = task.score(model)              # minus validation cross-entropy
    task.finetune(model, steps=10)         # a recovery
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

import torch
from torch import nn

from compressor.errors import UserError
from compressor.flags import flag
from compressor.latency.decode import DecodeShape
from compressor.training.language import LMConfig, LMScore, evaluate_lm, train_lm
from compressor.zoo.datasets import Dataset
from compressor.zoo.text import TextCorpus, TextSplit

Batch = tuple[torch.Tensor, torch.Tensor]

RECOVERY_SEED = 12345
"""Seed of the training windows every recovery (and the final fine-tune) reads."""


@dataclass(frozen=True)
class TextTaskConfig:
    """How a causal LM is scored and recovered in a search (the text task's own section)."""

    eval_windows: Annotated[int, flag("--lm-eval-windows")] = 64
    """Validation windows scored per episode (64 x 128 bytes: 8 k tokens)."""
    test_windows: Annotated[int | None, flag("--lm-test-windows")] = None
    """Test windows of the reported numbers (None: every window of the test split)."""
    batch_size: Annotated[int, flag("--lm-batch-size")] = 16
    """Windows per recovery and fine-tune step."""
    lr: Annotated[float, flag("--lm-lr")] = 1e-3
    """Peak AdamW learning rate of the recoveries (no warm-up, cosine to a tenth)."""
    final_lr: Annotated[float, flag("--lm-final-lr")] = 5e-4
    """Peak AdamW learning rate of the final fine-tune (5% warm-up)."""
    latency_workload: Annotated[str, flag("--lm-latency")] = "prefill"
    """What the latency budget times (`LATENCY_WORKLOADS`): prefill = the forward over the
    full context at batch 1."""
    decode: DecodeShape = field(default_factory=DecodeShape)
    """What `--decode-budget` and `--prefill-budget` time (`latency.decode`, KV-cache graph)."""
    decode_grid_points: Annotated[int, flag("--decode-grid-points")] = 4
    """Head counts (from 1) and MLP widths (steps of `round_to`) per block in the decode and
    prefill tables, bilinear in between."""
    decode_table_runs: Annotated[int, flag("--decode-table-runs")] = 300
    """Wall-clock runs per decode / prefill table entry (the fastest counts)."""


def prefill_example(context: int) -> torch.Tensor:
    """The input a prefill of `context` tokens is timed on: token ids [1, context]."""
    return torch.zeros(1, context, dtype=torch.long)


LATENCY_WORKLOADS: dict[str, Callable[[int], torch.Tensor]] = {"prefill": prefill_example}
"""Latency workload name -> the example input (from the context length) the probe and the
latency model time the exported forward on. A decode workload registers here."""


def latency_example(name: str, context: int) -> torch.Tensor:
    if name not in LATENCY_WORKLOADS:
        raise UserError(f"unknown LM latency workload {name!r}; choose from "
                        f"{', '.join(sorted(LATENCY_WORKLOADS))}")
    return LATENCY_WORKLOADS[name](context)


class TokenSplit:
    """A text split as the pipeline reads a dataset split: (inputs, targets) int64 windows of
    `context` tokens; `len` is the number of non-overlapping windows (capped by `windows`)."""

    def __init__(self, split: TextSplit, context: int, windows: int | None = None):
        self.split, self.context, self.windows = split, context, windows

    def __len__(self) -> int:
        count = max(0, (len(self.split) - 1) // self.context)
        return count if self.windows is None else min(count, self.windows)

    def subset(self, count: int) -> TokenSplit:
        return TokenSplit(self.split, self.context,
                          count if self.windows is None else min(count, self.windows))

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                augment: bool = False, limit: int | None = None) -> Iterator[Batch]:
        """Consecutive windows from the start (`shuffle` False), else windows at seeded random
        offsets, one pass of `len` windows unless `limit` caps the batches. `augment` is
        ignored: text is not augmented."""
        passes = -(-len(self) // batch_size)
        limit = passes if limit is None else limit
        if shuffle:
            yield from self.split.batches(batch_size, context=self.context, seed=seed,
                                          limit=limit)
            return
        left = len(self)
        for inputs, targets in self.split.windows(batch_size, context=self.context, limit=limit):
            if left <= 0:
                return
            yield inputs[:left], targets[:left]
            left -= len(inputs)


def text_dataset(corpus: TextCorpus, context: int) -> Dataset:
    """The corpus as the pipeline's dataset: train, search (= validation) and test splits."""
    for split in ("train", "validation", "test"):
        if len(getattr(corpus, split)) < context + 1:
            raise UserError(f"the {split} split of the text corpus has {len(getattr(corpus, split))}"
                            f" bytes, fewer than one window of {context} + 1; raise --text.max-bytes")
    return Dataset(name="stdlib", train=TokenSplit(corpus.train, context),
                   search=TokenSplit(corpus.validation, context),
                   test=TokenSplit(corpus.test, context), num_classes=corpus.vocab_size,
                   fingerprint=corpus.fingerprint)


class TextTask:
    """The scoring and recoveries of one causal LM search (fixed windows: every episode is
    scored on the same tokens and recovered on the same batches)."""

    def __init__(self, dataset: Dataset, context: int, config: TextTaskConfig,
                 device: torch.device):
        self.dataset, self.context, self.config, self.device = dataset, context, config, device
        self.validation = list(dataset.search.subset(config.eval_windows).batches(64))
        self._last: tuple[nn.Module, LMScore] | None = None

    def score(self, model: nn.Module) -> float:
        """The search score: minus the validation cross-entropy (nats per token)."""
        return -evaluate_lm(model, self.validation, self.device).cross_entropy

    def test(self, model: nn.Module) -> LMScore:
        """Cross-entropy, perplexity and next-token top-1 on the test windows (the last model's
        score is remembered: the report asks again for what the final stage scored)."""
        if self._last is not None and self._last[0] is model:
            return self._last[1]
        windows = self.dataset.test if self.config.test_windows is None else \
            self.dataset.test.subset(self.config.test_windows)
        scored = evaluate_lm(model, windows.batches(64), self.device)
        self._last = (model, scored)
        return scored

    def test_top1(self, model: nn.Module) -> float:
        """The reported test number: top-1 of the next token (%)."""
        return self.test(model).top1

    def _train(self, model: nn.Module, steps: int, config: LMConfig) -> None:
        batches = self.dataset.train.batches(self.config.batch_size, shuffle=True,
                                             seed=RECOVERY_SEED, limit=steps)
        train_lm(model, batches, steps, config, self.device)
        model.cpu().eval()

    def recover(self, model: nn.Module, steps: int) -> None:
        """`steps` of LM loss at the recovery rate, without warm-up."""
        self._train(model, steps, LMConfig(lr=self.config.lr, warmup_steps=0))

    def final_finetune(self, model: nn.Module, steps: int) -> None:
        """The winner's fine-tune: `steps` of LM loss at the final rate, 5% warm-up."""
        self._train(model, steps, LMConfig(lr=self.config.final_lr,
                                           warmup_steps=max(1, steps // 20)))

    def summary(self, model: nn.Module, dense: LMScore) -> dict:
        """The report's language-model section: test numbers of `model` beside the dense's."""
        shipped = self.test(model)
        return {"test_perplexity": shipped.perplexity, "test_cross_entropy": shipped.cross_entropy,
                "test_bits_per_byte": shipped.bits_per_token, "test_next_byte_top1": shipped.top1,
                "dense_test_perplexity": dense.perplexity,
                "dense_test_cross_entropy": dense.cross_entropy,
                "dense_test_bits_per_byte": dense.bits_per_token,
                "dense_test_next_byte_top1": dense.top1,
                "perplexity_change": shipped.perplexity / dense.perplexity - 1,
                "test_tokens": shipped.tokens, "context": self.context,
                "latency_workload": f"{self.config.latency_workload} of {self.context} tokens "
                                    "at batch 1"}


def lm_headline(summary: dict, latency_ratio: float | None) -> str:
    """The report's one line for a causal LM.

    >>> lm_headline({"test_perplexity": 3.3, "dense_test_perplexity": 3.0,
    ...              "perplexity_change": 0.1, "latency_workload": "prefill"}, 0.45)
    'test perplexity 3.300 (dense 3.000, +10.0%) at 0.450 of the dense latency (prefill)'
    """
    return (f"test perplexity {summary['test_perplexity']:.3f} (dense "
            f"{summary['dense_test_perplexity']:.3f}, {summary['perplexity_change']:+.1%})"
            + (f" at {latency_ratio:.3f} of the dense latency ({summary['latency_workload']})"
               if latency_ratio is not None else ""))


__all__ = ["LATENCY_WORKLOADS", "TextTask", "TextTaskConfig", "TokenSplit", "latency_example",
           "lm_headline", "prefill_example", "text_dataset"]
