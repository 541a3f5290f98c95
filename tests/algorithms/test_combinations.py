"""Recipe combinations that cannot work are refused up front with a ConfigError that says why;
configs whose refinement needs data refuse to run without it (nothing silently skipped)."""

import pytest
import torch

import lowbit
from lowbit.algorithms.iterative import finetune_to_float
from lowbit.errors import CalibrationError, ConfigError
from lowbit.recipes import load_recipe
from lowbit.zoo import load_model

W4 = "weight: {bits: 4, granularity: per_channel, observer: mse}\n"
A8 = "activation: {bits: 8, signed: false, mapping: affine}\n"


@pytest.mark.parametrize(
    "text,needle",
    [
        ("kind: zeroq\n" + W4 + "activation: null\n", "ZeroQ distills inputs to calibrate static activation ranges"),
        ("kind: zeroq\n" + W4 + "activation: {bits: 8, dynamic: true}\n", "dynamic activations"),
        ("kind: adaround\nweight: null\n" + A8, "AdaRound learns how weights are rounded"),
        ("kind: adaround\nweight: {bits: 4, rounding: stochastic}\n" + A8, "rounding must be the default nearest_even"),
        ("kind: aciq\n" + W4 + A8, "8-bit per-channel weights as the container"),
        ("kind: dfq\nweight: null\n" + A8, "set a weight quantizer"),
        ("kind: iterative\nweight: null\nactivation: null\n", "needs a weight or an activation quantizer"),
        ("kind: ptq\n" + W4 + "iters: 100\n", "unknown key 'iters'"),  # an AdaRound field in a plain PTQ recipe
        ("kind: dfq\n" + W4 + "bias_correction: both\n", "bias_correction"),
    ],
)
def test_incompatible_combinations_are_refused(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_recipe(str(path))


def test_refining_config_with_calibrate_false_is_an_error():
    cfg = load_recipe("w4a4-adaround").replace(iters=2)
    with pytest.raises(ConfigError, match="calibrate=False would silently skip"):
        lowbit.quantize_(load_model("fmnist-mlp"), cfg, data=[torch.randn(8, 1, 28, 28)], calibrate=False)


@pytest.mark.parametrize("recipe", ["w4a4-iterative", "w4a8-adaround"])
def test_refining_config_without_data_names_what_needs_it(recipe):
    with pytest.raises(CalibrationError, match=f"needs calibration data for .*{load_recipe(recipe).kind} refinement"):
        lowbit.quantize_(load_model("fmnist-mlp"), load_recipe(recipe))


def test_dfq_with_empirical_correction_but_no_data():
    cfg = load_recipe("dfq-w8a8-per-tensor").replace(bias_correction="empirical")
    with pytest.raises(CalibrationError, match="dfq refinement"):
        lowbit.quantize_(load_model("fmnist-mobilenet"), cfg)


def test_finetune_to_float_moves_toward_the_float_outputs_and_validates():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    q = lowbit.quantize_(load_model("fmnist-mlp"), load_recipe("w4a4"), data=[x])
    w0 = q.fc1.weight.detach().clone()
    r = finetune_to_float(q, [x], epochs=3, lr=1e-5, batch_size=16)
    assert r["mse"] < r["mse_before"] and len(r["loss"]) == 3
    assert not torch.equal(q.fc1.weight, w0) and q.fc1.weight.requires_grad  # trained; flags restored
    for bad, needle in (({"epochs": 0}, "epochs"), ({"epochs": 1, "lr": -1.0}, "lr"), ({"epochs": 1, "optimizer": "lbfgs"}, "optimizer")):
        with pytest.raises(ConfigError, match=needle):
            finetune_to_float(q, [x], **bad)
    with pytest.raises(ConfigError, match="no quantized layer"):
        finetune_to_float(load_model("fmnist-mlp"), [x], epochs=1)
