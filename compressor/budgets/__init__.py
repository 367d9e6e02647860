"""Budgets: what a pruned network must fit in, and the action wall that meets them by construction."""
