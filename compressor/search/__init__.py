"""Policy search: the pruning environment, the agents, the episode evaluator and the search loop."""
