"""Data-free quantization (DFQ, Nagel et al. 2019): ``DFQConfig`` + handler + empirical bias-correction refiner."""

from .config import DFQConfig as DFQConfig
from .handler import empirical_bias_correction as empirical_bias_correction
from .handler import propagate_bn_statistics as propagate_bn_statistics
from .handler import quantize_dfq as quantize_dfq
