"""Training, below everything that trains: the supervised loop of the baseline pretrain and the final
fine-tune (`train`), and the recovery of a freshly pruned network (`recovery`), which the search,
the zoo's baselines and the pipeline all use."""
