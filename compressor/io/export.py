"""Verified ONNX exports: onnx.checker plus onnxruntime-vs-PyTorch parity on a real batch.

Every ONNX file we write has passed `onnx.checker` and matched PyTorch on a real batch within a
relative tolerance (`PARITY_RTOL`, `PARITY_ATOL`) with the same top-1 class; the measured numbers
are reported. The latency probe exports through the same `onnx_bytes`, so what is timed is what
is shipped. `onnx_top1` scores an exported model (FP32 or INT8) with onnxruntime: the one scorer
of `compressor check`'s accuracy gate and the INT8 accuracy checks.
"""

from __future__ import annotations

import copy
import io
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from compressor.errors import ExportError
from compressor.io import atomic

PARITY_RTOL = 1e-3
"""Accepted |onnxruntime - PyTorch| per logit, as a fraction of the largest |logit| of the batch.
float32 kernels that sum in another order differ by a few ulps per layer, so the error scales with
the activations: an absolute limit rejected every network with large logits (resnet50 2.6e5).
Measured here (16 images at 32 px, random weights x3 so logits are large): resnet18 1.4e-6,
efficientnet_b0 2.1e-6, resnet50 1.5e-6 (at max |logit| 5e20), regnet_y_400mf 1.5e-5,
mobilenet_v3_small 3.0e-5 relative (its pruned export in issue 11: 1.5e-5). 1e-3 leaves 30x room
over the worst of them; a wrong graph errs by the order of the outputs themselves (relative ~1)."""
PARITY_ATOL = 1e-4
"""Absolute slack added to the relative tolerance, for batches whose logits are all near zero."""


class Tolerance(NamedTuple):
    """A parity tolerance: |diff| <= atol + rtol * max |reference output|."""

    rtol: float
    atol: float

    def limit(self, max_abs_output: float) -> float:
        return self.atol + self.rtol * max_abs_output


DEFAULT_TOLERANCE = Tolerance(PARITY_RTOL, PARITY_ATOL)


class Parity(NamedTuple):
    """onnxruntime's outputs against PyTorch's on one batch."""

    max_abs_diff: float  # max |onnxruntime - PyTorch| over every logit (inf if shapes differ)
    max_abs_output: float  # max |PyTorch logit|, the scale the tolerance is relative to
    relative_diff: float  # max_abs_diff / max_abs_output
    top1_agreement: float  # fraction of the batch whose top-1 class is the same
    tolerance: Tolerance
    failure: str | None  # why parity fails, None when it passes


class ExportReport(NamedTuple):
    """One verified ONNX export."""

    path: str
    opset: int
    max_abs_diff: float  # onnxruntime vs PyTorch on the example batch
    seconds: float  # export + check + parity + write
    input_shape: tuple[int, ...]  # of the example batch (the batch axis is dynamic in the file)
    max_abs_output: float  # max |PyTorch logit| on the example batch
    relative_diff: float  # max_abs_diff / max_abs_output
    top1_agreement: float  # fraction of the example batch with the same top-1 class
    tolerance: Tolerance  # what parity was checked against


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


