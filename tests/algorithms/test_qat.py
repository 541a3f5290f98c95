"""QAT: learned quantizers' math (LSQ, PACT, DoReFa, DSQ), prepare -> train -> convert bit-exactness,
checkpoint / resume, distillation, and the error paths."""

import math

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit import CheckpointError, QATConfig
from lowbit.algorithms.qat import learned_quantizers
from lowbit.config import QuantSpec
from lowbit.errors import ConfigError
from lowbit.nn.learned import DoReFaWeightQuant, DSQQuant, LSQQuant, PACTQuant
from lowbit.quant import IntFormat, fake_quantize
from lowbit.zoo import load_model

W4 = QuantSpec.from_dict({"bits": 4, "granularity": "per_channel"})


def tiny_net() -> torch.nn.Module:
    """A small conv net (BN, ReLU, a middle layer that is neither first nor last): fast exactness checks."""
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16),
                         nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
U4 = QuantSpec.from_dict({"bits": 4, "signed": False, "mapping": "affine"})


def test_lsq_forward_is_fake_quantize_and_step_gradient_matches_the_paper():
    torch.manual_seed(0)
    w = torch.randn(3, 5)
    s0 = torch.tensor([0.2, 0.3, 0.25])
    q = LSQQuant(W4, s0, torch.zeros(3, dtype=torch.int32), is_weight=True)
    y = q(w)
    assert torch.equal(y, fake_quantize(w, s0, torch.zeros(3, dtype=torch.int32), W4.format, W4.granularity))
    y.sum().backward()
    v = w / s0[:, None]
    inside = (v.round() >= -8) & (v.round() <= 7)
    per = torch.where(inside, v.round() - v, torch.where(v < 0, torch.tensor(-8.0), torch.tensor(7.0)))
    g = 1 / math.sqrt(5 * 7)  # 5 weights per scale, Qp = 7
    torch.testing.assert_close(q.scale.grad, per.sum(1) * g, rtol=1e-5, atol=1e-6)


def test_fused_fake_quant_node_matches_the_unfused_autograd_graph():
    from lowbit.nn.learned import _grad_scale, _ste_round

    torch.manual_seed(0)
    x = (torch.randn(4, 6, 5, 5) * 2).requires_grad_()
    upstream = torch.randn(4, 6, 5, 5)
    q = LSQQuant(U4, torch.tensor(0.3), torch.tensor(3, dtype=torch.int32))
    (q(x) * upstream).sum().backward()
    xr, s = x.detach().clone().requires_grad_(), torch.tensor(0.3, requires_grad=True)
    g = 1 / math.sqrt(6 * 5 * 5 * 15)  # elements per sample, Qp = 15
    sg = _grad_scale(s, g)
    v = torch.clamp(_ste_round(xr / sg, False) + 3, 0, 15)
    y_ref = (v - 3) * sg
    (y_ref * upstream).sum().backward()
    assert torch.equal(q(x), y_ref)  # bit-identical forward values
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(q.scale.grad, s.grad, rtol=1e-5, atol=1e-6)
    assert 0 < float((x.grad == 0).float().mean()) < 1  # some inputs clamped, some not


def test_pact_gradient_goes_to_alpha_only_above_it():
    x = torch.tensor([-1.0, 0.3, 0.9, 2.0, 5.0], requires_grad=True)
    q = PACTQuant(U4, alpha=1.5)
    y = q(x)
    s = 1.5 / 15
    assert torch.equal(y.detach(), fake_quantize(x.detach(), torch.tensor(s), torch.tensor(0), U4.format))
    y.sum().backward()
    assert q.alpha.grad.item() == 2.0  # two inputs >= alpha
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert q.regularization().item() == pytest.approx(1e-4 * 1.5**2)


def test_dorefa_weights_sit_on_the_odd_grid_and_convert_one_bit_wider():
    torch.manual_seed(0)
    w = torch.randn(4, 9) * 0.1
    q = DoReFaWeightQuant(QuantSpec.from_dict({"bits": 2}))
    y = q(w)
    step = torch.tanh(w).abs().max() / 3
    codes = y / step
    assert set(codes.round().unique().tolist()) <= {-3.0, -1.0, 1.0, 3.0}
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-5)
    spec, s, z = q.frozen_grid(w)
    assert spec.bits == 3 and spec.format.signed and torch.equal(fake_quantize(y, s, z, spec.format), y)


