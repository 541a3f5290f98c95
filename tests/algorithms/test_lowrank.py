"""Low-rank decomposition (F21): exactness of each factorization, rank rules, budget, errors, zoo conformance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from lowbit.algorithms.lowrank import (
    LowRankConfig,
    LowRankSequential,
    choose_rank_energy,
    cp_conv,
    cp_factors,
    cp_max_rank,
    decompose,
    macs_of,
    mode_singular_values,
    reconstruct_weight,
    svd_conv,
    svd_linear,
    tucker2_conv,
    tucker2_factors,
)
from lowbit.errors import ConfigError, SelectorError, UnsupportedError
from lowbit.report.metrics import layer_macs

RTOL, ATOL = 1e-4, 1e-5


def _seeded(seed: int = 0) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class SmallNet(nn.Module):
    """stem 3x3 (3 -> 16), conv 3x3 (16 -> 32) + BN, strided conv 3x3 (32 -> 32), 1x1 conv (32 -> 48), depthwise 3x3, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.pw = nn.Conv2d(32, 48, 1)
        self.dw = nn.Conv2d(48, 48, 3, padding=1, groups=48)
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(F.relu(self.stem(x)))))
        x = F.relu(self.dw(self.pw(F.relu(self.conv2(x)))))
        return self.fc(x.mean((2, 3)))


def _small_net() -> tuple[nn.Module, torch.Tensor]:
    _seeded(0)
    return SmallNet().eval(), torch.randn(4, 3, 12, 12)


# ----------------------------------------------------------------------------- exactness


def test_svd_linear_is_exact_at_full_rank():
    _seeded()
    fc = nn.Linear(24, 10)
    x = torch.randn(5, 24)
    seq = svd_linear(fc, 10)
    assert [type(m) for m in seq] == [nn.Linear, nn.Linear] and seq[0].bias is None
    assert_close(seq(x), fc(x), rtol=RTOL, atol=ATOL)


def test_svd_linear_without_bias_and_3d_input():
    _seeded()
    fc = nn.Linear(12, 20, bias=False)
    x = torch.randn(2, 7, 12)
    seq = svd_linear(fc, 12)
    assert seq[1].bias is None
    assert_close(seq(x), fc(x), rtol=RTOL, atol=ATOL)
    assert macs_of(seq, (7, 12)) == sum(layer_macs(seq, x).values()) == 7 * 12 * (12 + 20)


