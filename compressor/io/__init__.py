"""Files: ONNX export with verification, policy files, reports, atomic writes (pruned checkpoints,
which rebuild the network by pruning, are `pruning.checkpoints`)."""