def test_dsq_is_hard_forward_and_soft_backward_annealed():
    x = torch.tensor([0.05, 0.1, 0.14, 0.3], requires_grad=True)
    q = DSQQuant(U4, torch.tensor(0.1), torch.tensor(0), alpha=(0.5, 0.01))
    q.train()
    y = q(x)
    assert torch.equal(y.detach(), fake_quantize(x.detach(), torch.tensor(0.1), torch.tensor(0), U4.format))
    y.sum().backward()
    g_soft = x.grad.clone()
    k = math.log(2 / 0.5 - 1)
    f = x.detach() / 0.1 - torch.floor(x.detach() / 0.1) - 0.5
    torch.testing.assert_close(g_soft, k / torch.cosh(k * f) ** 2 / (2 * math.tanh(k / 2)), rtol=1e-4, atol=1e-5)
    q.set_progress(1.0)
    assert q.alpha == pytest.approx(0.01)


def test_stochastic_rounding_only_while_training():
    spec = QuantSpec.from_dict({"bits": 4, "signed": False, "mapping": "affine", "rounding": "stochastic"})
    q = LSQQuant(spec, torch.tensor(1.0), torch.tensor(0))
    x = torch.full((20000,), 2.3)
    q.train()
    y = q(x)
    assert set(y.detach().unique().tolist()) == {2.0, 3.0} and abs(float(y.detach().mean()) - 2.3) < 0.02  # unbiased
    q.eval()
    assert set(q(x).unique().tolist()) == {2.0}


@pytest.mark.parametrize("wm,am", [("lsq", "lsq"), ("lsq", "pact"), ("dorefa", "dorefa"), ("dsq", "dsq"), ("ste", "ste")])
def test_prepare_train_convert_is_bit_exact(fmnist_calib, wm, am):
    calib = fmnist_calib.subset(96, seed=0)
    cfg = QATConfig.wrap(lowbit.load_recipe("w4a4"), weight_method=wm, activation_method=am)
    q = lowbit.quantize_(tiny_net(), cfg, data=calib)
    assert learned_quantizers(q) and q.lowbit_info["qat"]["weight_method"] == wm
    lowbit.train(q, calib, epochs=1, batch_size=48, lr=1e-3, progress=False)
    x = calib.images[:32]
    with torch.no_grad():
        y_trained = q.eval()(x)
    c = lowbit.quantize_(q, cfg.replace(step="convert"))
    assert not learned_quantizers(c)
    with torch.no_grad():
        assert torch.equal(c(x), y_trained)
    if am in ("pact", "dorefa"):  # the network input is signed: LSQ there
        assert "0.input_quant" in c.lowbit_info["qat"]["fallback_to_lsq"]


def test_resnet_with_shared_grids_converts_bit_exactly(fmnist_calib):
    calib = fmnist_calib.subset(48, seed=0)
    cfg = QATConfig.wrap(lowbit.load_recipe("w4a4"), activation_method="pact")
    q = lowbit.quantize_(load_model("fmnist-resnet"), cfg, data=calib)
    assert q.lowbit_info["qat"]["shared"]  # residual-add grids are shared with their readers
    assert "lowbit_add_1.input_quant_b" in q.lowbit_info["qat"]["fallback_to_lsq"]  # a signed residual sum
    lowbit.train(q, calib, epochs=1, batch_size=48, progress=False)
    with torch.no_grad():
        y = q.eval()(calib.images[:16])
        c = lowbit.quantize_(q, cfg.replace(step="convert"))
        assert torch.equal(c(calib.images[:16]), y)
    assert c.lowbit_info["qat_convert"]["shared_grids"] == len(q.lowbit_info["qat"]["shared"])


def test_converted_model_reloads_bit_exactly(tmp_path, fmnist_calib):
    calib = fmnist_calib.subset(64, seed=0)
    cfg = lowbit.load_recipe("qat-w2a2-dorefa")
    q = lowbit.quantize_(tiny_net(), cfg, data=calib)
    lowbit.train(q, calib, epochs=1, batch_size=32, progress=False)
    c = lowbit.quantize_(q, cfg.replace(step="convert"))
    lowbit.save(c, tmp_path / "m.lowbit")
    with torch.no_grad():
        assert torch.equal(lowbit.load(tmp_path / "m.lowbit", model=tiny_net())(calib.images[:16]), c(calib.images[:16]))


