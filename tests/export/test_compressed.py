"""The .lbc compressed format: every layout / coding round-trips bit for bit; damage is detected."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.errors import ConfigError
from lowbit.export import CheckpointError
from lowbit.export.compressed import encode_compressed, load_compressed, save_compressed
from lowbit.zoo.models import FmnistMLP, FmnistResNet


def _model(sparsity: float, levels: int | None) -> torch.nn.Module:
    torch.manual_seed(1)
    m = FmnistMLP(hidden=48)
    with torch.no_grad():
        for lin in (m.fc1, m.fc2):
            w = lin.weight
            w.mul_(torch.rand_like(w) >= sparsity)
            if levels:  # a weight-shared layer: few distinct values
                grid = torch.linspace(-0.05, 0.05, levels)
                w.copy_(torch.where(w == 0, w, grid[torch.randint(0, levels, w.shape)]))
    return m


@pytest.mark.parametrize("layout", ["auto", "dense", "relative"])
@pytest.mark.parametrize("coding", ["huffman", "fixed"])
@pytest.mark.parametrize("sparsity,levels", [(0.0, None), (0.9, None), (0.5, 15), (0.95, 7)])
def test_round_trip_is_bit_exact(tmp_path, layout, coding, sparsity, levels):
    m = _model(sparsity, levels)
    path = tmp_path / "m.lbc"
    save_compressed(m, path, layout=layout, coding=coding)
    m2 = load_compressed(path, model=FmnistMLP(hidden=48))
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_auto_picks_the_smallest_and_huffman_beats_fixed():
    m = _model(0.9, 15)
    sizes = {(lay, cod): len(encode_compressed(m, layout=lay, coding=cod)[0]) for lay in ("dense", "relative", "auto")
             for cod in ("huffman", "fixed")}
    assert sizes[("auto", "huffman")] <= min(sizes[("dense", "huffman")], sizes[("relative", "huffman")])
    assert sizes[("auto", "huffman")] < sizes[("auto", "fixed")]
    _, info = encode_compressed(m)
    assert info["layers"]["fc1"]["layout"] == "relative" and info["layers"]["fc1"]["values"] == "codebook"


def test_channel_pruned_and_folded_model_loads_into_the_plain_skeleton(tmp_path):
    from lowbit.transform import FoldBatchNorm

    torch.manual_seed(0)
    m = FmnistResNet(width=8).eval()
    lowbit.prune(m, lowbit.StructuredPruneConfig(ratio=0.5), example=torch.zeros(1, 1, 28, 28), progress=False)
    m = FoldBatchNorm().apply(m)
    save_compressed(m, tmp_path / "r.lbc")
    m2 = load_compressed(tmp_path / "r.lbc", model=FmnistResNet(width=8))
    x = torch.rand(4, 1, 28, 28)
    assert m2.stem[0].out_channels == 4 and isinstance(m2.stem[1], torch.nn.Identity)
    assert torch.equal(m(x), m2(x))


def test_damaged_files_raise_checkpoint_errors(tmp_path):
    path = tmp_path / "m.lbc"
    save_compressed(_model(0.9, 15), path)
    raw = path.read_bytes()
    bad = tmp_path / "bad.lbc"
    for damaged, match in ((raw[:-100], "SHA-256"), (raw[:20] + bytes([raw[20] ^ 0xFF]) + raw[21:], "SHA-256"),
                           (b"XXXX" + raw[4:], "not a lowbit compressed"), (raw[:10], "truncated|SHA-256")):
        bad.write_bytes(damaged)
        with pytest.raises(CheckpointError, match=match):
            load_compressed(bad, model=FmnistMLP(hidden=48))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_compressed(tmp_path / "nope.lbc", model=FmnistMLP())
    with pytest.raises(CheckpointError, match="does not fit|not in the given model"):
        load_compressed(path, model=FmnistResNet(width=8))
    with pytest.raises(ConfigError, match="no model spec"):
        load_compressed(path)


def test_bad_arguments_and_unfinished_models():
    m = _model(0.5, None)
    with pytest.raises(ConfigError, match="layout"):
        encode_compressed(m, layout="csr5")
    with pytest.raises(ConfigError, match="coding"):
        encode_compressed(m, coding="zip")
    with pytest.raises(ConfigError, match="index_bits"):
        encode_compressed(m, index_bits=9)
    from lowbit.algorithms.pruning.unstructured import prune_to

    prune_to(m, ["fc1"], 0.5, "layer")
    with pytest.raises(ConfigError, match="masks"):
        encode_compressed(m)
