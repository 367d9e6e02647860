"""The model registry: any torchvision classification model by name, and cached baseline checkpoints."""

from __future__ import annotations

import difflib
import json
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

from compressor.errors import UserError
from compressor.io import atomic
from compressor.zoo.embedded import EMBEDDED, build_embedded
from compressor.zoo.factories import build_from_factory, is_factory_spec

BASELINE_FORMAT = "compressor-baseline-v1"

CONSTRUCTOR_OVERRIDES: dict[str, dict] = {
    # Auxiliary heads make train mode return GoogLeNetOutputs / InceptionOutputs, which neither
    # cross-entropy nor the exporter takes; init_weights=True is torchvision's old default and
    # silences its warning about the default changing.
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
"""Constructor arguments an untrained model is built with, by torchvision name."""


def list_classification_models() -> list[str]:
    """Names of our embedded models (`zoo.embedded`) and torchvision's classification models
    (detection, video, etc. excluded)."""
    return [*EMBEDDED, *sorted(torchvision.models.list_models(module=torchvision.models))]


def task_of(name: str) -> str:
    """"text" for a causal LM of ours (`zoo.embedded`), else "image" (what every other name is)."""
    return EMBEDDED[name].task if name in EMBEDDED else "image"


def check_model_name(name: str, task: str | None = "image") -> None:
    """A torchvision classification name, one of ours (`zoo.embedded`) for `task` (None: any),
    or a factory spec (checked when it is built)."""
    if is_factory_spec(name):
        return
    if name in EMBEDDED and task is not None and EMBEDDED[name].task != task:
        raise UserError(f"{name} is a causal language model: `compressor pretrain`, `compress`, "
                        "`apply` and `units` take it (and `check` its ONNX files); this command "
                        "takes image classifiers only for now")
    names = list_classification_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see `compressor models`"
        raise UserError(f"unknown model {name!r}: {hint}")


def named_logits(output) -> torch.Tensor | None:
    """The logits of a forward pass's output: the tensor itself, or the one an output object or
    dict names `logits` (Hugging Face models return a `ModelOutput` with `.logits`); else None."""
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits",
                                                                              None)
    return logits if isinstance(logits, torch.Tensor) else None


class LogitsOf(nn.Module):
    """A model whose output names its logits (`named_logits`), seen as one that returns them: the
    search, the pruning backend and the ONNX export all want a bare [batch, classes] tensor. Its
    layers are named `model.<name>`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return named_logits(self.model(x))


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
    """A model of ours (`zoo.embedded`) or torchvision's by name, its head sized for
    `num_classes`.

    `weights` is a torchvision weights name (`IMAGENET1K_V1`, `ResNet18_Weights.IMAGENET1K_V1`,
    `DEFAULT`), loaded from the torch hub cache or its URL, or a path to a checkpoint of ours.
    Models with auxiliary heads (googlenet, inception_v3) are built without them
    (`CONSTRUCTOR_OVERRIDES`; torchvision drops them itself after loading pretrained weights).
    """
    check_model_name(name, task=None)
    if is_factory_spec(name):
        if weights is not None and not Path(weights).exists():
            raise UserError(f"--weights {weights} names torchvision weights; a factory model "
                            "takes a checkpoint path")
        if weights is None:
            return build_from_factory(name, num_classes)
    if name in EMBEDDED:
        if weights is not None and not Path(weights).exists():
            raise UserError(f"--weights {weights} names torchvision weights; {name} is ours and "
                            "takes a checkpoint path")
        if weights is None:
            return build_embedded(name, num_classes)
    if weights is None:
        return torchvision.models.get_model(name, num_classes=num_classes,
                                            **CONSTRUCTOR_OVERRIDES.get(name, {}))
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


_EXPECTED_SIZE = re.compile(r"[Ee]xpected (?:image size |size )?(\d+)(?:x\d+)? but got (\d+)")


def check_input_size(model: nn.Module, example_input: torch.Tensor, name: str) -> None:
    """Run one forward pass of `model` in eval mode on `example_input` (its train/eval mode is
    restored); a model that refuses the input's shape is a one-line UserError naming the fix.

    Cheap (no gradients) and meant to run before any training: ViT-style models accept only the
    size they were built for and assert deep inside their forward pass. The expected size is read
    from the model's message when it gives one ("Wrong image height! Expected 224 but got 32!").
    """
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input)
    except Exception as exc:  # models refuse shapes with asserts, RuntimeErrors, ValueErrors
        text = " ".join(str(exc).split()) or type(exc).__name__
        shape = "x".join(str(d) for d in example_input.shape[2:])
        match = _EXPECTED_SIZE.search(text)
        if match:
            size = match.group(1)
            raise UserError(f"{name} takes {size}x{size} inputs only; pass --input-size {size}"
                            ) from None
        raise UserError(f"{name} refused a {shape} input ({type(exc).__name__}: {text[:160]}); "
                        "pass a larger --input-size (e.g. 224) or choose another model") from None
    finally:
        model.train(was_training)


def check_finite_outputs(model: nn.Module, images: torch.Tensor, what: str) -> None:
    """One eval-mode forward pass on real `images`; NaN or infinite outputs are a UserError.

    A diverged network can keep finite weights and a finite training loss and still overflow in
    eval mode (BatchNorm's running statistics): its accuracy is chance and every later stage
    (the search's rewards, export parity) would fail on NaNs, so it is refused here, naming the fix.
    """
    was_training = model.training
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            outputs = model.eval()(images.to(device))
    finally:
        model.train(was_training)
    if not torch.isfinite(outputs).all():
        raise UserError(f"{what} gives NaN or infinite outputs on test images (its training "
                        "diverged); pretrain it again with a lower --lr, e.g. --lr 0.05")


def load_full_module(path: str | Path, *, trusted: bool) -> nn.Module:
    """A whole module a user saved with `torch.save(model)`, in eval mode.

    Reading it unpickles arbitrary code, so it is refused unless the caller vouches for the file
    (`trusted=True` in the API, `--trust-checkpoint` in the CLI). A file holding a state dict is
    refused with the way to use it instead.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; pass the file you saved with "
                        "torch.save(model)")
    if not trusted:
        raise UserError(f"loading the whole module in {path} runs any code its pickle holds; if "
                        "you made the file yourself, pass --trust-checkpoint (trusted=True in the "
                        "API)")
    try:
        # The caller trusts this file (above): a whole module can only be read by unpickling it.
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"cannot read model file {path} ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:160]}); save it with torch.save(model)"
                        ) from None
    if isinstance(blob, nn.Module):
        return blob.eval()
    if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise UserError(f"{path} holds a state dict, not a module; pass --model with the "
                        "torchvision name of its architecture together with it, or save the "
                        "module itself with torch.save(model)")
    raise UserError(f"{path} holds a {type(blob).__name__}, not a module; save the module itself "
                    "with torch.save(model)")


