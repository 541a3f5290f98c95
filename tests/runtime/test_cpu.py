import pytest

from lowbit.runtime import cpu_features, int8_plan
from lowbit.runtime.cpu import parse_cpuinfo

X86_AVX2 = "processor : 0\nmodel name : Intel Xeon E5\nflags : fpu sse sse2 avx avx2 fma\n"
X86_VNNI = "model name : AMD EPYC\nflags : avx2 avx512f avx512_vnni avx_vnni\n"
ARM_DOT = "processor : 0\nFeatures : fp asimd asimddp i8mm\n"


@pytest.mark.parametrize(
    "text,machine,bits,needle",
    [(X86_AVX2, "x86_64", 7, "saturating int16"), (X86_VNNI, "x86_64", 8, "VNNI"), (ARM_DOT, "aarch64", 8, "dot-product"),
     ("flags : sse2\n", "x86_64", 8, "no AVX2"), ("", "riscv64", 8, "unknown architecture")],
)
def test_plan_per_isa(text, machine, bits, needle):
    f = parse_cpuinfo(text, machine=machine)
    plan = int8_plan(f)
    assert plan["weight_bits"] == bits and plan["activations"] == "uint8" and plan["exact"]
    assert needle in plan["reason"]


def test_flags_parsed():
    f = parse_cpuinfo(X86_VNNI, machine="x86_64")
    assert f.model == "AMD EPYC" and f.avx512_vnni and f.vnni and not f.arm_dotprod
    a = parse_cpuinfo(ARM_DOT, machine="aarch64")
    assert a.arm_dotprod and a.arm_i8mm and not a.vnni


def test_this_machine_and_unreadable_cpuinfo(tmp_path):
    assert cpu_features().machine  # reads /proc/cpuinfo here
    f = cpu_features(tmp_path / "missing")
    assert not f.avx2 and int8_plan(f)["weight_bits"] in (7, 8)
