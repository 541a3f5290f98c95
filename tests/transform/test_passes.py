import pytest
import torch
from torch import nn

from lowbit.algorithms.ptq.config import DEFAULT_ACTIVATION
from lowbit.config import Select
from lowbit.errors import ConfigError, SelectorError
from lowbit.nn import QuantAdd
from lowbit.transform import FoldBatchNorm, quantizable_layers, quantize_functional_ops, resolve
from lowbit.zoo.models import FmnistMobileNet, FmnistResNet


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.mark.parametrize("factory,n_bn", [(FmnistResNet, 9), (FmnistMobileNet, 22)])
def test_bn_folding_is_exact_and_removes_every_bn(factory, n_bn):
    torch.manual_seed(0)
    model = _randomize_bn(factory())
    x = torch.randn(4, 1, 28, 28)
    ref = model(x)
    fold = FoldBatchNorm()
    model = fold.apply(model)
    assert len(fold.folded) == n_bn
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)


def test_bn_after_shared_conv_output_is_not_folded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # conv output used twice: folding would change the second use

    fold = FoldBatchNorm()
    fold.apply(Branchy().eval())
    assert fold.folded == []


def test_residual_adds_become_quant_adds():
    gm, found = quantize_functional_ops(FmnistResNet(), DEFAULT_ACTIVATION)
    assert len(found["adds"]) == 3 and len(found["pools"]) == 1
    assert sum(isinstance(m, QuantAdd) for m in gm.modules()) == 3
    gm, found = quantize_functional_ops(FmnistMobileNet(), DEFAULT_ACTIVATION)
    assert len(found["adds"]) == 4  # blocks with stride 1 and equal in/out channels


def test_untraceable_model_warns_and_keeps_module():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace
                return self.fc(x) + x
            return x

    m = DataDependent()
    with pytest.warns(UserWarning, match="cannot trace"):
        out, found = quantize_functional_ops(m, DEFAULT_ACTIVATION)
    assert out is m and found == {"adds": [], "pools": []}


def test_selectors():
    m = FmnistResNet()
    c = quantizable_layers(m)
    assert resolve(Select(name="fc"), m, c) == ["fc"]
    assert resolve(Select(name="layers.0"), m, c) == ["layers.0.conv1", "layers.0.conv2"]
    assert resolve(Select(regex=r"shortcut"), m, c) == ["layers.1.shortcut.0", "layers.2.shortcut.0"]
    assert resolve(Select(type="Linear"), m, c) == ["fc"]
    assert resolve(Select(position="first"), m, c) == ["stem.0"]
    assert resolve(Select(position="last"), m, c) == ["fc"]


@pytest.mark.parametrize("sel", [Select(name="nope"), Select(regex="^zzz"), Select(type="LSTM")])
def test_selector_matching_nothing_is_error(sel):
    m = FmnistResNet()
    with pytest.raises(SelectorError, match="match"):
        resolve(sel, m, quantizable_layers(m))


@pytest.mark.parametrize("sel", [Select(name="nope", optional=True), Select(regex="^zzz", optional=True),
                                 Select(type="LSTM", optional=True)])
def test_optional_selector_matching_nothing_selects_nothing(sel):
    m = FmnistResNet()
    assert resolve(sel, m, quantizable_layers(m)) == []
    assert Select.from_dict(sel.to_dict()) == sel  # round-trips through a recipe file


def test_optional_selector_must_be_bool():
    with pytest.raises(ConfigError, match="optional"):
        Select.from_dict({"regex": "shortcut", "optional": "yes"})


def test_generic_recipe_with_optional_shortcut_override_on_a_plain_model():
    """The shipped xnor recipe names shortcut convs; a model without any still quantizes."""
    import lowbit

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 26 * 26, 10)).eval()
    x = torch.randn(8, 1, 28, 28)
    q = lowbit.quantize_(net, lowbit.load_recipe("xnor"), data=[x])
    assert q(x).shape == (8, 10)


def test_add_relu_fusion_and_shared_grids(fmnist_calib, fmnist_small_test):
    import lowbit
    from lowbit.zoo import load_model

    float_model = load_model("fmnist-resnet")
    q = lowbit.quantize_(load_model("fmnist-resnet"), lowbit.load_recipe("w8a8"), data=fmnist_calib)
    info = q.lowbit_info
    assert all(q.get_submodule(a).fused_relu for a in info["adds"])  # every ResNet add is followed by its ReLU
    links = dict(info["shared_grids"])
    assert links["layers.1.conv1.input_quant"] == links["layers.1.shortcut.0.input_quant"] == "lowbit_add_0.output_quant"
    assert links["fc.input_quant"] == "lowbit_pool_0_out"
    for consumer, source in links.items():  # calibrated to the very same grid, whatever the module order
        c, s = q.get_submodule(consumer), q.get_submodule(source)
        assert c.calibrated and torch.equal(c.scale, s.scale) and torch.equal(c.zero_point, s.zero_point)
    assert int(q.get_submodule("lowbit_add_0.output_quant").zero_point) == 0  # post-ReLU grid starts at zero
    acc_q, acc_f = lowbit.evaluate(q, fmnist_small_test), lowbit.evaluate(float_model, fmnist_small_test)
    assert acc_q >= acc_f - 0.3


def test_mobilenet_adds_without_relu_share_their_grid(fmnist_calib):
    import lowbit
    from lowbit.zoo import load_model

    q = lowbit.quantize_(load_model("fmnist-mobilenet"), lowbit.load_recipe("w8a8"), data=fmnist_calib)
    assert not any(q.get_submodule(a).fused_relu for a in q.lowbit_info["adds"])  # linear bottlenecks: no ReLU after the add
    links = dict(q.lowbit_info["shared_grids"])
    assert links["blocks.1.block.0.input_quant"] == "lowbit_add_0.output_quant"
    assert links["head.0.input_quant"] == "lowbit_add_3.output_quant"
