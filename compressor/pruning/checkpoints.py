"""Pruned checkpoints: tensors plus what rebuilds the pruned architecture, loaded without pickles.

A pruned network's shapes differ from torchvision's, and pickling the module would make loading
run whatever code the file holds. So the file holds only tensors and JSON text: the pruned
state dict, and the recipe that rebuilds the architecture, which is the base model (a torchvision
name, or a module the caller passes), the policy, and the pruning settings that decide channel
counts (round_to, ignored layers; the importance criterion only decides *which* channels, and the
weights are overwritten anyway). Loading is `torch.load(weights_only=True)`, then
`apply_policy(base, policy, ...)`, then `load_state_dict(strict=True)`.

    save_pruned_checkpoint(pruned, "model.pt", {"top1": 91.2}, policy=policy, base_name="resnet18",
                           num_classes=10, example_shape=(1, 3, 32, 32), round_to=8)
    model, metadata = load_pruned_checkpoint("model.pt")
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from compressor.errors import UserError
from compressor.io import atomic
from compressor.pruning.apply import apply_policy
from compressor.pruning.config import PruningConfig
from compressor.zoo import models

PRUNED_FORMAT = "compressor-pruned-v3"
"""v3: tensors + JSON rebuild recipe. v2 (a pickled module in an envelope) is refused unread."""
EXAMPLE_DTYPES = {"float32": torch.float32, "int64": torch.int64}
"""Example inputs a pruned model is rebuilt on: images, or a language model's token ids (zeros
are valid ids: the rebuild only needs the model to run)."""


@dataclass(frozen=True)
class PrunedArchitecture:
    """What rebuilds a pruned network's architecture from its dense base model."""

    policy: dict[str, float]
    """`{unit name: pruning_ratio}` the network was pruned with."""
    base_name: str | None
    """torchvision name of the dense base model; None for a user's own model (then the caller
    passes the dense module to `load_pruned_checkpoint`)."""
    num_classes: int
    """Classes of the base model's head (what `build_model` needs)."""
    example_shape: tuple[int, ...]
    """Shape of the example input the model was traced with ([batch, channels, height, width],
    or [batch, tokens] for a language model)."""
    round_to: int
    """`PruningConfig.round_to` of the run: kept channel counts depend on it."""
    ignored_layers: tuple[str, ...] = ()
    """`PruningConfig.ignored_layers` of the run: they decide which units exist."""
    example_dtype: str = "float32"
    """dtype of that input (`EXAMPLE_DTYPES`): float32 images, int64 token ids."""


class PrunedCheckpoint(NamedTuple):
    """A loaded pruned checkpoint."""

    model: nn.Module  # the pruned network, eval mode, on the CPU
    metadata: dict  # the metadata it was saved with


def _dtype_name(dtype: torch.dtype) -> str:
    """The `EXAMPLE_DTYPES` name of `dtype`; a ValueError for any other."""
    names = {value: name for name, value in EXAMPLE_DTYPES.items()}
    if dtype not in names:
        raise ValueError(f"example inputs of {dtype} are not saved (only {sorted(EXAMPLE_DTYPES)})")
    return names[dtype]


def _fix() -> str:
    return "pass the model.pt written by `compressor compress` or `compressor apply`"


def save_pruned_checkpoint(model: nn.Module, path: str | Path, metadata: dict, *,
                           policy: dict[str, float], base_name: str | None, num_classes: int,
                           example_shape: tuple[int, ...] | torch.Size, round_to: int,
                           ignored_layers: tuple[str, ...] = (),
                           example_dtype: torch.dtype = torch.float32) -> Path:
    """Write `model` (pruned from its base by `policy`) so `load_pruned_checkpoint` rebuilds it.

    The file loads with `torch.load(weights_only=True)`: `{"format", "architecture" (JSON text),
    "metadata" (JSON text), "state_dict" (tensors), "state_dict_versions" (plain dicts)}`.
    `metadata` must be JSON-serialisable (numbers are kept, other objects become strings).
    """
    architecture = PrunedArchitecture(
        {name: float(ratio) for name, ratio in policy.items()}, base_name, int(num_classes),
        tuple(int(d) for d in example_shape), int(round_to), tuple(ignored_layers),
        _dtype_name(example_dtype))
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic.torch_save(path, {
        "format": PRUNED_FORMAT,
        "architecture": json.dumps(asdict(architecture), sort_keys=True),
        "metadata": json.dumps(metadata, sort_keys=True, default=str),
        "state_dict": tensors,
        "state_dict_versions": models.state_dict_versions(model),
    })


