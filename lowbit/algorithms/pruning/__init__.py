"""Pruning (F20): unstructured magnitude masks with one-shot / iterative / gradual schedules, and structured
channel pruning (L1, APoZ, entropy, Taylor importance) that physically shrinks the network; both fine-tune
with optional distillation. The verb is :func:`lowbit.prune`.
"""

from ...api import register_verb
from .config import PruneConfig as PruneConfig
from .config import StructuredPruneConfig as StructuredPruneConfig
from .handler import prune as prune
from .handler import pruning_sensitivity as pruning_sensitivity
from .structured import channel_groups as channel_groups
from .structured import channel_scores as channel_scores
from .unstructured import gradual_sparsity as gradual_sparsity
from .unstructured import layer_sparsity as layer_sparsity
from .unstructured import magnitude_masks as magnitude_masks
from .unstructured import remove_masks as remove_masks

# pruning builds its own result (structured pruning changes the architecture, both fine-tune): recipes of
# kind prune / structured-prune load as these configs, and quantize_ points to the verb
register_verb(PruneConfig, "lowbit.prune")
register_verb(StructuredPruneConfig, "lowbit.prune")
