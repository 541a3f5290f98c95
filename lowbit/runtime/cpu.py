"""CPU feature detection and the int8 representation it calls for.

Why it matters: on x86 without VNNI, int8 GEMM kernels multiply uint8 activations by int8 weights
with ``vpmaddubsw``, which adds two products into a **saturating int16**: ``255 * 127 * 2 = 64770``
overflows 32767, so results can differ from exact integer arithmetic unless weights use 7 bits
(``255 * 63 * 2 = 32130``). With VNNI (``vpdpbusd``, AVX-512 VNNI or AVX-VNNI) products accumulate
into int32 directly and the full 8-bit range is exact. Signed int8 activations have no fast
u8 x s8 path at all on such kernels (measured 1.1–3.4x slower than float in bench/ort_latency.py).
On ARM, the ``asimddp`` (SDOT/UDOT) and ``i8mm`` extensions accumulate into int32.

Example:
    >>> f = parse_cpuinfo("flags : fpu sse avx2 fma", machine="x86_64")
    >>> int8_plan(f)["weight_bits"], int8_plan(f)["activations"]
    (7, 'uint8')
    >>> int8_plan(parse_cpuinfo("flags : avx2 avx512f avx512_vnni", machine="x86_64"))["weight_bits"]
    8
    >>> import lowbit
    >>> fit_to_cpu(lowbit.load_recipe("w8a8"), f).weight.bits
    7
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuFeatures:
    """The instruction-set features that decide int8 kernel behaviour."""

    machine: str
    model: str = ""
    avx2: bool = False
    avx512f: bool = False
    avx512_vnni: bool = False
    avx_vnni: bool = False
    amx_int8: bool = False
    arm_dotprod: bool = False
    arm_i8mm: bool = False

    @property
    def vnni(self) -> bool:
        return self.avx512_vnni or self.avx_vnni or self.amx_int8

    def to_dict(self) -> dict:
        return {**asdict(self), "vnni": self.vnni}


def parse_cpuinfo(text: str, machine: str | None = None) -> CpuFeatures:
    """Features from the text of ``/proc/cpuinfo`` (x86 ``flags`` / ARM ``Features`` lines)."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return CpuFeatures(
        machine=machine or platform.machine(), model=model,
        avx2="avx2" in flags, avx512f="avx512f" in flags, avx512_vnni="avx512_vnni" in flags,
        avx_vnni="avx_vnni" in flags, amx_int8="amx_int8" in flags,
        arm_dotprod="asimddp" in flags, arm_i8mm="i8mm" in flags,
    )


def cpu_features(cpuinfo: str | Path = "/proc/cpuinfo") -> CpuFeatures:
    """Features of this machine (empty feature set where ``/proc/cpuinfo`` is unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def int8_plan(features: CpuFeatures | None = None) -> dict:
    """The int8 representation that is exact and fast on ``features`` (default: this machine).

    Returns ``{"activations", "weight_bits", "exact", "reason"}``.
    """
    f = features or cpu_features()
    arch = f.machine.lower()
    if arch in ("x86_64", "amd64", "i686", "x86"):
        if f.vnni:
            return {"activations": "uint8", "weight_bits": 8, "exact": True,
                    "reason": "VNNI accumulates u8 x s8 products in int32: the full 8-bit weight range is exact"}
        if f.avx2:
            return {"activations": "uint8", "weight_bits": 7, "exact": True,
                    "reason": "AVX2 without VNNI sums u8 x s8 pairs in saturating int16: 7-bit weights keep it exact"}
        return {"activations": "uint8", "weight_bits": 8, "exact": True,
                "reason": "no AVX2: int8 kernels fall back to exact scalar/SSE code (expect little speed-up)"}
    if arch in ("aarch64", "arm64"):
        return {"activations": "uint8", "weight_bits": 8, "exact": True,
                "reason": "ARM dot-product / i8mm accumulate in int32" if (f.arm_dotprod or f.arm_i8mm)
                else "ARM without dot-product: int8 kernels widen to int16 products, exact at 8 bits"}
    return {"activations": "uint8", "weight_bits": 8, "exact": True, "reason": f"unknown architecture {f.machine!r}: defaults"}


def fit_to_cpu(config, features: CpuFeatures | None = None):
    """``config`` with every 8-bit weight spec narrowed to :func:`int8_plan`'s ``weight_bits``.

    On an AVX2 x86 without VNNI, ONNX Runtime's int8 kernels sum ``u8 x s8`` product pairs in a
    saturating int16, so a model with 8-bit weights gives different outputs there than lowbit's
    simulation (measured: 96.3 % top-1 agreement on ``fmnist-resnet`` W8A8, 100 % with 7-bit
    weights). This returns the config that is exact on ``features`` (default: this machine);
    other widths (4-bit, 2-bit, float) are untouched, as is the caller's config.

    Example:
        >>> import lowbit
        >>> vnni = parse_cpuinfo("flags : avx2 avx512_vnni", machine="x86_64")
        >>> fit_to_cpu(lowbit.load_recipe("w4a8"), parse_cpuinfo("flags : avx2", machine="x86_64")).overrides[0].weight.bits
        7
        >>> fit_to_cpu(lowbit.load_recipe("w8a8"), vnni).weight.bits
        8
    """
    import dataclasses

    bits = int8_plan(features)["weight_bits"]

    def fit(spec):
        if spec is None or isinstance(spec, str) or spec.format.bits != 8 or bits >= 8:
            return spec
        return spec.replace(bits=bits)

    overrides = tuple(dataclasses.replace(o, weight=fit(o.weight)) for o in getattr(config, "overrides", ()))
    return config.replace(weight=fit(config.weight), overrides=overrides)
