"""The dense baseline every search starts from: trained once per model and dataset, then cached."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from compressor.errors import UserError
from compressor.provenance import provenance, seed_everything
from compressor.training.language import LMConfig, LMScore, evaluate_lm, train_lm
from compressor.training.train import TrainConfig, evaluate_top1, pretraining_warning, train
from compressor.zoo import models
from compressor.zoo.datasets import DataConfig, Dataset
from compressor.zoo.embedded import EMBEDDED
from compressor.zoo.text import TextCorpus

log = logging.getLogger(__name__)


def expected_metadata(data_config: DataConfig, dataset: Dataset) -> dict:
    """What a cached baseline must have been trained on to be reused by this run."""
    return {"input_size": data_config.input_size, "data_fingerprint": dataset.fingerprint,
            "dataset": dataset.name}


def with_recipe(model_name: str, config: TrainConfig) -> TrainConfig:
    """`config` with the fields it leaves at their defaults taken from the model's own recipe
    (`zoo.embedded`; a ViT does not learn at the CNN recipe's SGD rates): what a user sets wins.

    >>> config = with_recipe("vit_tiny", TrainConfig(epochs=2))
    >>> config.optimizer, config.epochs, with_recipe("resnet18", config) == config
    ('adamw', 2, True)
    """
    recipe = EMBEDDED[model_name].recipe if model_name in EMBEDDED else {}
    defaults, known = TrainConfig(), {f.name for f in fields(TrainConfig)}
    return replace(config, **{k: v for k, v in recipe.items()
                              if k in known and getattr(config, k) == getattr(defaults, k)})


def pretrain(model_name: str, dataset: Dataset, data_config: DataConfig, train_config: TrainConfig,
             path: Path, device: torch.device, weights: str | None = None,
             progress: bool = True) -> tuple[nn.Module, dict]:
    """Train a baseline and cache it at `path` with its metadata (resumable per epoch).

    The input size is checked with one forward pass before any training (`check_input_size`).
    A baseline far below the recipe's accuracy is logged as a warning and recorded under the
    metadata's "warning" key (`pretraining_warning`).
    """
    train_config = with_recipe(model_name, train_config)
    seed_everything(train_config.seed)
    model = models.build_model(model_name, dataset.num_classes, weights)
    size = data_config.input_size
    models.check_input_size(model, torch.zeros(1, 3, size, size), model_name)
    partial = path.with_name(f".{path.stem}.partial.pt")
    started = time.time()
    result = train(model, dataset.train, dataset.test, train_config, device,
                   resume_path=partial, progress=progress)
    for images, _ in dataset.test.batches(16, limit=1):
        try:
            models.check_finite_outputs(model, images, f"the {model_name} baseline")
        except UserError:
            partial.unlink(missing_ok=True)  # a rerun must not resume the diverged weights
            raise
    top1 = result.history[-1].test_top1
    metadata = {
        **expected_metadata(data_config, dataset),
        "model": model_name, "test_top1": top1, "seed": train_config.seed,
        "train_config": asdict(train_config), "weights": weights,
        "train_seconds": result.seconds, "wall_seconds": time.time() - started,
        "history": [asdict(r) for r in result.history], "lr_attempts": result.attempts,
        **provenance(),
    }
    warning = pretraining_warning(top1, dataset.num_classes) if top1 is not None else None
    if warning is not None:
        log.warning("%s: %s", model_name, warning)
        metadata["warning"] = warning
    models.save_baseline(path, model, model_name, dataset.num_classes, metadata)
    partial.unlink(missing_ok=True)
    return model.cpu(), metadata


def load_or_pretrain(model_name: str, dataset: Dataset, data_config: DataConfig,
                     train_config: TrainConfig, models_dir: str | Path, device: torch.device,
                     checkpoint: str | None = None, say=log.info, trust_checkpoint: bool = False
                     ) -> tuple[nn.Module, dict]:
    """The cached baseline for this model and dataset, pretraining it first when it is missing.

    `checkpoint` may be one of our baselines, a state dict for `model_name`, or, with
    `trust_checkpoint`, a whole module saved with `torch.save(model)`.
    """
    models.check_model_name(model_name)
    if checkpoint is not None:
        return models.load_any_checkpoint(checkpoint, model_name, dataset.num_classes,
                                          trusted=trust_checkpoint)
    path = models.baseline_path(models_dir, model_name, dataset.name)
    expect = expected_metadata(data_config, dataset)
    if path.exists():
        return models.load_baseline(path, model_name, dataset.num_classes, expect)
    say(f"No cached baseline at {path}: pretraining {model_name} on {dataset.name} for "
        f"{with_recipe(model_name, train_config).epochs} epochs. This happens once; later runs "
        "reuse the cache.")
    return pretrain(model_name, dataset, data_config, train_config, path, device)


def test_top1(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 500
              ) -> float:
    return evaluate_top1(model.to(device), dataset.test.batches(batch_size), device)


TEXT_DATASET = "stdlib"
"""The name a causal LM's baselines are cached under (`zoo.text`: the standard library's source)."""


class LMRecipe(NamedTuple):
    """How a causal LM of ours is pretrained (`training.language.train_lm`)."""

    steps: int
    batch_size: int  # windows of `context` tokens per step
    config: LMConfig


def lm_recipe(model_name: str, steps: int | None = None) -> LMRecipe:
    """The model's recipe (`zoo.embedded`) as the LM loop's settings; `steps` overrides its own.

    >>> recipe = lm_recipe("gpt_tiny", steps=100)
    >>> recipe.steps, recipe.batch_size, recipe.config.lr, recipe.config.warmup_steps
    (100, 32, 0.001, 5)
    """
    recipe = EMBEDDED[model_name].recipe
    steps = recipe["steps"] if steps is None else steps
    if steps < 1:
        raise UserError(f"--steps {steps}: a pretrain needs at least one step")
    return LMRecipe(steps, recipe["batch_size"], LMConfig(
        lr=recipe["max_lr"], weight_decay=recipe["weight_decay"],
        warmup_steps=max(1, round(recipe["warmup_fraction"] * steps))))


def text_metadata(corpus: TextCorpus) -> dict:
    """What a cached causal LM must have been trained on to be reused by this run."""
    return {"dataset": TEXT_DATASET, "data_fingerprint": corpus.fingerprint,
            "python_version": corpus.python_version}


def lm_scores(model: nn.Module, corpus: TextCorpus, context: int, device: torch.device,
              windows: int | None = None) -> dict[str, LMScore]:
    """Validation and test scores over every window (or the first `windows` of each)."""
    limit = None if windows is None else -(-windows // 64)
    return {split: evaluate_lm(model, getattr(corpus, split).windows(64, context=context,
                                                                     limit=limit), device)
            for split in ("validation", "test")}


def pretrain_lm(model_name: str, corpus: TextCorpus, path: Path, device: torch.device, *,
                steps: int | None = None, seed: int = 0, eval_windows: int | None = None
                ) -> tuple[nn.Module, dict]:
    """Train a causal LM of ours on `corpus` by its recipe and cache it at `path` with its test
    perplexity, bits per byte, minutes, corpus fingerprint and Python version.

    Batches are windows at seeded random offsets of the train split; the scores are over every
    held-out window (`eval_windows` caps them, for tests)."""
    recipe = lm_recipe(model_name, steps)
    seed_everything(seed)
    model = models.build_model(model_name, corpus.vocab_size)
    context = model.context
    started, cpu_started = time.time(), time.process_time()
    losses = train_lm(model, corpus.train.batches(recipe.batch_size, context=context, seed=seed),
                      recipe.steps, recipe.config, device)
    train_seconds, cpu_seconds = time.time() - started, time.process_time() - cpu_started
    models.check_finite_outputs(model, torch.zeros(1, context, dtype=torch.long),
                                f"the {model_name} baseline")
    scores = lm_scores(model, corpus, context, device, eval_windows)
    test = scores["test"]
    every = max(1, len(losses) // 100)
    metadata = {
        **text_metadata(corpus), "model": model_name, "task": "text", "seed": seed,
        "context": context, "steps": recipe.steps, "batch_size": recipe.batch_size,
        "lm_config": asdict(recipe.config), "corpus_bytes": {
            s: len(getattr(corpus, s)) for s in ("train", "validation", "test")},
        "test_perplexity": test.perplexity, "test_cross_entropy": test.cross_entropy,
        "test_bits_per_byte": test.bits_per_token, "test_next_byte_top1": test.top1,
        "test_tokens": test.tokens, "validation_perplexity": scores["validation"].perplexity,
        "validation_cross_entropy": scores["validation"].cross_entropy,
        "train_seconds": train_seconds, "train_minutes": train_seconds / 60,
        # CPU time too: on a shared machine the wall clock says how busy it was.
        "train_cpu_minutes": cpu_seconds / 60,
        "wall_seconds": time.time() - started, "torch_threads": torch.get_num_threads(),
        "loss_curve": {str(i): losses[i] for i in range(0, len(losses), every)},
        "final_train_loss": losses[-1], **provenance(),
    }
    models.save_baseline(path, model, model_name, corpus.vocab_size, metadata)
    return model.cpu().eval(), metadata


def load_or_pretrain_lm(model_name: str, corpus: TextCorpus, models_dir: str | Path,
                        device: torch.device, checkpoint: str | None = None, seed: int = 0,
                        say=log.info) -> tuple[nn.Module, dict]:
    """The cached causal LM for this corpus, pretrained first when it is missing."""
    if checkpoint is not None:
        return models.load_any_checkpoint(checkpoint, model_name, corpus.vocab_size)
    path = models.baseline_path(models_dir, model_name, TEXT_DATASET)
    if path.exists():
        return models.load_baseline(path, model_name, corpus.vocab_size, text_metadata(corpus))
    say(f"No cached baseline at {path}: pretraining {model_name} on the standard library's "
        f"source for {lm_recipe(model_name).steps} steps. This happens once; later runs reuse "
        "the cache.")
    return pretrain_lm(model_name, corpus, path, device, seed=seed)
