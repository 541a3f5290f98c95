import math

import pytest
import torch
from scipy.stats import spearmanr

from lowbit.errors import ConfigError, DataError
from lowbit.report.fidelity import embedding_fidelity


def _emb(n=60, d=32, seed=0):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_identity_is_perfect():
    e = _emb()
    m = embedding_fidelity(e, e.clone())
    assert m["n"] == 60 and m["k"] == 5
    for key in ("cosine_mean", "cosine_min", "top1_agreement", "top5_overlap", "spearman"):
        assert m[key] == pytest.approx(1.0, abs=1e-12), key
    # scale does not matter (cosine), dtype does not matter
    assert embedding_fidelity(e, 3 * e.double())["cosine_min"] == pytest.approx(1.0, abs=1e-12)


def test_noise_lowers_every_metric_monotonically():
    e = _emb()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(e.shape, generator=g)
    small, large = embedding_fidelity(e, e + 0.05 * noise), embedding_fidelity(e, e + 0.5 * noise)
    for key in ("cosine_mean", "cosine_min", "top5_overlap", "spearman"):
        assert 1.0 > small[key] > large[key], key
    assert small["top1_agreement"] >= large["top1_agreement"] and large["top1_agreement"] < 1.0
    assert small["cosine_min"] <= small["cosine_mean"]


def test_hand_checked_example():
    # two clusters {0, 1} and {2, 3}; the test encoder moves row 3 into the first cluster
    ref = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    test = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.2]])
    m = embedding_fidelity(ref, test, k=2)
    cos3 = (0.1 * 0.8 + 0.9 * 0.2) / (math.hypot(0.1, 0.9) * math.hypot(0.8, 0.2))
    assert m["cosine_mean"] == pytest.approx((3 + cos3) / 4)
    assert m["cosine_min"] == pytest.approx(cos3)
    # nearest other row: ref 0->1 1->0 2->3 3->2; test 0->1 1->0 2->3 3->1
    assert m["top1_agreement"] == 0.75
    # 2-NN: rows 0..2 keep both neighbours; row 3 has {2, 1} vs {1, 0}: one of two
    assert m["top5_overlap"] == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    rn = torch.nn.functional.normalize(ref.double(), dim=1)
    tn = torch.nn.functional.normalize(test.double(), dim=1)
    i, j = torch.triu_indices(4, 4, offset=1)
    expect = spearmanr((rn @ rn.T)[i, j].numpy(), (tn @ tn.T)[i, j].numpy()).statistic
    assert m["spearman"] == pytest.approx(expect)


def test_spearman_undefined_is_nan():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert math.isnan(embedding_fidelity(ref, ref, k=1)["spearman"])  # a single pair has no ranking


def test_errors():
    e = _emb(10, 4)
    with pytest.raises(DataError, match="same shape"):
        embedding_fidelity(e, e[:, :3])
    with pytest.raises(DataError, match="2-D"):
        embedding_fidelity(e[0], e[0])
    with pytest.raises(ConfigError, match="k \\+ 1"):
        embedding_fidelity(e[:5], e[:5], k=5)
    with pytest.raises(ConfigError, match="positive int"):
        embedding_fidelity(e, e, k=0)
    bad = e.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(DataError, match="row 3"):
        embedding_fidelity(e, bad)
    zero = e.clone()
    zero[7] = 0
    with pytest.raises(DataError, match="row 7 is all zeros"):
        embedding_fidelity(zero, e)