def _read(path: Path) -> dict:
    """The file's top-level dict, read with weights_only=True; foreign or old files are refused
    here, before anything in them is unpickled."""
    if not path.is_file():
        raise UserError(f"pruned checkpoint {path} does not exist; {_fix()}")
    not_ours = UserError(f"{path} is not a compressor pruned checkpoint (of this version); "
                         f"{_fix()}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged zips and foreign pickles
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise not_ours from None  # a pickle with code in it: someone else's format
        raise UserError(f"pruned checkpoint {path} is truncated or corrupt "
                        f"({type(exc).__name__}); write it again with `compressor apply`") from None
    if not isinstance(blob, dict) or blob.get("format") != PRUNED_FORMAT:
        raise not_ours
    return blob


def read_pruned_architecture(path: str | Path) -> PrunedArchitecture:
    """The rebuild recipe of a pruned checkpoint (safe: no pickle is run)."""
    path = Path(path)
    blob = _read(path)
    try:
        fields = json.loads(blob["architecture"])
        architecture = PrunedArchitecture(
            {str(k): float(v) for k, v in fields["policy"].items()}, fields["base_name"],
            int(fields["num_classes"]), tuple(fields["example_shape"]), int(fields["round_to"]),
            tuple(fields.get("ignored_layers", ())), fields.get("example_dtype", "float32"))
        if architecture.example_dtype not in EXAMPLE_DTYPES:
            raise ValueError(architecture.example_dtype)
        return architecture
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"pruned checkpoint {path} is corrupt (bad architecture record); write "
                        "it again with `compressor apply`") from None


def load_pruned_checkpoint(path: str | Path, base_model: nn.Module | None = None
                           ) -> PrunedCheckpoint:
    """(pruned module in eval mode, metadata) from a file written by `save_pruned_checkpoint`.

    The architecture is rebuilt by pruning `base_model` (or, when None, a fresh torchvision model
    of the recorded name) with the recorded policy, then the saved tensors are loaded strictly.
    `base_model` is only copied, never changed; its weights do not matter, only its architecture.
    """
    path = Path(path)
    blob = _read(path)
    architecture = read_pruned_architecture(path)
    try:
        metadata = json.loads(blob["metadata"])
        state = models.with_versions(blob["state_dict"], blob.get("state_dict_versions"))
    except (KeyError, TypeError, ValueError):
        raise UserError(f"pruned checkpoint {path} is corrupt; write it again with "
                        "`compressor apply`") from None
    if base_model is None:
        if architecture.base_name is None:
            raise UserError(f"{path} was pruned from a user model, not a torchvision one; pass the "
                            "dense model it was pruned from (load_pruned_checkpoint(path, "
                            "base_model=model))")
        base_model = models.build_model(architecture.base_name, architecture.num_classes)
    base_model = base_model.cpu().eval()
    example = torch.zeros((1, *architecture.example_shape[1:]),
                          dtype=EXAMPLE_DTYPES[architecture.example_dtype])
    config = PruningConfig(round_to=architecture.round_to, importance="l2",
                           ignored_layers=architecture.ignored_layers)
    origin = architecture.base_name or "the dense model it was pruned from"
    try:
        pruned = apply_policy(base_model, architecture.policy, example, config)
    except UserError as exc:
        raise UserError(f"the policy in {path} does not fit the base model ({exc}); pass "
                        f"{origin} as the base model") from None
    try:
        pruned.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        first = " ".join(str(exc).split())[:160]
        raise UserError(f"the tensors in {path} do not fit the architecture rebuilt from its "
                        f"policy ({first}); pass {origin} as the base model") from None
    return PrunedCheckpoint(pruned.eval(), metadata)
