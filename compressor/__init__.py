"""compressor: AMC-style channel pruning to a measured ONNX Runtime latency budget.

    import compressor
    result = compressor.compress(model, train=train_loader, val=val_loader, latency_budget=0.5)
    print(result.top1, result.latency_ratio, result.verdict)

See `compressor.api` for the pieces (`units`, `apply_policy`, `export_onnx`, `measure_latency`,
`check_budget`) and `compressor.errors` for what it raises.
"""

from compressor.api import (
    CompressResult,
    apply_policy,
    check_budget,
    compress,
    export_onnx,
    measure_latency,
    units,
)
from compressor.budgets.kinds import BudgetConfig
from compressor.errors import CompressorError, ExportError, InternalError, UserError
from compressor.pipeline.compress import CompressConfig, FinalConfig
from compressor.version import __version__

__all__ = ["BudgetConfig", "CompressConfig", "CompressResult", "CompressorError", "ExportError",
           "FinalConfig", "InternalError", "UserError", "apply_policy", "check_budget", "compress",
           "__version__", "export_onnx", "measure_latency", "units"]
