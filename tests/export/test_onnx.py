"""ONNX QDQ export: ONNX Runtime runs it on integer kernels and agrees with lowbit's simulation."""

import copy
import warnings

import onnx
import pytest
import torch

import lowbit
from lowbit.errors import CalibrationError, ConfigError, UnsupportedError
from lowbit.export import onnx as onnx_export
from lowbit.runtime import OrtModel, fit_to_cpu
from lowbit.zoo import load_model
from lowbit.zoo.models import FmnistMLP


@pytest.fixture(scope="module")
def resnet_w8a8(fmnist_calib):
    # 7-bit weights where this CPU's int8 kernels saturate (AVX2 without VNNI), else 8: exact on ORT either way
    return lowbit.quantize_(load_model("fmnist-resnet"), fit_to_cpu(lowbit.load_recipe("w8a8")), data=fmnist_calib)


def test_resnet_export_fuses_into_integer_kernels_and_agrees(tmp_path, resnet_w8a8, fmnist_small_test):
    path = tmp_path / "r.onnx"
    info = lowbit.export_onnx(resnet_w8a8, fmnist_small_test.images[:1], path)
    assert info["weight_initializers_int8"] == 10  # every conv / linear weight stored as int8 codes
    graph = onnx.load(str(path)).graph
    assert all(i.data_type != onnx.TensorProto.FLOAT or len(i.dims) < 2 for i in graph.initializer)  # no float weights left
    opt = tmp_path / "r_opt.onnx"
    runner = OrtModel(path, optimized_path=opt)
    ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
    assert ops.count("QLinearConv") == 9 and ops.count("QLinearAdd") == 3
    x = fmnist_small_test.images[:1000]
    with torch.no_grad():
        ref = resnet_w8a8(x).argmax(1)
    agree = (runner(x).argmax(1) == ref).float().mean().item()
    assert agree >= 0.995
    assert lowbit.evaluate(runner, fmnist_small_test) >= lowbit.evaluate(resnet_w8a8, fmnist_small_test) - 0.3


def test_8bit_weights_on_a_saturating_cpu_warn_and_say_so(tmp_path, fmnist_calib, monkeypatch):
    m = lowbit.quantize_(load_model("fmnist-mlp"), lowbit.load_recipe("w8a8"), data=fmnist_calib)
    monkeypatch.setattr(onnx_export, "_cpu_saturates_8bit_weights", lambda: True)
    with pytest.warns(UserWarning, match="AVX2 without VNNI.*7-bit weights"):
        info = lowbit.export_onnx(m, fmnist_calib.images[:1], tmp_path / "m.onnx")
    assert info["int16_saturation_risk"] and info["weights_beyond_7bit"] == 2
    m7 = lowbit.quantize_(load_model("fmnist-mlp"), fit_to_cpu(lowbit.load_recipe("w8a8"), lowbit.runtime.cpu.parse_cpuinfo(
        "flags : avx2", machine="x86_64")), data=fmnist_calib)
    info = lowbit.export_onnx(m7, fmnist_calib.images[:1], tmp_path / "m7.onnx")
    assert not info["int16_saturation_risk"] and info["weights_beyond_7bit"] == 0


