"""compressor: AMC-style channel pruning to a measured ONNX Runtime latency budget."""

__version__ = "0.1.0"
