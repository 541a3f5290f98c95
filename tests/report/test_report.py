import json
import math

import pytest
import torch
from torch import nn

import lowbit
from lowbit.report import bitops, float_size_bytes, quantized_size_bytes, sqnr_db, write_report
from lowbit.report.experiment import quantize_and_measure


def test_sqnr_known_value():
    r = torch.ones(100)
    assert sqnr_db(r, r * 1.1) == pytest.approx(20.0)
    assert math.isinf(sqnr_db(r, r))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def test_size_and_bitops_follow_bit_widths():
    data = [torch.randn(8, 1, 28, 28)]
    fp = _mlp()
    w4 = lowbit.PTQConfig(weight=lowbit.QuantSpec(format=lowbit.IntFormat(bits=4)), activation=None)
    q = lowbit.quantize_(_mlp(), w4)
    n_w = 784 * 64 + 64 * 10
    n_b = 64 + 10
    assert float_size_bytes(fp) == (n_w + n_b) * 4
    # 4-bit packed weights + one fp32 scale + 1-byte zero point per tensor + fp32 biases
    assert quantized_size_bytes(q) == n_w // 2 + 2 * (4 + 1) + n_b * 4
    q8 = lowbit.quantize_(_mlp(), lowbit.PTQConfig(), data=data)
    b = bitops(q8, data[0])
    assert b["macs"] == n_w
    assert b["bitops"] == n_w * 8 * 8 and b["fp32_bitops"] == n_w * 32 * 32


def test_quantize_and_measure_report_files(tmp_path, fmnist_calib, fmnist_small_test):
    from lowbit.zoo import load_model

    _, r = quantize_and_measure(load_model("fmnist-resnet"), lowbit.load_recipe("w4a8"), fmnist_calib, fmnist_small_test,
                                recipe="w4a8", model_name="fmnist-resnet")
    assert r["folded_batchnorms"] == 9 and r["quantized_adds"] == 3
    layers = {layer["name"]: layer for layer in r["layers"]}
    assert layers["stem.0"]["weight_bits"] == 8 and layers["layers.0.conv1"]["weight_bits"] == 4
    # 4-bit weights are noisier than 8-bit ones; every layer has a finite output SQNR
    assert layers["layers.0.conv1"]["weight_sqnr_db"] < layers["stem.0"]["weight_sqnr_db"]
    assert all(math.isfinite(v["output_sqnr_db"]) and v["output_sqnr_db"] > 5 for v in layers.values())
    lo, hi = layers["layers.0.conv1"]["activation_clip"]
    assert lo <= 0 < hi
    paths = write_report([r], tmp_path)
    assert json.loads(paths["json"].read_text())[0]["recipe"] == "w4a8"
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64") >= 2 and "layers.0.conv1" in html


def test_bits_plot_only_for_mixed_widths_and_mixed_section_plots():
    from lowbit.report.html import bits_plot, mixed_plots, to_html

    layer = {"name": "a", "weight_bits": 4, "activation_bits": 8, "params": 100}
    base = {"model": "m", "recipe": "r", "fp32_accuracy": 90.0, "quantized_accuracy": 89.0, "accuracy_drop_pp": 1.0,
            "quantize_seconds": 1.0, "size_bytes": {"fp32": 400, "quantized": 100}}
    assert bits_plot({**base, "layers": [layer, {**layer, "name": "b"}]}) is None  # uniform: nothing to draw
    mixed_layers = [layer, {**layer, "name": "b", "weight_bits": 2}, {**layer, "name": "c", "weight_bits": 32, "activation_bits": 32}]
    assert bits_plot({**base, "layers": mixed_layers}).startswith("data:image/png;base64,")
    mixed = {"method": "milp", "frontier": [{"average_bits": 3.0, "accuracy": 88.0, "latency_ratio": 0.6},
                                            {"average_bits": 4.0, "accuracy": 89.5, "latency_ratio": 0.7}],
             "uniform": [{"name": "W4A8", "average_bits": 4.0, "accuracy": 89.0, "latency_ratio": 0.72}],
             "chosen": {"average_bits": 3.5, "latency_ratio": 0.65}}
    plots = mixed_plots({**base, "mixed": mixed})
    assert [t for t, _ in plots] == ["accuracy vs size", "accuracy vs latency"]
    no_latency = {**mixed, "frontier": [{**f, "latency_ratio": None} for f in mixed["frontier"]],
                  "uniform": [{**mixed["uniform"][0], "latency_ratio": None}]}
    assert [t for t, _ in mixed_plots({**base, "mixed": no_latency})] == ["accuracy vs size"]
    assert mixed_plots(base) == []
    html = to_html([{**base, "layers": [{**x, "weight_spec": "s", "activation_spec": "s", "weight_sqnr_db": 1.0} for x in mixed_layers],
                     "mixed": mixed}])
    assert html.count("Mixed precision:") == 2
