"""The dense baseline every search starts from: trained once per model and dataset, then cached."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from compressor.errors import UserError
from compressor.provenance import provenance, seed_everything
from compressor.training.train import TrainConfig, evaluate_top1, pretraining_warning, train
from compressor.zoo import models
from compressor.zoo.datasets import DataConfig, Dataset
from compressor.zoo.embedded import EMBEDDED

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
    defaults = TrainConfig()
    return replace(config, **{k: v for k, v in recipe.items()
                              if getattr(config, k) == getattr(defaults, k)})


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