def compare_outputs(reference: np.ndarray, candidate: np.ndarray,
                    tolerance: Tolerance = DEFAULT_TOLERANCE) -> Parity:
    """Parity of `candidate` logits against `reference` logits, both [batch, classes] (or
    [batch, tokens, vocab] for a language model: each token position is one prediction).

    Passes when max |candidate - reference| <= atol + rtol * max |reference| and every image
    (position) gets the same top-1 class, except those whose two best reference logits are
    within twice that limit of each other (both may move by the limit, so their order is noise).

    >>> ref = np.array([[1000.0, 0.0], [0.0, 500.0]], dtype=np.float32)
    >>> compare_outputs(ref, ref + 0.05).failure is None  # 5e-5 relative
    True
    >>> compare_outputs(ref, ref[:, ::-1]).failure.startswith("max |ONNX - PyTorch| 1.00e+03")
    True
    """
    max_abs_output = float(np.max(np.abs(reference))) if reference.size else 0.0
    if candidate.shape != reference.shape:
        return Parity(float("inf"), max_abs_output, float("inf"), 0.0, tolerance,
                      f"output shape {tuple(candidate.shape)} is not PyTorch's "
                      f"{tuple(reference.shape)}")
    limit = tolerance.limit(max_abs_output)
    diff = float(np.max(np.abs(candidate.astype(np.float64) - reference))) if reference.size \
        else 0.0
    relative = diff / max_abs_output if max_abs_output > 0 else (0.0 if diff == 0 else np.inf)
    rows = len(reference) if reference.ndim <= 2 else -1  # a row per image or token position
    flat_ref = reference.reshape(rows, reference.shape[-1] if rows == -1 else -1)
    flat_cand = candidate.reshape(flat_ref.shape)
    agree = flat_ref.argmax(1) == flat_cand.argmax(1)
    agreement = float(agree.mean()) if len(agree) else 1.0
    if flat_ref.shape[1] > 1:
        top2 = np.sort(flat_ref, axis=1)[:, -2:]
        close_call = (top2[:, 1] - top2[:, 0]) <= 2 * limit
    else:
        close_call = np.ones(len(flat_ref), dtype=bool)
    failure = None
    numbers = (f"max |ONNX - PyTorch| {diff:.2e} at max |output| {max_abs_output:.2e} "
               f"(relative {relative:.1e}), limit {limit:.2e} = {tolerance.atol:g} + "
               f"{tolerance.rtol:g} x max |output|, top-1 agreement {agreement:.1%}")
    if not diff <= limit:  # also catches NaN
        failure = numbers
    elif not np.all(agree | close_call):
        failure = f"{numbers}: top-1 differs on an image whose top-2 margin exceeds the limit"
    return Parity(diff, max_abs_output, float(relative), agreement, tolerance, failure)


def onnx_session(model: bytes | str | Path) -> Any:
    """A plain onnxruntime CPU session (default options) of ONNX bytes or a file."""
    import onnxruntime as ort

    return ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                providers=["CPUExecutionProvider"])


def onnx_logits(session: Any, batches: Sequence) -> np.ndarray:
    """The session's outputs on every batch of (images, labels), concatenated."""
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x.numpy()})[0] for x, _ in batches])


def top1_of(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (%) of `logits` against `labels`."""
    return 100.0 * float((logits.argmax(1) == labels).mean())


def onnx_top1(model: bytes | str | Path | Any, batches: Sequence) -> float:
    """Top-1 (%) on `batches` of (image, label) of an ONNX model run by onnxruntime: bytes or a
    file (run on a plain CPU session), or an onnxruntime session already made."""
    session = model if hasattr(model, "run") else onnx_session(model)
    return top1_of(onnx_logits(session, batches), np.concatenate([y.numpy() for _, y in batches]))


def parity(model: nn.Module, data: bytes, batch: torch.Tensor,
           tolerance: Tolerance = DEFAULT_TOLERANCE) -> Parity:
    """onnxruntime's outputs on `batch` against PyTorch's (eval mode), by `compare_outputs`."""
    session = onnx_session(data)
    (ort_out,) = session.run(None, {session.get_inputs()[0].name: batch.detach().cpu().numpy()})
    work = _exportable(model)
    was_training = work.training
    try:
        with torch.no_grad():
            torch_out = work.eval()(batch.detach().cpu()).numpy()
    finally:
        work.train(was_training)
    return compare_outputs(torch_out, ort_out, tolerance)


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path,
                opset: int = 17, *, rtol: float = PARITY_RTOL,
                atol: float = PARITY_ATOL) -> ExportReport:
    """Export, check with onnx.checker, compare with PyTorch on `example_input`, write atomically.

    `example_input` should be a real batch (parity on zeros or noise proves little). A failed
    export, checker or parity check raises `ExportError` (an internal check, not bad input) with
    the numbers in its one-line message, and writes nothing.
    """
    import onnx

    started = time.perf_counter()
    name = type(model).__name__
    try:
        data = onnx_bytes(model, example_input, opset)
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:  # the exporter and checker raise many types
        reason = " ".join(str(exc).split())[:200] or "no message"
        raise ExportError(f"ONNX export of {name} failed ({type(exc).__name__}: {reason})"
                          ) from exc
    result = parity(model, data, example_input, Tolerance(rtol, atol))
    if result.failure is not None:
        raise ExportError(f"ONNX export of {name} does not match PyTorch: {result.failure}")
    atomic.write_bytes(path, data)
    return ExportReport(str(path), opset, result.max_abs_diff, time.perf_counter() - started,
                        tuple(example_input.shape), result.max_abs_output, result.relative_diff,
                        result.top1_agreement, result.tolerance)
