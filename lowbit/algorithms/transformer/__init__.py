"""Transformer PTQ (F29): round-to-nearest per channel / per group, GPTQ, AWQ, SmoothQuant and per-token
dynamic activations for the Linear layers of a transformer, quantized embedding tables, and the most
sensitive layers kept at a higher precision. The verb is :func:`lowbit.quantize_transformer`.
"""

from ...api import register_verb
from .config import TransformerPTQConfig as TransformerPTQConfig
from .gptq import gptq_quantize as gptq_quantize
from .gptq import hessian as hessian
from .handler import awq_scales as awq_scales
from .handler import calibration_batches as calibration_batches
from .handler import layer_sensitivity as layer_sensitivity
from .handler import quantize_transformer as quantize_transformer
from .handler import smooth_scales as smooth_scales

# sequential, data-driven: the verb takes the calibration texts; quantize_ points to it
register_verb(TransformerPTQConfig, "lowbit.quantize_transformer")