def test_svd_truncation_error_is_the_discarded_energy():
    """Eckart-Young: ||W - W_r||^2 = sum of the discarded squared singular values."""
    _seeded()
    fc = nn.Linear(30, 20)
    s = mode_singular_values(fc.weight, 0)
    w = fc.weight.detach().double()
    err2 = float(((reconstruct_weight(svd_linear(fc, 7)).double() - w) ** 2).sum())
    assert err2 == pytest.approx(float((s[7:] ** 2).sum()), rel=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_svd_conv1x1_is_exact_at_full_rank(stride):
    _seeded()
    conv = nn.Conv2d(20, 12, 1, stride=stride)
    x = torch.randn(2, 20, 9, 9)
    seq = svd_conv(conv, 12)
    assert all(tuple(m.kernel_size) == (1, 1) for m in seq) and seq[0].stride == (stride, stride)
    assert_close(seq(x), conv(x), rtol=RTOL, atol=ATOL)


def test_svd_conv_kxk_is_exact_at_full_rank():
    _seeded()
    conv = nn.Conv2d(3, 40, 3, stride=2, padding=1)  # max rank min(40, 27) = 27
    x = torch.randn(2, 3, 11, 11)
    assert_close(svd_conv(conv, 27)(x), conv(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("geometry", [
    {"stride": 1, "padding": 1},
    {"stride": 2, "padding": 1, "bias": False},
    {"stride": (2, 1), "padding": (0, 2), "dilation": (1, 2)},
    {"stride": 1, "padding": 1, "padding_mode": "reflect"},
], ids=["plain", "stride2-nobias", "asymmetric-dilated", "reflect"])
def test_tucker2_is_exact_at_full_rank(geometry):
    _seeded()
    conv = nn.Conv2d(6, 10, 3, **geometry)
    x = torch.randn(2, 6, 11, 11)
    seq = tucker2_conv(conv, (10, 6))
    assert [tuple(m.kernel_size) for m in seq] == [(1, 1), (3, 3), (1, 1)]
    assert_close(seq(x), conv(x), rtol=RTOL, atol=ATOL)


def test_tucker2_recovers_an_exactly_low_rank_weight():
    _seeded()
    w = torch.einsum("op,pqhw,iq->oihw", torch.randn(12, 3), torch.randn(3, 2, 3, 3), torch.randn(8, 2))
    conv = nn.Conv2d(8, 12, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(w)
    x = torch.randn(2, 8, 7, 7)
    seq = tucker2_conv(conv, (3, 2), hooi_iters=0)
    assert_close(seq(x), conv(x), rtol=RTOL, atol=ATOL)
    assert [tuple(m.weight.shape) for m in seq] == [(2, 8, 1, 1), (3, 2, 3, 3), (12, 3, 1, 1)]


def test_hooi_does_not_increase_the_tucker2_error():
    _seeded()
    w = torch.randn(16, 12, 3, 3)

    def err(it: int) -> float:
        u_out, g, u_in = tucker2_factors(w, (5, 4), it)
        return float((torch.einsum("op,pqhw,iq->oihw", u_out, g, u_in) - w.double()).norm())

    assert err(3) <= err(0) + 1e-9


@pytest.mark.parametrize("geometry", [
    {"stride": 2, "padding": 1},
    {"stride": (2, 1), "padding": (1, 0), "dilation": (2, 1)},
    {"stride": 1, "padding": 2, "padding_mode": "circular"},
], ids=["stride2-pad1", "asymmetric-dilated", "circular"])
def test_cp_is_exact_at_max_rank(geometry):
    _seeded()
    conv = nn.Conv2d(3, 4, (3, 5), **geometry)
    x = torch.randn(2, 3, 13, 13)
    r = cp_max_rank(conv)
    assert r == 4 * 3 * 3 * 5 // 5
    seq = cp_conv(conv, r)
    assert [m.groups for m in seq] == [1, r, r, 1] and [tuple(m.kernel_size) for m in seq] == [(1, 1), (3, 1), (1, 5), (1, 1)]
    assert_close(seq(x), conv(x), rtol=RTOL, atol=ATOL)


def test_cp_fit_recovers_an_exactly_low_rank_weight():
    _seeded()
    w = torch.einsum("or,ir,hr,wr->oihw", *[torch.randn(n, 3) for n in (10, 8, 3, 3)])
    conv = nn.Conv2d(8, 10, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.copy_(w)
    x = torch.randn(2, 8, 9, 9)
    assert_close(cp_conv(conv, 3, n_iter_max=500, tol=1e-12)(x), conv(x), rtol=RTOL, atol=1e-4)


def test_cp_layers_compute_the_conv_of_their_reconstructed_weight():
    """At a truncating rank, the four layers (strides / padding split over the depthwise pair) equal one conv with W~."""
    _seeded()
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1)
    seq = cp_conv(conv, 5)
    x = torch.randn(2, 6, 10, 10)
    ref = F.conv2d(x, reconstruct_weight(seq), conv.bias, stride=2, padding=1)
    assert_close(seq(x), ref, rtol=RTOL, atol=ATOL)


def test_cp_als_matches_tensorly_parafac():
    """Parity with an independent implementation of the same ALS (SVD init, no random columns at R <= every mode)."""
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import parafac

    _seeded()
    w = torch.randn(6, 5, 3, 3, dtype=torch.float64)
    ours = torch.einsum("or,ir,hr,wr->oihw", *cp_factors(w, 3, n_iter_max=30, tol=0))
    with tl.backend_context("numpy"):
        ref = torch.from_numpy(tl.cp_to_tensor(parafac(w.numpy(), 3, n_iter_max=30, tol=0, init="svd")))
    assert_close(ours, ref, rtol=0, atol=1e-8)


def test_cp_factors_are_deterministic():
    _seeded()
    w = torch.randn(6, 5, 3, 3)
    a, b = cp_factors(w, 4, seed=3), cp_factors(w, 4, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("form", ["svd1x1", "svdkxk", "tucker2", "cp"])
def test_macs_of_matches_layer_macs(form):
    _seeded()
    conv = nn.Conv2d(8, 16, 1 if form == "svd1x1" else 3, stride=2, padding=1)
    x = torch.randn(1, 8, 15, 15)
    seq = {"svd1x1": lambda: svd_conv(conv, 4), "svdkxk": lambda: svd_conv(conv, 4),
           "tucker2": lambda: tucker2_conv(conv, (4, 3)), "cp": lambda: cp_conv(conv, 4)}[form]()
    assert macs_of(seq, (8, 15, 15)) == sum(layer_macs(seq, x).values())
    assert macs_of(conv, (8, 15, 15)) == sum(layer_macs(conv, x).values())


# ----------------------------------------------------------------------------- rank selection


def test_choose_rank_energy():
    s = torch.tensor([4.0, 2.0, 1.0, 0.0])  # energies 16, 4, 1 of 21
    assert [choose_rank_energy(s, e) for e in (0.5, 16 / 21, 0.9, 20.5 / 21, 1.0)] == [1, 1, 2, 3, 3]
    assert choose_rank_energy(torch.zeros(3), 0.9) == 1


@pytest.mark.parametrize("energy", [0, 1.5, True])
def test_choose_rank_energy_rejects_bad_energy(energy):
    with pytest.raises(ConfigError, match="energy"):
        choose_rank_energy(torch.ones(3), energy)


@pytest.mark.filterwarnings("ignore:layer .* decomposed anyway")
@pytest.mark.parametrize(("method", "energy"), [("auto", 0.8), ("svd", 0.8), ("cp", 0.5)])
def test_energy_mode_keeps_the_energy(method, energy):
    """Every decomposed layer keeps >= energy of ||W||^2 (SVD exactly, Tucker-2 by the HOSVD bound, CP by its fit)."""
    model, x = _small_net()
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    decompose(model, LowRankConfig(method=method, energy=energy, skip_unprofitable=False, cp_iters=50), example=x)
    info = model.lowbit_info
    assert {d["name"] for d in info["layers"]} == {"conv1", "conv2", "pw", "fc"}
    for d in info["layers"]:
        assert d["rel_error"] ** 2 <= 1 - energy + 1e-9, d
        w = weights[d["name"]].double()
        assert d["rel_error"] == pytest.approx(float((reconstruct_weight(model.get_submodule(d["name"])).double() - w).norm() / w.norm()))
    assert info["layers"][0]["method"] == {"auto": "tucker2", "svd": "svd", "cp": "cp"}[method]


@pytest.mark.parametrize(("method", "ratio"), [("auto", 0.5), ("auto", 0.3), ("cp", 0.4)])
def test_budget_mode_meets_the_mac_ratio(method, ratio):
    model, x = _small_net()
    before = layer_macs(model, x)
    decompose(model, LowRankConfig(method=method, rank_by="budget", mac_ratio=ratio, cp_iters=30), example=x)
    info = model.lowbit_info
    assert info["layers"], info
    for d in info["layers"]:
        assert d["macs_before"] == before[d["name"]]
        assert d["macs_after"] < d["macs_before"]
    left = sum(before[s["name"]] for s in info["skipped"] if s["name"] not in ("stem", "dw"))  # selected, left as they are
    selected, kept = info["macs_before"] + left, info["macs_after"] + left
    assert kept <= ratio * selected
    assert kept > 0.6 * ratio * selected  # the threshold is the largest that fits: the budget is used, not wasted
    assert info["model_macs_after"] == sum(layer_macs(model, x).values())
    assert 0 < info["energy_threshold"] < 1


def test_explicit_ranks_override_and_select_layers():
    model, x = _small_net()
    decompose(model, LowRankConfig(layers=["fc"], ranks={"conv2": [5, 7], "conv1": 4}), example=x)
    rows = {d["name"]: d for d in model.lowbit_info["layers"]}
    assert set(rows) == {"conv1", "conv2", "fc"}
    assert rows["conv2"]["ranks"] == [5, 7] and rows["conv1"]["ranks"] == [4, 4]
    assert [tuple(m.weight.shape) for m in model.conv2] == [(7, 32, 1, 1), (5, 7, 3, 3), (32, 5, 1, 1)]


def test_default_selection_reports_what_it_leaves_out():
    model, x = _small_net()
    decompose(model, LowRankConfig(), example=x)
    why = {s["name"]: s["why"] for s in model.lowbit_info["skipped"]}
    assert {"stem", "dw"} <= set(why) and "depthwise" in why["dw"] and "first layer" in why["stem"]
    assert isinstance(model.dw, nn.Conv2d) and isinstance(model.stem, nn.Conv2d)
    model, x = _small_net()
    decompose(model, LowRankConfig(layers=["stem"], ranks={"stem": [4, 3]}), example=x)
    assert isinstance(model.stem, nn.Sequential)


def test_a_second_pass_leaves_existing_factors_alone():
    model, x = _small_net()
    decompose(model, LowRankConfig(energy=0.7), example=x)
    done = [d["name"] for d in model.lowbit_info["layers"]]
    assert done and all(isinstance(model.get_submodule(n), LowRankSequential) for n in done)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    decompose(model, LowRankConfig(energy=0.7), example=x)
    assert model.lowbit_info["layers"] == []
    assert all("earlier decomposition" in s["why"] for s in model.lowbit_info["skipped"] if s["name"].rpartition(".")[0] in done)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_unprofitable_rank_is_skipped_or_warned():
    model, x = _small_net()
    decompose(model, LowRankConfig(layers=["conv1"], ranks={"conv1": [32, 16]}), example=x)
    assert model.lowbit_info["layers"] == [] and "left as it is" in model.lowbit_info["skipped"][0]["why"]
    assert isinstance(model.conv1, nn.Conv2d)
    model, x = _small_net()
    ref = model(x)
    with pytest.warns(UserWarning, match="decomposed anyway"):
        decompose(model, LowRankConfig(layers=["conv1"], ranks={"conv1": [32, 16]}, skip_unprofitable=False), example=x)
    assert isinstance(model.conv1, nn.Sequential)
    assert_close(model(x), ref, rtol=RTOL, atol=ATOL)


def test_measuring_pass_leaves_training_state_and_bn_statistics():
    model, x = _small_net()
    model.train()
    model.fc.eval()
    stats = model.bn1.running_mean.clone()
    decompose(model, LowRankConfig(), example=x)
    assert torch.equal(model.bn1.running_mean, stats)
    assert model.training and model.bn1.training and not model.fc[0].training


def test_full_rank_model_is_unchanged_in_function():
    model, x = _small_net()
    ref = model(x)
    ranks = {"conv1": [32, 16], "conv2": [32, 32], "pw": 32, "fc": 10}
    with pytest.warns(UserWarning, match="decomposed anyway"):
        decompose(model, LowRankConfig(ranks=ranks, skip_unprofitable=False, layers=list(ranks)), example=x)
    assert_close(model(x), ref, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- errors


def test_rank_too_large_names_the_maximum():
    with pytest.raises(ConfigError, match=r"1\.\.4 .*min\(out_features, in_features\)"):
        svd_linear(nn.Linear(6, 4), 5)
    with pytest.raises(ConfigError, match=r"r_in=9 is outside 1\.\.8"):
        tucker2_conv(nn.Conv2d(8, 16, 3), (4, 9))
    with pytest.raises(ConfigError, match=r"outside 1\.\.36 .*CP max rank"):
        cp_conv(nn.Conv2d(4, 8, 3), 37)
    model, x = _small_net()
    with pytest.raises(ConfigError, match=r"ranks\['fc'\]=11 is outside 1\.\.10"):
        decompose(model, LowRankConfig(ranks={"fc": 11}), example=x)


def test_pair_rank_for_an_svd_layer_is_refused():
    model, x = _small_net()
    with pytest.raises(ConfigError, match="takes one rank"):
        decompose(model, LowRankConfig(ranks={"fc": [2, 3]}), example=x)


def test_depthwise_conv_is_unsupported():
    with pytest.raises(UnsupportedError, match="depthwise"):
        tucker2_conv(nn.Conv2d(8, 8, 3, groups=8), (4, 4))
    with pytest.raises(UnsupportedError, match="depthwise"):
        cp_conv(nn.Conv2d(8, 8, 3, groups=8), 4)
    model, x = _small_net()
    with pytest.raises(UnsupportedError, match="depthwise"):
        decompose(model, LowRankConfig(layers=["dw"]), example=x)


@pytest.mark.parametrize("field", ["layers", "exclude", "ranks"])
def test_unknown_layer_name_lists_the_layers(field):
    model, x = _small_net()
    value = {"nope": 3} if field == "ranks" else ["nope"]
    with pytest.raises(SelectorError, match=r"'nope' matches no module; .*\['stem', 'conv1', 'conv2', 'pw', 'dw', 'fc'\]"):
        decompose(model, LowRankConfig(**{field: value}), example=x)
    with pytest.raises(SelectorError, match="is a BatchNorm2d, not a Linear / Conv2d"):
        decompose(model, LowRankConfig(layers=["bn1"]), example=x)


def test_impossible_budget_says_what_is_reachable():
    model, x = _small_net()
    with pytest.raises(ConfigError, match=r"mac_ratio=0\.01 cannot be met.*raise mac_ratio to at least"):
        decompose(model, LowRankConfig(rank_by="budget", mac_ratio=0.01), example=x)


def test_error_leaves_the_model_untouched():
    model, x = _small_net()
    with pytest.raises(ConfigError):
        decompose(model, LowRankConfig(ranks={"conv1": 2, "fc": 99}), example=x)
    assert isinstance(model.conv1, nn.Conv2d) and not hasattr(model, "lowbit_info")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "tucker"}, r"method must be one of \['auto', 'svd', 'tucker2', 'cp'\], got 'tucker'"),
    ({"rank_by": "size"}, r"rank_by must be one of \['energy', 'budget'\]"),
    ({"energy": 0}, r"energy=0 is outside \(0, 1\]"),
    ({"energy": math.nan}, r"energy=nan is outside"),
    ({"energy": True}, r"energy=True is outside"),
    ({"mac_ratio": 1}, r"mac_ratio=1 is outside \(0, 1\).*pick e\.g\. 0\.5"),
    ({"ranks": {"fc": 0}}, r"ranks\['fc'\]=0 is not a rank"),
    ({"ranks": {"fc": [1, 2, 3]}}, r"ranks\['fc'\]=\[1, 2, 3\] is not a rank"),
    ({"ranks": ["fc"]}, "ranks must map layer names to ranks"),
    ({"layers": "fc"}, r"layers must be a list of layer names"),
    ({"layers": ["fc", "fc"]}, "more than once"),
    ({"layers": ["fc"], "exclude": ["fc"]}, r"\['fc'\] both selected"),
    ({"hooi_iters": -1}, "hooi_iters must be an integer >= 0"),
    ({"cp_iters": 0}, "cp_iters must be a positive integer"),
    ({"skip_unprofitable": "yes"}, "skip_unprofitable must be true or false"),
])
def test_bad_config_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        LowRankConfig(**kwargs)


def test_config_yaml_round_trip_and_copy():
    ranks = {"fc": 3, "conv2": [4, 5]}
    cfg = LowRankConfig(method="cp", rank_by="budget", mac_ratio=0.25, ranks=ranks, exclude=["dw"], cp_iters=50, description="x")
    assert LowRankConfig.from_yaml(cfg.to_yaml()) == cfg
    assert LowRankConfig.from_dict(cfg.to_dict()).ranks == {"fc": 3, "conv2": (4, 5)}
    assert ranks == {"fc": 3, "conv2": [4, 5]} and cfg.ranks is not ranks  # the caller's dict is not taken over
    with pytest.raises(ConfigError, match="unknown key 'rank'"):
        LowRankConfig.from_yaml("rank: 3")


# ----------------------------------------------------------------------------- zoo conformance


@pytest.mark.parametrize(("config", "max_ratio"), [
    (LowRankConfig(energy=0.9), 0.7),                      # measured: MACs x0.63, agreement 96.9 %
    (LowRankConfig(rank_by="budget", mac_ratio=0.5), 0.5),  # measured: MACs x0.50, agreement 96.1 %
], ids=["energy-0.9", "budget-0.5"])
def test_zoo_resnet_keeps_float_predictions(fmnist_test, config, max_ratio):
    """fmnist-resnet decomposed without fine-tuning keeps the float model's argmax on > 90 % of 256 test images."""
    from lowbit.zoo import load_model

    x = fmnist_test.images[:256]
    model = load_model("fmnist-resnet")
    with torch.no_grad():
        ref = model(x).argmax(1)
    decompose(model, config, example=x)
    info = model.lowbit_info
    with torch.no_grad():
        agree = float((model(x).argmax(1) == ref).float().mean())
    assert info["macs_after"] <= max_ratio * info["macs_before"]
    assert info["model_macs_after"] < info["model_macs_before"]
    assert len(info["layers"]) >= 8 and all(d["rel_error"] ** 2 <= 1 - info["energy_threshold"] + 1e-9 for d in info["layers"])
    assert agree > 0.9


@pytest.mark.filterwarnings("ignore:layer .* decomposed anyway")
@pytest.mark.parametrize("method", ["auto", "cp"])
def test_factorized_model_round_trips_through_the_lbc_file(tmp_path, method):
    from lowbit.export.compressed import load_compressed, save_compressed

    model, x = _small_net()
    decompose(model, LowRankConfig(method=method, energy=0.8, skip_unprofitable=False, cp_iters=20), example=x)
    save_compressed(model, tmp_path / "f.lbc")
    back = load_compressed(tmp_path / "f.lbc", model=_small_net()[0])  # the unfactorized skeleton
    assert isinstance(back.conv1, LowRankSequential) and back.conv1.method == model.conv1.method
    assert torch.equal(back(x), model(x))
