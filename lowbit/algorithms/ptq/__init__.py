"""Post-training quantization (PTQ): ``PTQConfig`` + its handler."""

from .config import PTQConfig as PTQConfig
from .handler import quantize_ptq as quantize_ptq
