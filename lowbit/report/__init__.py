"""Diagnostics and reports: metrics (SQNR, size, BitOPs), per-layer diagnostics, JSON/Markdown/HTML."""

from .experiment import layer_diagnostics as layer_diagnostics
from .experiment import quantize_and_measure as quantize_and_measure
from .fidelity import embedding_fidelity as embedding_fidelity
from .html import write_report as write_report
from .metrics import bitops as bitops
from .metrics import float_size_bytes as float_size_bytes
from .metrics import quantized_size_bytes as quantized_size_bytes
from .metrics import sqnr_db as sqnr_db
