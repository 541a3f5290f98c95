"""ZeroQ-style data-free calibration (Cai et al. 2020): ``ZeroQConfig`` + handler."""

from .config import ZeroQConfig as ZeroQConfig
from .distill import distill_data as distill_data
from .distill import quantize_zeroq as quantize_zeroq
