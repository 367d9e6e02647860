"""The model registry: any torchvision classification model by name, and cached baseline checkpoints."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import torch
import torchvision
from torch import nn

from compressor.errors import UserError
from compressor.io import atomic

BASELINE_FORMAT = "compressor-baseline-v1"


def list_classification_models() -> list[str]:
    """Names of torchvision's classification models (detection, video, etc. excluded)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_model_name(name: str) -> None:
    names = list_classification_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see `compressor models`"
        raise UserError(f"unknown model {name!r}: {hint}")


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the output layer: the last Linear, or the last Conv2d for SqueezeNet."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                last = name
    return last


def _replace_head(model: nn.Module, num_classes: int) -> None:
    name = classifier_name(model)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride,
                        bias=old.bias is not None)
    setattr(parent, attr, new)


def build_model(name: str, num_classes: int, weights: str | None = None) -> nn.Module:
    """A torchvision model by name with its head sized for `num_classes`.

    `weights` is a torchvision weights name (`IMAGENET1K_V1`, `ResNet18_Weights.IMAGENET1K_V1`,
    `DEFAULT`), loaded from the torch hub cache or its URL, or a path to a checkpoint of ours.
    """
    check_model_name(name)
    if weights is None:
        return torchvision.models.get_model(name, num_classes=num_classes)
    if Path(weights).exists():
        model, _ = load_baseline(weights, model_name=name, num_classes=num_classes)
        return model
    try:
        enum = torchvision.models.get_model_weights(name)
        spec = enum[weights.rsplit(".", 1)[-1]] if "." in weights or weights != "DEFAULT" \
            else enum.DEFAULT
    except (KeyError, ValueError):
        valid = ", ".join(w.name for w in torchvision.models.get_model_weights(name))
        raise UserError(f"unknown weights {weights!r} for {name}: choose one of {valid} "
                        "or a checkpoint path") from None
    try:
        model = torchvision.models.get_model(name, weights=spec)
    except Exception as exc:  # offline without the file in the hub cache
        raise UserError(f"cannot load {name} weights {spec.name} ({type(exc).__name__}): put "
                        f"{spec.url.rsplit('/', 1)[-1]} in {torch.hub.get_dir()}/checkpoints"
                        ) from None
    if num_classes != len(spec.meta.get("categories", [])):
        _replace_head(model, num_classes)
    return model


def baseline_path(models_dir: str | Path, model_name: str, dataset: str) -> Path:
    safe = dataset.replace(":", "-").replace("/", "_").strip("-_")
    return Path(models_dir) / f"{model_name}-{safe}.pt"


def save_baseline(path: str | Path, model: nn.Module, model_name: str, num_classes: int,
                  metadata: dict) -> Path:
    """Write a baseline checkpoint atomically: weights plus what they were trained on and how."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Plain JSON types only, so the file loads with torch.load(weights_only=True).
    metadata = json.loads(json.dumps(metadata, default=str))
    return atomic.torch_save(path, {
        "format": BASELINE_FORMAT, "model": model_name, "num_classes": num_classes,
        "state_dict": state, "metadata": metadata,
    })


def read_checkpoint(path: str | Path) -> dict:
    """Load one of our checkpoint files, turning every way it can be broken into a one-line error."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; run `compressor pretrain` to make it")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}); "
                        "delete it and run `compressor pretrain` again") from None
    if not isinstance(blob, dict) or blob.get("format") != BASELINE_FORMAT:
        raise UserError(f"{path} is not a compressor baseline checkpoint; pass one written by "
                        "`compressor pretrain`")
    return blob


def load_baseline(path: str | Path, model_name: str | None = None, num_classes: int | None = None,
                  expect: dict | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a baseline, checking it was made for this architecture, class count and data.

    `expect` maps metadata keys (e.g. input_size, data_fingerprint) to the values this run needs.
    """
    blob = read_checkpoint(path)
    if model_name is not None and blob["model"] != model_name:
        raise UserError(f"checkpoint {path} is a {blob['model']}, not a {model_name}; pass "
                        f"--model {blob['model']} or another checkpoint")
    if num_classes is not None and blob["num_classes"] != num_classes:
        raise UserError(f"checkpoint {path} has {blob['num_classes']} classes but the dataset has "
                        f"{num_classes}; pretrain a baseline for this dataset")
    metadata = blob.get("metadata", {})
    for key, value in (expect or {}).items():
        if key in metadata and metadata[key] != value:
            raise UserError(f"checkpoint {path} was made with {key}={metadata[key]}, this run uses "
                            f"{value}; delete it or match the setting")
    model = torchvision.models.get_model(blob["model"], num_classes=blob["num_classes"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError:
        raise UserError(f"checkpoint {path} does not match the {blob['model']} architecture of "
                        "this torchvision; pretrain it again") from None
    return model, metadata
