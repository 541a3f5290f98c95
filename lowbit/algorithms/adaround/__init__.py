"""AdaRound: post-training quantization with learned weight rounding (Nagel et al., 2020).

Importing this package registers :class:`AdaRoundConfig` with :func:`lowbit.quantize_`: the PTQ
handler prepares the model (same layers, same quantizers), calibration runs as for PTQ, then
:func:`refine_adaround` learns the rounding of every quantized weight on the calibration inputs.

Example:
    >>> import torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> from lowbit.algorithms.adaround import AdaRoundConfig
    >>> cfg = AdaRoundConfig(iters=20, min_samples_warn=0)
    >>> q = lowbit.quantize_(FmnistMLP(), cfg, data=[torch.randn(32, 1, 28, 28)])
    >>> sorted(q.lowbit_info["adaround"])
    ['fc1', 'fc2']
"""

from ...api import register_handler, register_refiner
from ..ptq import quantize_ptq
from .config import AdaRoundConfig as AdaRoundConfig
from .refine import adaround_layer as adaround_layer
from .refine import quantizers_bypassed as quantizers_bypassed
from .refine import rectified_sigmoid as rectified_sigmoid
from .refine import refine_adaround as refine_adaround
from .refine import rounding_regularizer as rounding_regularizer

register_handler(AdaRoundConfig)(quantize_ptq)  # the structural step is PTQ's
register_refiner(AdaRoundConfig)(refine_adaround)
