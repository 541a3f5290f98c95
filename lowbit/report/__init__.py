"""Diagnostics and reports: metrics (SQNR, size, BitOPs), per-layer diagnostics, JSON/Markdown/HTML."""

from .experiment import layer_diagnostics as layer_diagnostics, quantize_and_measure as quantize_and_measure
from .html import write_report as write_report
from .metrics import bitops as bitops, float_size_bytes as float_size_bytes, quantized_size_bytes as quantized_size_bytes, sqnr_db as sqnr_db
