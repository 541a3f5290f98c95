"""Instance-aware dynamic quantization (Liu et al., CVPR 2022; MISSION F18).

A bit controller (the network's own first layers + a two-layer MLP) picks, per input sample, the
width of every later conv / linear layer's weights and activations from ``K`` candidates; network
and controller are trained jointly through straight-through Gumbel-softmax choices with a
BitOPs-budget regularizer. See :mod:`.layers` (dynamic layers), :mod:`.controller`,
:mod:`.model` (the split, the cost accounting), :mod:`.train` (training, evaluation),
:mod:`.checkpoint` (save / load), :mod:`.analysis` (widths vs input difficulty) and :mod:`.config`. Public names: ``lowbit.prepare_dynamic``,
``lowbit.train_dynamic``, ``lowbit.evaluate_dynamic``, ``lowbit.save_dynamic``, ``lowbit.load_dynamic``.

Example:
    >>> import torch
    >>> from lowbit.zoo.models import FmnistMobileNet
    >>> torch.manual_seed(0) and None
    >>> dyn = prepare(FmnistMobileNet().eval(), DynamicConfig(bits=(2, 4, 6), target_bitops=0.5), [torch.randn(8, 1, 28, 28)])
    >>> dyn.trunk, dyn.classifier, len(dyn.dynamic_layers)
    (('stem',), 'fc', 21)
"""

from ...api import register_verb
from .analysis import dynamic_analysis as dynamic_analysis
from .analysis import model_confidence as model_confidence
from .checkpoint import load_dynamic as load_dynamic
from .checkpoint import read_manifest as read_manifest
from .checkpoint import save_dynamic as save_dynamic
from .config import DynamicConfig as DynamicConfig
from .controller import BitController as BitController
from .layers import CANDIDATE_BITS as CANDIDATE_BITS
from .layers import DynamicQuantConv2d as DynamicQuantConv2d
from .layers import DynamicQuantLayer as DynamicQuantLayer
from .layers import DynamicQuantLinear as DynamicQuantLinear
from .layers import check_candidate_bits as check_candidate_bits
from .layers import dynamic_layer as dynamic_layer
from .model import DynamicQuantModel as DynamicQuantModel
from .model import check_target as check_target
from .model import prepare as prepare
from .train import evaluate_dynamic as evaluate_dynamic
from .train import train_dynamic as train_dynamic

# prepare builds a new model around the float one (quantize_ works in place): recipes of kind
# dynamic load as DynamicConfig, and quantize_ points to this verb
register_verb(DynamicConfig, "lowbit.prepare_dynamic")

prepare_dynamic = prepare  # the public name in lowbit/__init__
