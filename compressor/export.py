"""Verified exports: ONNX (checker + onnxruntime parity), a reloadable pruned checkpoint, policy JSON."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from compressor import atomic
from compressor.errors import UserError

PRUNED_FORMAT = "compressor-pruned-v1"
POLICY_FORMAT = "compressor-policy-v1"
PARITY_LIMIT = 1e-3


class ExportReport(NamedTuple):
    path: str
    opset: int
    max_abs_diff: float
    seconds: float
    input_shape: tuple[int, ...]


def onnx_bytes(model: nn.Module, example_input: torch.Tensor, opset: int = 17) -> bytes:
    """The model as ONNX bytes with a dynamic batch axis.

    The legacy TorchScript exporter is used: 0.1-0.25 s per model here against 1.4-3.7 s for the
    dynamo exporter, with identical outputs (../shared/MEASURED.md), and the search exports often.
    """
    was_training = model.training
    model = model.eval().cpu().to(memory_format=torch.contiguous_format)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model, (example_input.cpu().contiguous(),), buffer, opset_version=opset,
            input_names=["input"], output_names=["logits"], dynamo=False,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    model.train(was_training)
    return buffer.getvalue()


def parity(model: nn.Module, data: bytes, batch: torch.Tensor) -> float:
    """Max abs difference between onnxruntime and PyTorch outputs on `batch`."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {session.get_inputs()[0].name: batch.cpu().numpy()})
    with torch.no_grad():
        torch_out = model.eval().cpu()(batch.cpu()).numpy()
    return float(np.max(np.abs(ort_out - torch_out)))


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path,
                opset: int = 17) -> ExportReport:
    """Export, check with onnx.checker, compare with PyTorch on `example_input`, write atomically.

    `example_input` should be a real batch: parity on zeros proves little.
    """
    import onnx

    started = time.perf_counter()
    data = onnx_bytes(model, example_input, opset)
    onnx.checker.check_model(onnx.load_from_string(data))
    diff = parity(model, data, example_input)
    if not diff <= PARITY_LIMIT:
        raise RuntimeError(f"ONNX export of {type(model).__name__} differs from PyTorch by "
                           f"{diff:.2e} (> {PARITY_LIMIT})")
    atomic.write_bytes(path, data)
    return ExportReport(str(path), opset, diff, time.perf_counter() - started,
                        tuple(example_input.shape))


def save_pruned_checkpoint(model: nn.Module, path: str | Path, metadata: dict) -> Path:
    """The whole pruned module (its shapes differ from torchvision's), so it reloads directly."""
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    return atomic.torch_save(path, {"format": PRUNED_FORMAT, "module": model,
                                    "metadata": metadata})


def load_pruned_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"pruned checkpoint {path} does not exist")
    try:
        # Our own format only (checked below); the module is pickled, hence weights_only=False.
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"pruned checkpoint {path} is truncated or corrupt "
                        f"({type(exc).__name__}); export it again with `compressor apply`") from None
    if not isinstance(blob, dict) or blob.get("format") != PRUNED_FORMAT:
        raise UserError(f"{path} is not a compressor pruned checkpoint; pass a model.pt written "
                        "by `compressor compress` or `compressor apply`")
    return blob["module"], blob.get("metadata", {})


def write_policy(path: str | Path, *, model: str, dataset: str, input_size: int,
                 policy: dict[str, float], units: list[str], budget: dict, metrics: dict,
                 extra: dict | None = None) -> Path:
    from compressor.provenance import provenance

    return atomic.write_json(path, {
        "format": POLICY_FORMAT, "model": model, "dataset": dataset, "input_size": input_size,
        "units": units, "policy": {name: float(policy.get(name, 0.0)) for name in units},
        "budget": budget, "metrics": metrics, **(extra or {}), "provenance": provenance(),
    })


def read_policy(path: str | Path, *, model: str | None, valid_units: list[str]
                ) -> dict[str, float]:
    """A policy file's `{unit: pruning_ratio}`, validated against the model it will prune."""
    path = Path(path)
    try:
        blob: Any = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"policy file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"policy file {path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
                        "pass a policy written by `compressor compress`") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("policy"), dict):
        raise UserError(f"policy file {path} has no 'policy' mapping of unit names to ratios")
    if model is not None and blob.get("model") not in (None, model):
        raise UserError(f"policy file {path} was made for {blob['model']}, not {model}; pass "
                        f"--model {blob['model']} or a policy for {model}")
    policy = blob["policy"]
    unknown = [name for name in policy if name not in valid_units]
    if unknown:
        shown = ", ".join(valid_units[:12]) + (", ..." if len(valid_units) > 12 else "")
        raise UserError(f"policy file {path} names unit {unknown[0]!r} that this model lacks; "
                        f"valid units: {shown}")
    for name, ratio in policy.items():
        if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
            raise UserError(f"policy file {path}: ratio {ratio!r} for {name!r} is outside [0, 1)")
    return {name: float(ratio) for name, ratio in policy.items()}
