"""Channel pruning by coupled groups: units, the skeleton that predicts shapes, applying a policy.

    from compressor import pruning
    skeleton = pruning.build_skeleton(model, torch.zeros(1, 3, 32, 32), pruning.PruningConfig())
    pruned = pruning.apply_policy(model, {skeleton.names[0]: 0.5}, x, pruning.PruningConfig())

A model with self-attention gets transformer units instead (heads, MLP width, whole blocks:
`pruning.transformer`), after its attention is rewritten into `ExplicitAttention`.
"""

from compressor.pruning.apply import apply_policy
from compressor.pruning.attention import ExplicitAttention, explicit_attention, has_attention
from compressor.pruning.config import PruningConfig, kernel_channel_block
from compressor.pruning.importance import IMPORTANCES
from compressor.pruning.policies import global_ranking_policy, uniform_policy, uniform_policy_for_budget
from compressor.pruning.shapes import LayerShape, measure_layer_shapes
from compressor.pruning.skeleton import (
    Exclusion,
    Skeleton,
    Unit,
    check_policy,
    kept_count,
    precision_entries,
    precision_key,
    pruning_ratios,
    unit_precisions,
)
from compressor.pruning.transformer import TransformerSkeleton
from compressor.pruning.verify import build_skeleton, verify_skeleton

__all__ = ["IMPORTANCES", "Exclusion", "ExplicitAttention", "LayerShape", "PruningConfig",
           "Skeleton", "TransformerSkeleton", "Unit", "apply_policy", "build_skeleton",
           "check_policy", "explicit_attention", "global_ranking_policy", "has_attention", "kept_count",
           "kernel_channel_block", "measure_layer_shapes", "precision_entries", "precision_key",
           "pruning_ratios", "uniform_policy", "uniform_policy_for_budget", "unit_precisions",
           "verify_skeleton"]