def _mlp_qat(seed=0):
    torch.manual_seed(seed)
    x, y = torch.randn(192, 1, 28, 28), torch.randint(0, 10, (192,))
    cfg = QATConfig.wrap(lowbit.load_recipe("w4a8"))
    return lowbit.quantize_(load_model("fmnist-mlp"), cfg, data=[x]), (x, y), cfg


class _Stop(Exception):
    pass


def test_resume_after_interruption_loses_only_the_current_epoch(tmp_path):
    ref, data, _ = _mlp_qat()
    lowbit.train(ref, data, epochs=3, lr=1e-3, batch_size=64, progress=False)
    q, data, _ = _mlp_qat()
    calls = {"n": 0}

    def dies_in_epoch_2(batch):
        calls["n"] += 1
        if calls["n"] == 5:  # 3 batches per epoch: the 2nd batch of epoch 2
            raise _Stop
        return batch

    ck = tmp_path / "run.ckpt"
    with pytest.raises(_Stop):
        lowbit.train(q, data, epochs=3, lr=1e-3, batch_size=64, checkpoint=ck, transform_fn=dies_in_epoch_2, progress=False)
    q2, data, _ = _mlp_qat()
    r = lowbit.train(q2, data, epochs=3, lr=1e-3, batch_size=64, checkpoint=ck, progress=False)
    assert r["resumed_from"] == 1 and [h["epoch"] for h in r["history"]] == [1, 2, 3]
    for (k, a), b in zip(ref.state_dict().items(), q2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # same as the uninterrupted run


def test_resume_from_another_recipe_or_model_is_refused(tmp_path):
    q, data, _ = _mlp_qat()
    ck = tmp_path / "run.ckpt"
    lowbit.train(q, data, epochs=1, batch_size=64, checkpoint=ck, fingerprint={"recipe": "a"}, progress=False)
    with pytest.raises(CheckpointError, match="belongs to another model or recipe.*recipe"):
        lowbit.train(q, data, epochs=1, batch_size=64, checkpoint=ck, fingerprint={"recipe": "b"}, progress=False)
    other = lowbit.quantize_(load_model("fmnist-resnet"), QATConfig.wrap(lowbit.load_recipe("w4a8")), data=[data[0][:16]])
    with pytest.raises(CheckpointError, match="structure"):
        lowbit.train(other, data, epochs=1, batch_size=64, checkpoint=ck, fingerprint={"recipe": "a"}, progress=False)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read training checkpoint"):
        lowbit.train(q, data, epochs=1, checkpoint=tmp_path / "junk.ckpt", progress=False)


def test_distillation_loss_matches_the_formula_and_needs_labels_when_mixed():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    T, a = 3.0, 0.7
    p_t = F.softmax(t / T, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, -1))).sum(-1).mean()
    expected = a * T * T * kl + (1 - a) * F.cross_entropy(s, y)
    torch.testing.assert_close(lowbit.distillation_loss(s, t, y, temperature=T, weight=a), expected)
    with pytest.raises(ConfigError, match="has none"):
        lowbit.distillation_loss(s, t, None, weight=0.5)


def test_training_without_labels(tmp_path):
    q, (x, _), _ = _mlp_qat()
    with pytest.raises(ConfigError, match="needs labels"):
        lowbit.train(q, [x[:64], x[64:128]], epochs=1, progress=False)
    teacher = load_model("fmnist-mlp")
    r = lowbit.train(q, [x[:64], x[64:128]], epochs=1, teacher=teacher, distill_weight=1.0, progress=False)
    assert len(r["history"]) == 1 and math.isfinite(r["history"][0]["loss"])  # soft targets alone need no labels


def test_convert_without_prepare_and_double_prepare_are_errors():
    cfg = QATConfig.wrap(lowbit.load_recipe("w4a8"))
    with pytest.raises(ConfigError, match="QAT convert needs a model prepared"):
        lowbit.quantize_(load_model("fmnist-mlp"), cfg.replace(step="convert"))
    q, _, _ = _mlp_qat()
    with pytest.raises(ConfigError, match="already QAT-prepared"):
        lowbit.quantize_(q, cfg, data=[torch.randn(8, 1, 28, 28)])


