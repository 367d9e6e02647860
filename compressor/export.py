"""Verified exports: ONNX (checker + onnxruntime parity), a reloadable pruned checkpoint, policy
JSON.

Every ONNX file we write has passed `onnx.checker` and matched PyTorch on a real batch to within
`PARITY_LIMIT`; the measured difference is reported. The latency probe exports through the same
`onnx_bytes`, so what is timed is what is shipped.
"""

from __future__ import annotations

import copy
import difflib
import io
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from compressor import atomic
from compressor.errors import UserError

PRUNED_FORMAT = "compressor-pruned-v2"
POLICY_FORMAT = "compressor-policy-v1"
PARITY_LIMIT = 1e-3
"""Largest accepted |onnxruntime - PyTorch| on any logit (float32 kernels differ by ~1e-6)."""


class ExportReport(NamedTuple):
    """One verified ONNX export."""

    path: str
    opset: int
    max_abs_diff: float  # onnxruntime vs PyTorch on the example batch
    seconds: float  # export + check + parity + write
    input_shape: tuple[int, ...]  # of the example batch (the batch axis is dynamic in the file)


def _exportable(model: nn.Module) -> nn.Module:
    """`model` itself when it is on the CPU with contiguous weights, else a CPU contiguous copy:
    exporting must not move or re-layout the caller's module (it may be training on a GPU or in
    channels_last)."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device.type == "cpu" and t.is_contiguous() for t in tensors):
        return model
    return copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)


def onnx_bytes(model: nn.Module, example_input: torch.Tensor, opset: int = 17) -> bytes:
    """The model in eval mode as ONNX bytes with a dynamic batch axis (input "input", output
    "logits"). The module's train/eval mode, device and weights are left as they were.

    The legacy TorchScript exporter is used: 0.1-0.25 s per model here against 1.4-3.7 s for the
    dynamo exporter, with identical outputs (MEASURED.md), and the search exports often.
    """
    work = _exportable(model)
    was_training = work.training
    work.eval()
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The legacy exporter is deprecated upstream but is what we choose (see above).
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(
                work, (example_input.detach().cpu().contiguous(),), buffer, opset_version=opset,
                input_names=["input"], output_names=["logits"], dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
    finally:
        work.train(was_training)
    return buffer.getvalue()


def parity(model: nn.Module, data: bytes, batch: torch.Tensor) -> float:
    """Max abs difference between onnxruntime and PyTorch (eval mode) outputs on `batch`."""
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {session.get_inputs()[0].name: batch.detach().cpu().numpy()})
    work = _exportable(model)
    was_training = work.training
    try:
        with torch.no_grad():
            torch_out = work.eval()(batch.detach().cpu()).numpy()
    finally:
        work.train(was_training)
    if ort_out.shape != torch_out.shape:
        return math.inf
    return float(np.max(np.abs(ort_out - torch_out)))


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path,
                opset: int = 17) -> ExportReport:
    """Export, check with onnx.checker, compare with PyTorch on `example_input`, write atomically.

    `example_input` should be a real batch (parity on zeros or noise proves little); a parity
    failure raises RuntimeError and writes nothing.
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


# --- pruned checkpoints --------------------------------------------------------------------------


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


# --- policy files --------------------------------------------------------------------------------


def write_policy(path: str | Path, *, model: str, dataset: str, input_size: int,
                 policy: dict[str, float], units: list[str], budget: dict, metrics: dict,
                 extra: dict | None = None) -> Path:
    """A policy file: every unit's pruning ratio (0.0 for units the policy leaves alone), what it
    was made for, the budget and metrics it met, and library versions."""
    from compressor.provenance import provenance

    unknown = sorted(set(policy) - set(units))
    if unknown:
        raise ValueError(f"policy names units that are not in `units`: {unknown[:5]}")
    return atomic.write_json(path, {
        "format": POLICY_FORMAT, "model": model, "dataset": dataset, "input_size": input_size,
        "units": list(units), "policy": {name: float(policy.get(name, 0.0)) for name in units},
        "budget": budget, "metrics": metrics, **(extra or {}), "provenance": provenance(),
    })


def _shortened(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit
                                       else "")


def read_policy(path: str | Path, *, model: str | None, valid_units: list[str]
                ) -> dict[str, float]:
    """A policy file's `{unit: pruning_ratio}`, validated against the model it will prune.

    A hand-written file needs only `{"policy": {unit: ratio}}`; `model`, when present, must match.
    """
    path = Path(path)
    fix = "pass a policy.json written by `compressor compress`"
    try:
        blob: Any = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"policy file {path} does not exist; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as exc:
        reason = getattr(exc, "msg", type(exc).__name__)
        raise UserError(f"policy file {path} is not valid JSON ({reason}); {fix}") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("policy"), dict):
        raise UserError(f"policy file {path} has no 'policy' mapping of unit names to pruning "
                        f"ratios; {fix}")
    if blob.get("format", POLICY_FORMAT) != POLICY_FORMAT:
        raise UserError(f"policy file {path} has format {blob['format']!r}, not "
                        f"{POLICY_FORMAT!r}; {fix}")
    made_for = blob.get("model")
    if model is not None and made_for is not None and made_for != model:
        raise UserError(f"policy file {path} was made for {made_for}, not {model}; pass "
                        f"--model {made_for} or a policy made for {model}")
    policy = blob["policy"]
    unknown = [name for name in policy if name not in valid_units]
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid_units, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"policy file {path} names unit {unknown[0]!r} that "
                        f"{model or 'this model'} lacks{hint}; valid units: "
                        f"{_shortened(valid_units)}")
    for name, ratio in policy.items():
        if (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                or not 0.0 <= float(ratio) < 1.0):
            raise UserError(f"policy file {path}: pruning ratio {ratio!r} for unit {name!r} is "
                            "outside [0, 1)")
    return {name: float(ratio) for name, ratio in policy.items()}
