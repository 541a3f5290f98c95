"""Iterative adaptation to quantization noise: ``IterativeConfig`` + its handler (PTQ's) and refiner.

Importing this package registers both with :func:`lowbit.quantize_`.
"""

from ...api import register_handler, register_refiner
from ..ptq import quantize_ptq
from .config import IterativeConfig as IterativeConfig
from .refine import build_schedule as build_schedule
from .refine import finetune_to_float as finetune_to_float
from .refine import quantizers_disabled as quantizers_disabled
from .refine import refine_iterative as refine_iterative

register_handler(IterativeConfig)(quantize_ptq)
register_refiner(IterativeConfig)(refine_iterative)
