"""Files: ONNX export with verification, pruned checkpoints, policy files, reports, atomic writes."""