def state_dict_versions(model: nn.Module) -> dict[str, dict]:
    """The state dict's per-module `_metadata` (state-dict versions) as plain dicts, which
    `torch.load(weights_only=True)` reads back. torchvision's loaders need them: MNASNet refuses a
    state dict without them ("version should be set to 1 or 2 instead of None")."""
    metadata = getattr(model.state_dict(), "_metadata", None) or {}
    return {prefix: dict(values) for prefix, values in metadata.items()}


def with_versions(tensors: dict[str, torch.Tensor], versions: dict[str, dict] | None
                  ) -> OrderedDict:
    """A state dict for `load_state_dict`: `tensors` with `versions` restored as `_metadata`."""
    state = OrderedDict(tensors)
    if versions:
        state._metadata = OrderedDict((k, dict(v)) for k, v in versions.items())
    return state


def _safe(name: str) -> str:
    return name.replace(":", "-").replace("/", "_").replace("\\", "_").strip("-_.")


def baseline_path(models_dir: str | Path, model_name: str, dataset: str) -> Path:
    return Path(models_dir) / f"{_safe(model_name)}-{_safe(dataset)}.pt"


def load_any_checkpoint(path: str | Path, model_name: str, num_classes: int, *,
                        trusted: bool = False) -> tuple[nn.Module, dict]:
    """`--checkpoint`: one of our baselines, a state dict for `model_name`, or (trusted) a whole
    module saved with `torch.save(model)`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged zips and foreign pickles
        foreign_pickle = "weights_only" in str(exc) or "Unsupported global" in str(exc)
        if zipfile.is_zipfile(path) and foreign_pickle:
            # A pickle with code in it: a whole module, read only when the caller trusts it.
            return load_full_module(path, trusted=trusted), {"checkpoint": str(path),
                                                             "full_module": True}
        raise UserError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}); "
                        "pass a file written by torch.save") from None
    if isinstance(blob, dict) and blob.get("format") == BASELINE_FORMAT:
        return load_baseline(path, model_name, num_classes)
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        model = build_model(model_name, num_classes)
        try:
            model.load_state_dict(blob)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).splitlines()[0][:160]
            raise UserError(f"checkpoint {path} is a state dict that does not fit {model_name} "
                            f"with {num_classes} classes ({first}); pass the --model it was "
                            "saved from") from None
        return model.eval(), {"checkpoint": str(path)}
    raise UserError(f"checkpoint {path} is neither a module nor a state dict of {model_name}; "
                    "pass torch.save(model) or torch.save(model.state_dict())")


def save_baseline(path: str | Path, model: nn.Module, model_name: str, num_classes: int,
                  metadata: dict) -> Path:
    """Write a baseline checkpoint atomically: weights, their state-dict versions, and what they
    were trained on and how."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # Plain JSON types only, so the file loads with torch.load(weights_only=True).
    metadata = json.loads(json.dumps(metadata, default=str))
    return atomic.torch_save(path, {
        "format": BASELINE_FORMAT, "model": model_name, "num_classes": num_classes,
        "state_dict": state, "state_dict_versions": state_dict_versions(model),
        "metadata": metadata,
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
    model = build_model(blob["model"], blob["num_classes"])
    try:
        # Files written before state-dict versions were kept load as before (without them).
        model.load_state_dict(with_versions(blob["state_dict"], blob.get("state_dict_versions")))
    except (RuntimeError, ValueError):  # shape/key mismatch; MNASNet's missing version
        raise UserError(f"checkpoint {path} does not match the {blob['model']} architecture of "
                        "this torchvision; pretrain it again") from None
    return model, metadata