def test_keep_float_layers(tmp_path, resnet_w8a8, fmnist_small_test):
    path = tmp_path / "k.onnx"
    info = lowbit.export_onnx(resnet_w8a8, fmnist_small_test.images[:1], path, float_layers=["stem.0"])
    assert info["weight_initializers_int8"] == 9 and info["float_layers"] == ["stem.0"]
    opt = tmp_path / "k_opt.onnx"
    runner = OrtModel(path, optimized_path=opt)
    assert [n.op_type for n in onnx.load(str(opt)).graph.node].count("QLinearConv") == 8
    stem = resnet_w8a8.get_submodule("stem.0")
    assert stem.weight_quant is not None and stem.input_quant is not None  # restored
    x = fmnist_small_test.images[:500]
    with torch.no_grad():
        ref = resnet_w8a8(x).argmax(1)
    assert (runner(x).argmax(1) == ref).float().mean() >= 0.99
    with pytest.raises(ConfigError, match="not a quantized layer.*quantized layers: stem.0"):
        lowbit.export_onnx(resnet_w8a8, x[:1], tmp_path / "bad.onnx", float_layers=["stem.1"])
    assert not (tmp_path / "bad.onnx").exists()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_float_exports(tmp_path, precision):
    torch.manual_seed(0)
    m = FmnistMLP().eval()
    info = lowbit.export_onnx(m, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx", precision=precision)
    assert info["quantize_linear"] == 0
    if precision != "bf16":  # ONNX Runtime's CPU provider has no bf16 Gemm
        x = torch.randn(4, 1, 28, 28)
        out = OrtModel(tmp_path / "m.onnx")(x.to(torch.float16) if precision == "fp16" else x)
        torch.testing.assert_close(out.float(), m(x), atol=2e-2 if precision == "fp16" else 1e-5, rtol=1e-2)


def test_export_errors(tmp_path):
    x = torch.randn(1, 1, 28, 28)
    uncal = lowbit.quantize_(FmnistMLP(), lowbit.PTQConfig(), calibrate=False)
    with pytest.raises(CalibrationError, match="not calibrated"):
        lowbit.export_onnx(uncal, x, tmp_path / "a.onnx")
    grouped = lowbit.quantize_(FmnistMLP(), lowbit.load_recipe("w4-weight-only"))
    with pytest.raises(UnsupportedError, match="per_group"):
        lowbit.export_onnx(grouped, x, tmp_path / "b.onnx")
    a4_cfg = lowbit.PTQConfig(activation=lowbit.QuantSpec(format=lowbit.IntFormat(bits=4, signed=False), mapping=lowbit.Affine()))
    a4 = lowbit.quantize_(FmnistMLP(), a4_cfg, data=[torch.randn(4, 1, 28, 28)])
    with pytest.raises(UnsupportedError, match="4-bit activations"):
        lowbit.export_onnx(a4, x, tmp_path / "f.onnx")
    dyn = lowbit.quantize_(FmnistMLP(), lowbit.load_recipe("w8a8-dynamic"))
    with pytest.raises(UnsupportedError, match="dynamic"):
        lowbit.export_onnx(dyn, x, tmp_path / "c.onnx")
    cal = lowbit.quantize_(FmnistMLP(), lowbit.PTQConfig(), data=[torch.randn(4, 1, 28, 28)])
    with pytest.raises(ConfigError, match="opset 11 is too old"):
        lowbit.export_onnx(cal, x, tmp_path / "d.onnx", opset=11)
    with pytest.raises(ConfigError, match="precision"):
        lowbit.export_onnx(cal, x, tmp_path / "e.onnx", precision="int3")
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_export_mode_is_restored_after_failure(tmp_path):
    cal = lowbit.quantize_(FmnistMLP(), lowbit.PTQConfig(), data=[torch.randn(4, 1, 28, 28)])
    ref = cal(torch.ones(1, 1, 28, 28))
    with pytest.raises(UnsupportedError, match="torch.onnx.export failed"):
        lowbit.export_onnx(cal, torch.randn(1, 3, 5), tmp_path / "bad.onnx")  # wrong input shape
    assert not any(getattr(m, "onnx_export", False) for m in cal.modules())
    assert torch.equal(cal(torch.ones(1, 1, 28, 28)), ref)


def test_ort_missing_names_the_extra(monkeypatch):
    import lowbit.runtime.ort as ortmod

    monkeypatch.setattr(ortmod, "ort_available", lambda: False)
    with pytest.raises(UnsupportedError, match=r"lowbit\[onnx\]"):
        ortmod.OrtModel("x.onnx")


def test_export_does_not_change_the_model(tmp_path, fmnist_calib):
    m = lowbit.quantize_(copy.deepcopy(load_model("fmnist-mlp")), lowbit.load_recipe("w8a8"), data=fmnist_calib)
    x = fmnist_calib.images[:16]
    before = m(x)
    lowbit.export_onnx(m, x[:1], tmp_path / "m.onnx")
    assert torch.equal(m(x), before)


def test_openvino_runs_the_qdq_export(tmp_path, resnet_w8a8, fmnist_small_test):
    from lowbit.runtime import OpenVINOModel

    path = tmp_path / "r.onnx"
    lowbit.export_onnx(resnet_w8a8, fmnist_small_test.images[:1], path)
    ov = OpenVINOModel(path)
    x = fmnist_small_test.images[:500]
    with torch.no_grad():
        ref = resnet_w8a8(x).argmax(1)
    assert (ov(x).argmax(1) == ref).float().mean().item() >= 0.99


def test_openvino_missing_names_the_extra(monkeypatch):
    import lowbit.runtime.openvino as ovmod

    monkeypatch.setattr(ovmod, "openvino_available", lambda: False)
    with pytest.raises(UnsupportedError, match=r"lowbit\[openvino\]"):
        ovmod.OpenVINOModel("x.onnx")


def test_narrow_weight_grids_are_stored_as_codes_and_the_model_is_untouched(tmp_path, fmnist_calib):
    m = lowbit.quantize_(load_model("fmnist-resnet"), lowbit.load_recipe("w4a8"), data=fmnist_calib.subset(64, seed=0))
    before = {k: v.clone() for k, v in m.state_dict().items() if v is not None}
    x = fmnist_calib.images[:64]
    with torch.no_grad():
        y = m(x)
    with warnings.catch_warnings():  # the 8-bit first / last layers warn on an AVX2-only CPU
        warnings.simplefilter("ignore", UserWarning)
        info = lowbit.export_onnx(m, x[:1], tmp_path / "w4.onnx")
    assert info["weight_initializers_int8"] == 10 and info["weights_beyond_7bit"] == 2  # the 8-bit first / last layers
    from onnx import numpy_helper

    inits = onnx.load(str(tmp_path / "w4.onnx")).graph.initializer
    codes = [numpy_helper.to_array(i) for i in inits if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]
    assert sum(int(abs(c.astype(int)).max()) <= 8 for c in codes) == 8  # the 4-bit body: codes in [-8, 7]
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(m(x), y)
