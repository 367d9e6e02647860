"""Pruned checkpoints: the pruned module with its metadata, reloadable without the search."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import torch
from torch import nn

from compressor.errors import UserError
from compressor.io import atomic

PRUNED_FORMAT = "compressor-pruned-v2"

def save_pruned_checkpoint(model: nn.Module, path: str | Path, metadata: dict) -> Path:
    """The whole pruned module (its shapes differ from torchvision's), so it reloads directly.

    The file is a weights-only-loadable envelope `{"format", "metadata" (JSON text), "module"
    (bytes)}`: `load_pruned_checkpoint` reads the envelope safely, checks the format marker, and
    only then unpickles the module, so a foreign pickle is refused before any of it runs.
    `metadata` must be JSON-serialisable (numbers are kept, other objects become strings).
    """
    work = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    inner = io.BytesIO()
    torch.save(work, inner)
    envelope = {"format": PRUNED_FORMAT,
                "metadata": json.dumps(metadata, sort_keys=True, default=str),
                "module": inner.getvalue()}
    return atomic.torch_save(path, envelope)


def load_pruned_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """(module in eval mode, metadata) from a file written by `save_pruned_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pruned checkpoint {path} does not exist; pass the model.pt written by "
                        "`compressor compress` or `compressor apply`")
    not_ours = UserError(f"{path} is not a compressor pruned checkpoint (of this version); pass "
                         "the model.pt written by `compressor compress` or `compressor apply`")
    try:
        envelope = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged zips and foreign pickles
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise not_ours from None  # a pickle with code in it: someone else's format
        raise UserError(f"pruned checkpoint {path} is truncated or corrupt "
                        f"({type(exc).__name__}); write it again with `compressor apply`") from None
    if not isinstance(envelope, dict) or envelope.get("format") != PRUNED_FORMAT:
        raise not_ours
    try:
        # Our own envelope: the module is pickled (pruned shapes), hence weights_only=False here.
        module = torch.load(io.BytesIO(envelope["module"]), map_location="cpu", weights_only=False)
        metadata = json.loads(envelope["metadata"])
    except Exception as exc:
        raise UserError(f"pruned checkpoint {path} is corrupt ({type(exc).__name__}); write it "
                        "again with `compressor apply`") from None
    if not isinstance(module, nn.Module):
        raise not_ours
    return module.eval(), metadata
