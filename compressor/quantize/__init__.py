"""INT8 post-training quantization with onnxruntime, chosen and checked by measurement.

`int8` quantizes a verified FP32 export, `choice` measures which format is fast on this machine
(and what INT8 is worth at each FP32 ratio, for the search), `accuracy` checks what INT8 costs.
"""

from compressor.quantize.accuracy import (
    Int8Accuracy,
    QuantizedModel,
    compare,
    quantize_within,
)
from compressor.quantize.choice import (
    FormatChoice,
    FormatTrial,
    Int8Curve,
    choose_format,
    measure_curve,
)
from compressor.quantize.int8 import (
    CALIBRATION_METHODS,
    FORMATS,
    MEASURED_BY_DEFAULT,
    MODES,
    Int8Format,
    QuantizeConfig,
    calibration_batches,
    layer_nodes,
    node_layers,
    preprocess,
    quantize_bytes,
    random_calibration,
    weighted_nodes,
)

__all__ = ["CALIBRATION_METHODS", "FORMATS", "MEASURED_BY_DEFAULT", "MODES", "FormatChoice",
           "FormatTrial", "Int8Accuracy", "Int8Curve", "Int8Format", "QuantizeConfig",
           "QuantizedModel", "calibration_batches", "choose_format", "compare", "layer_nodes",
           "measure_curve", "node_layers", "preprocess", "quantize_bytes", "quantize_within",
           "random_calibration", "weighted_nodes"]
