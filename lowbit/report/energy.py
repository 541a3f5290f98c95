"""Energy estimate from the 45 nm per-operation table (Horowitz, ISSCC 2014).

Per inference: ``E = MACs * (E_mul + E_add) + DRAM_reads``, with

===========================  ===========
operation                    energy
===========================  ===========
int8 multiply                0.2 pJ
int8 add                     0.03 pJ
int32 add (accumulator)      0.1 pJ
fp32 multiply                3.7 pJ
fp32 add                     0.9 pJ
DRAM access, per 64 bits     1.3 – 2.6 nJ
===========================  ===========

A quantized layer (weights and input at <= 8 bits) costs one int8 multiply and one int32
accumulate per MAC; a float layer one fp32 multiply and one fp32 add. Weights are read once
from DRAM per inference (low and high ends of the DRAM range both reported). Activations are
assumed to stay on chip — an optimistic, stated assumption.

Example:
    >>> e = energy_estimate(macs_int8=1_000_000, macs_fp32=0, weight_bytes=8_000)
    >>> round(e["compute_uj"], 3), round(e["dram_uj_low"], 3)
    (0.3, 1.3)
"""

from __future__ import annotations

PJ = {"int8_mul": 0.2, "int8_add": 0.03, "int32_add": 0.1, "fp32_mul": 3.7, "fp32_add": 0.9}
DRAM_NJ_PER_64BIT = (1.3, 2.6)


def energy_estimate(macs_int8: int, macs_fp32: int, weight_bytes: int) -> dict:
    """Energy per inference in microjoules: compute, DRAM weight reads (low/high), totals."""
    compute_pj = macs_int8 * (PJ["int8_mul"] + PJ["int32_add"]) + macs_fp32 * (PJ["fp32_mul"] + PJ["fp32_add"])
    words = weight_bytes / 8
    lo, hi = (words * nj * 1e3 for nj in DRAM_NJ_PER_64BIT)  # nJ -> pJ
    return {
        "compute_uj": compute_pj / 1e6,
        "dram_uj_low": lo / 1e6,
        "dram_uj_high": hi / 1e6,
        "total_uj_low": (compute_pj + lo) / 1e6,
        "total_uj_high": (compute_pj + hi) / 1e6,
    }


def model_energy(model, example) -> dict:
    """Energy estimate of a (possibly quantized) model: int8 MACs for quantized layers, fp32 otherwise;
    weight bytes at each layer's stored precision."""
    from ..nn.layers import is_quant_module
    from .metrics import layer_macs

    macs = layer_macs(model, example)
    m8 = m32 = wbytes = 0
    for name, n in macs.items():
        m = model.get_submodule(name)
        quant = is_quant_module(m) and m.weight_quant is not None and m.input_quant is not None
        m8 += n if quant else 0
        m32 += 0 if quant else n
        bits = m.weight_quant.spec.format.bits if is_quant_module(m) and m.weight_quant is not None else 32
        wbytes += m.weight.numel() * bits / 8
    return energy_estimate(m8, m32, int(wbytes))
