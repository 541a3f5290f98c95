"""ACIQ clipping with per-channel bit allocation under a bit budget (Banner et al. 2019)."""

from .allocate import ACIQConfig as ACIQConfig
from .allocate import allocate_bits as allocate_bits
from .allocate import quantize_aciq as quantize_aciq