@pytest.mark.parametrize(
    "bad,needle",
    [({"step": "train"}, "step"), ({"weight_method": "pact"}, "weight_method"), ({"activation_method": "tanh"}, "activation_method"),
     ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"distill_weight": 1.5}, "distill_weight"), ({"dsq_alpha": [0.01, 0.2]}, "dsq_alpha"),
     ({"optimizer": "lbfgs"}, "optimizer"), ({"activation": QuantSpec.from_dict({"bits": 8, "dynamic": True})}, "dynamic"),
     ({"weight": QuantSpec.from_dict({"bits": 4, "granularity": "per_group", "group_size": 8})}, "per_group")],
)
def test_config_validation(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        QATConfig(**bad)


@pytest.mark.parametrize("name", ["qat-w4a4-lsq", "qat-w2a2-lsq", "qat-w2a2-dsq", "qat-w4a4-pact", "qat-w2a2-dorefa"])
def test_recipes_load_and_round_trip(name):
    cfg = lowbit.load_recipe(name)
    assert isinstance(cfg, QATConfig) and cfg.step == "prepare" and len(cfg.overrides) == 2
    assert QATConfig.from_yaml(cfg.to_yaml()) == cfg


def test_int_format_of_pact_must_be_unsigned():
    with pytest.raises(ConfigError, match="unsigned per-tensor"):
        PACTQuant(QuantSpec(format=IntFormat(bits=4, signed=True)), alpha=1.0)


@pytest.mark.parametrize("recipe", ["bwn", "bnn", "twn", "ttq", "pot-w4", "shiftcnn-n2b4", "kmeans-w3"])
def test_extreme_and_nonuniform_weights_convert_and_reload_bit_exactly(tmp_path, fmnist_calib, recipe):
    calib = fmnist_calib.subset(64, seed=0)
    cfg = lowbit.load_recipe(recipe)
    q = lowbit.quantize_(tiny_net(), cfg, data=calib)
    lowbit.train(q, calib, epochs=1, batch_size=32, progress=False)
    x = calib.images[:16]
    with torch.no_grad():
        y = q.eval()(x)
    c = lowbit.quantize_(q, cfg.replace(step="convert"))
    conv = dict(c.named_modules())["3"]  # the middle conv (first and last layers are 8-bit)
    values = conv.weight.detach().unique()
    expected_values = {"bwn": 2 * 16, "bnn": 2, "twn": 3, "ttq": 3}  # bwn: +-alpha per output channel
    if recipe in expected_values:
        assert values.numel() <= expected_values[recipe]
    else:
        assert values.numel() <= 2 ** cfg.weight.bits if recipe != "shiftcnn-n2b4" else values.numel() <= 15 * 15
    lowbit.save(c, tmp_path / "m.lowbit")
    with torch.no_grad():
        assert torch.equal(c(x), y)
        assert torch.equal(lowbit.load(tmp_path / "m.lowbit", model=tiny_net())(x), y)


def test_binary_weights_take_one_bit_on_disk(tmp_path, fmnist_calib):
    calib = fmnist_calib.subset(32, seed=0)
    cfg = lowbit.load_recipe("bwn")
    c = lowbit.quantize_(lowbit.quantize_(tiny_net(), cfg, data=calib), cfg.replace(step="convert"))
    info = lowbit.save(c, tmp_path / "m.lowbit")
    binary = [n for n, e in info["layers"].items() if e.get("binary")]
    assert len(binary) == len(info["layers"]) - 2  # all but the 8-bit first / last layers
    n_binary = sum(math.prod(info["layers"][n]["shape"]) for n in binary)
    n_other = sum(math.prod(e["shape"]) for n, e in info["layers"].items() if n not in binary)
    assert info["weight_bits_total"] == n_binary + 8 * n_other  # 1 bit per binary weight: 32x below fp32


@pytest.mark.parametrize("method,bits,needle", [("ttq", 4, r"ttq supports weight bits \[2\], got 4"),
                                                ("bwn", 2, r"bwn supports weight bits \[1\]"), ("pot", 1, "pot supports")])
def test_bit_widths_a_method_does_not_support_name_the_supported_set(method, bits, needle):
    with pytest.raises(ConfigError, match=needle):
        QATConfig(weight=QuantSpec.from_dict({"bits": bits}), weight_method=method)


def test_codebook_weights_refuse_onnx_export(tmp_path, fmnist_calib):
    calib = fmnist_calib.subset(32, seed=0)
    cfg = lowbit.load_recipe("kmeans-w3")
    c = lowbit.quantize_(lowbit.quantize_(tiny_net(), cfg, data=calib), cfg.replace(step="convert"))
    with pytest.raises(lowbit.UnsupportedError, match="codebook"):
        lowbit.export_onnx(c, calib.images[:1], tmp_path / "m.onnx")
