"""The library's exceptions and the exit codes the CLI gives them.

    try:
        compressor.compress(model, train=loader, latency_budget=0.5)
    except compressor.UserError as exc:   # bad input: the message names the fix
        print(exc)
"""

EXIT_OK = 0
"""Finished, and every budget met."""
EXIT_BUDGET_MISSED = 1
"""Finished, but the exported model measured over a budget (also `compressor check`'s fail)."""
EXIT_BAD_INPUT = 2
"""Bad input the user can fix: a `UserError`."""
EXIT_INTERNAL = 3
"""Our fault, or the machine's: an internal check (e.g. ONNX parity) failed. Work finished before
the failure is kept on disk and the message says how to finish the run."""


class CompressorError(Exception):
    """Every error the library raises on purpose; the message is one line."""

    exit_code = EXIT_INTERNAL


class UserError(CompressorError):
    """Bad input the user can fix: the message is one line and names the fix."""

    exit_code = EXIT_BAD_INPUT


class InternalError(CompressorError):
    """An internal check failed on input that was valid (a bug, or a toolchain's limit)."""


class ExportError(InternalError):
    """The exported ONNX model failed verification (checker, onnxruntime, parity with PyTorch)."""
