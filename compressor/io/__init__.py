"""Files: ONNX export with verification, policy files, reports, atomic writes (pruned checkpoints,
which rebuild the network by pruning, are `pruning.checkpoints`; the KV-cache export of decoders
whose attention was rewritten for pruning is `pruning.decoder_export`)."""
