"""Quantization-aware training: ``QATConfig`` (prepare / convert), its handler, and ``train``.

Importing this package registers the handler and the prepare step's refiner with :func:`lowbit.quantize_`.
"""

from ...api import register_handler, register_refiner
from .config import QATConfig as QATConfig
from .handler import attach_learned as attach_learned
from .handler import convert_learned as convert_learned
from .handler import learned_quantizers as learned_quantizers
from .handler import quantize_qat as quantize_qat
from .trainer import train as train

register_handler(QATConfig)(quantize_qat)
register_refiner(QATConfig, when=lambda c: c.step == "prepare")(attach_learned)
