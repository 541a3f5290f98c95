"""Deep Compression: weight sharing, the pipeline, and the .lbc file it writes."""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit
from lowbit.algorithms.deep_compression import share_weights, shared_layers, unshare
from lowbit.errors import ConfigError
from lowbit.zoo import load_model
from lowbit.zoo.models import FmnistMLP

X = torch.rand(64, 1, 28, 28)
Y = torch.randint(0, 10, (64,))


def _sparse_mlp(sparsity: float = 0.8) -> torch.nn.Module:
    torch.manual_seed(0)
    m = FmnistMLP(hidden=32)
    lowbit.prune(m, lowbit.PruneConfig(sparsity=sparsity), progress=False)
    return m


def test_sharing_keeps_zeros_and_uses_at_most_2_to_the_b_values():
    m = _sparse_mlp()
    zeros = m.fc1.weight == 0
    info = share_weights(m, ["fc1", "fc2"], {"fc1": 3, "fc2": 2})
    assert info["fc1"]["clusters"] == 7 and info["fc2"]["bits"] == 2
    assert torch.equal(m.fc1.weight == 0, zeros) or bool((m.fc1.weight[zeros] == 0).all())
    assert m.fc1.weight.detach().unique().numel() <= 8 and m.fc2.weight.detach().unique().numel() <= 4
    assert shared_layers(m) == ["fc1", "fc2"]


def test_centroid_gradient_is_the_per_cluster_sum():
    m = _sparse_mlp()
    share_weights(m, ["fc1"], 3)
    x = torch.rand(4, 1, 28, 28)
    out = m(x).square().sum()
    out.backward()
    # reference: dL/dW from the same function with W as a leaf, summed over each cluster
    w = m.fc1.weight.detach().clone().requires_grad_(True)
    h = torch.relu(torch.nn.functional.linear(x.flatten(1), w, m.fc1.bias))
    m.fc2(h).square().sum().backward()
    idx = m.fc1.weight_index.long()
    ref = torch.zeros(8).index_add_(0, idx.reshape(-1), w.grad.reshape(-1))[1:]
    torch.testing.assert_close(m.fc1.weight_centroids.grad, ref, rtol=1e-5, atol=1e-6)


def test_unshare_is_exact_and_sharing_twice_is_an_error():
    m = _sparse_mlp()
    share_weights(m, ["fc1"], 4)
    before = m(X)
    with pytest.raises(ConfigError, match="already shares"):
        share_weights(m, ["fc1"], 4)
    unshare(m)
    assert shared_layers(m) == [] and torch.equal(m(X), before)
    with pytest.raises(ConfigError, match="1..8"):
        share_weights(m, ["fc1"], 9)


def test_pipeline_stages_shrink_and_the_file_reloads_bit_exact(tmp_path):
    torch.manual_seed(0)
    m = FmnistMLP(hidden=32)
    cfg = lowbit.DeepCompressionConfig(sparsity=0.85, epochs=1, batch_size=16, share_epochs=1, distill=True)
    m = lowbit.compress(m, cfg, data=(X, Y), val_data=[(X, Y)], progress=False)
    stages = m.lowbit_info["stages"]
    assert [s["stage"] for s in stages] == ["original", "pruned", "shared", "huffman"]
    sizes = [s["file_bytes"] for s in stages]
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3]
    assert all("accuracy" in s for s in stages)
    assert m.lowbit_info["sparsity"]["total"] == pytest.approx(0.85, abs=1e-3)
    info = lowbit.save_compressed(m, tmp_path / "mlp.lbc")
    assert info["file_bytes"] == sizes[-1] == (tmp_path / "mlp.lbc").stat().st_size
    m2 = lowbit.load_compressed(tmp_path / "mlp.lbc", model=FmnistMLP(hidden=32))
    assert torch.equal(m(X), m2(X))


def test_zoo_resnet_reaches_35x_on_the_file_before_fine_tuning(tmp_path):
    """Size conformance (no training): 90 % global sparsity + 4-bit sharing + Huffman on fmnist-resnet, BN folded."""
    cfg = lowbit.DeepCompressionConfig(sparsity=0.9, schedule="oneshot", epochs=0, share_epochs=0, distill=False)
    m = lowbit.compress(load_model("fmnist-resnet"), cfg, model_spec="fmnist-resnet", progress=False)
    assert m.lowbit_info["stages"][-1]["ratio"] >= 35
    assert m.lowbit_info["folded_bn"]
    lowbit.save_compressed(m, tmp_path / "r.lbc", model_spec="fmnist-resnet")
    m2 = lowbit.load_compressed(tmp_path / "r.lbc")  # skeleton rebuilt from the spec, BNs folded to Identity
    x = X[:8]
    assert torch.equal(m(x), m2(x))


def test_pipeline_errors():
    with pytest.raises(ConfigError, match="pass data="):
        lowbit.compress(FmnistMLP(), lowbit.DeepCompressionConfig())
    with pytest.raises(ConfigError, match="1..8"):
        lowbit.DeepCompressionConfig(bits=0)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        lowbit.DeepCompressionConfig(sparsity=1.2)
    with pytest.raises(ConfigError, match="not compressed"):
        cfg = lowbit.DeepCompressionConfig(schedule="oneshot", epochs=0, share_epochs=0, layer_bits={"nope": 4}, distill=False)
        lowbit.compress(copy.deepcopy(FmnistMLP()), cfg, progress=False)
    with pytest.raises(ConfigError, match="DeepCompressionConfig"):
        lowbit.compress(FmnistMLP(), lowbit.PruneConfig())
    with pytest.raises(ConfigError, match="lowbit.compress"):
        lowbit.quantize_(FmnistMLP(), lowbit.DeepCompressionConfig())
