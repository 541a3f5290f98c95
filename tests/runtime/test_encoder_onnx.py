"""lowbit.runtime.encoder_onnx: integer lowering of QuantLinear encoders for ONNX Runtime.

Tolerances. A lowered layer computes ``S_x S_w sum_k (Q_x - Z) Q_w`` with an exact int32 sum, lowbit's
fake-quant computes ``sum_k (S_x (Q_x - Z)) (S_w Q_w)`` in float32: the integer codes are the same, the
results differ by float32 rounding only (relative ~1e-6). Through a deep encoder that is not a bound on the
end-to-end difference, though: a 1-ulp difference upstream can move a value across a rounding boundary of
the next layer's activation grid, and that code flip (one quantization step) then propagates. So exactness
is tested where a quantized layer reads graph values that are bit-identical in torch and ONNX Runtime (an
embedding lookup), and the full encoders are compared with a cosine bound.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from lowbit.config import QuantSpec  # noqa: E402
from lowbit.errors import ConfigError, DataError, UnsupportedError  # noqa: E402
from lowbit.nn.layers import QuantLinear  # noqa: E402
from lowbit.quant import Affine, IntFormat, PerChannel, PerGroup, PerTensor, PerToken, Symmetric  # noqa: E402
from lowbit.runtime.encoder_onnx import (  # noqa: E402
    OrtEncoder,
    encoder_latency_ratio,
    encoder_onnx_info,
    export_encoder_onnx,
    quantize_linears,
)
from lowbit.zoo.text import TextEncoder  # noqa: E402

W8 = QuantSpec(format=IntFormat(bits=8), mapping=Symmetric(), granularity=PerChannel(0))
A8_TOKEN = QuantSpec(format=IntFormat(bits=8), mapping=Symmetric(), granularity=PerToken(), dynamic=True)


def _batch(b: int, s: int, vocab: int = 100, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, s, dtype=torch.long)
    for i in range(1, b):
        mask[i, max(1, s - 2 * i) :] = 0  # padded rows of different lengths
    return {"input_ids": torch.randint(0, vocab, (b, s), generator=g), "attention_mask": mask, "token_type_ids": torch.zeros(b, s, dtype=torch.long)}


@pytest.fixture(scope="module")
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, attn_implementation="eager")
    return TextEncoder(BertModel(cfg), None, normalize=True).eval()


class _LookupEncoder(nn.Module):
    """Embedding -> QuantLinear -> ReLU -> QuantLinear -> masked mean: the first layer reads exact table rows."""

    def __init__(self, weight: QuantSpec | None, act: QuantSpec | None, smooth: bool = False) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.emb = nn.Embedding(100, 48)
        with torch.no_grad():
            self.emb.weight[:, 3] *= 8  # an outlier channel
        self.l1 = QuantLinear.from_float(nn.Linear(48, 40), weight, act)
        self.l2 = QuantLinear.from_float(nn.Linear(40, 24), weight, act)
        if smooth:
            s = torch.rand(48) + 0.5
            with torch.no_grad():
                self.l1.weight.mul_(s)
            self.l1.register_buffer("smooth", s)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        h = self.l2(torch.relu(self.l1(self.emb(input_ids))))
        m = attention_mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)


@pytest.mark.parametrize(
    ("weight", "act", "smooth"),
    [
        (W8, A8_TOKEN, False),
        (W8, A8_TOKEN, True),
        (W8, QuantSpec(format=IntFormat(bits=8), mapping=Symmetric(), granularity=PerTensor(), dynamic=True), False),
        (W8, QuantSpec(format=IntFormat(bits=8, signed=False), mapping=Affine(), granularity=PerToken(), dynamic=True), False),
        (
            QuantSpec(format=IntFormat(bits=7), mapping=Symmetric(), granularity=PerChannel(0)),
            QuantSpec(format=IntFormat(bits=4), mapping=Symmetric(), granularity=PerToken(), dynamic=True),
            False,
        ),
        (W8, QuantSpec(format=IntFormat(bits=8), mapping=Symmetric(), granularity=PerTensor()), False),  # static
    ],
    ids=["per_token", "per_token_smooth", "per_tensor", "affine_per_token", "w7a4", "static"],
)
def test_int8_graph_matches_fake_quant(tmp_path, weight, act, smooth):
    model = _LookupEncoder(weight, act, smooth).eval()
    if not act.dynamic:
        for layer in (model.l1, model.l2):
            layer.input_quant.set_qparams(torch.tensor(0.05), torch.tensor(0))
    ex, b = _batch(2, 5), _batch(3, 9, seed=1)
    p = export_encoder_onnx(model, tmp_path / "m.onnx", example=ex, optimize=False)
    info = encoder_onnx_info(p)
    assert info["int8"] and info["exact"] and info["lowered"] == 2
    assert "MatMul" not in info["ops"]  # both layers run on integer kernels
    with torch.no_grad():
        ref = model(**b)
    out = OrtEncoder(p)(**b)
    # same integer codes; only float32 summation order differs (see module docstring)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item()), (out - ref).abs().max()


def test_elementwise_lowering_is_exact_too(tmp_path):
    model = _LookupEncoder(W8, A8_TOKEN).eval()
    p = export_encoder_onnx(model, tmp_path / "m.onnx", example=_batch(2, 5), optimize=False, lowering="elementwise")
    assert "MatMulInteger" in encoder_onnx_info(p)["ops"]
    b = _batch(3, 9, seed=2)
    with torch.no_grad():
        ref = model(**b)
    assert torch.allclose(OrtEncoder(p)(**b), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("optimize", [False, True])
def test_bert_int8_and_float(tmp_path, tiny_bert, optimize):
    q = quantize_linears(tiny_bert, W8, A8_TOKEN)
    ex = _batch(2, 7)
    pf = export_encoder_onnx(tiny_bert, tmp_path / "f.onnx", example=ex, int8=False, optimize=optimize)
    pq = export_encoder_onnx(q, tmp_path / "q.onnx", example=ex, optimize=optimize)
    info = encoder_onnx_info(pq)
    assert info["lowered"] == 12 and info["exact"] and info["approximations"] == []
    assert info["kernels"] == {"auto_per_token": 12}
    assert info["ops"]["QuantizeLinear"] == 8  # Q / K / V share one quantization of their input: 4 per layer
    if optimize:
        assert info["attention_op"] == "MultiHeadAttention" and "MultiHeadAttention" in info["ops"]
        assert "Attention" in encoder_onnx_info(pf)["ops"]
    f_ort, q_ort = OrtEncoder(pf), OrtEncoder(pq)
    for shape in [(2, 7), (3, 11), (1, 4), (5, 16)]:  # dynamic batch and sequence axes
        b = _batch(*shape, seed=shape[1])
        with torch.no_grad():
            rf, rq = tiny_bert(**b), q(**b)
        of, oq = f_ort(**b), q_ort(**b)
        assert of.shape == rf.shape == oq.shape
        assert (of - rf).abs().max() < 1e-4
        assert torch.nn.functional.cosine_similarity(oq, rq).min() > 0.999


def test_fast_lowering_reports_its_approximation(tmp_path, tiny_bert):
    q = quantize_linears(tiny_bert, W8, A8_TOKEN)
    with pytest.warns(UserWarning, match="approximates"):
        p = export_encoder_onnx(q, tmp_path / "q.onnx", example=_batch(2, 7), fast=True, optimize=False)
    info = encoder_onnx_info(p)
    assert not info["exact"] and len(info["approximations"]) == 12 and "per_tensor" in info["approximations"][0]
    assert info["ops"].get("DynamicQuantizeMatMul") == 12
    b = _batch(3, 9)
    with torch.no_grad():
        rq = q(**b)
    assert torch.nn.functional.cosine_similarity(OrtEncoder(p)(**b), rq).min() > 0.99


def test_latency_ratio(tmp_path, tiny_bert):
    q = quantize_linears(tiny_bert, W8, A8_TOKEN)
    ex = _batch(2, 7)
    pf = export_encoder_onnx(tiny_bert, tmp_path / "f.onnx", example=ex, int8=False, optimize=False)
    pq = export_encoder_onnx(q, tmp_path / "q.onnx", example=ex, optimize=False)
    r = encoder_latency_ratio(pf, pq, ex, repeats=3, calls=1, allow_spinning=False)
    assert r["float_s"] > 0 and r["int8_s"] > 0 and r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"]
    assert r["ratio_of_medians"] == pytest.approx(r["int8_s"] / r["float_s"])
    assert (r["batch"], r["seq"], r["threads"], r["allow_spinning"]) == (2, 7, 2, False)
    with pytest.raises(ConfigError):
        encoder_latency_ratio(pf, pq, ex, repeats=0)


def test_errors(tmp_path, tiny_bert):
    ex = _batch(2, 5)
    with pytest.raises(UnsupportedError, match="nn.Module"):
        export_encoder_onnx(object(), tmp_path / "a.onnx", example=ex)
    with pytest.raises(UnsupportedError, match="not an exportable encoder"):
        export_encoder_onnx(quantize_linears(nn.Sequential(nn.Linear(3, 3)), W8, A8_TOKEN, include=""), tmp_path / "a.onnx", example=ex)
    with pytest.raises(UnsupportedError, match="no QuantLinear"):
        export_encoder_onnx(tiny_bert, tmp_path / "a.onnx", example=ex)
    with pytest.raises(ConfigError, match="directory"):
        export_encoder_onnx(tiny_bert, tmp_path, example=ex, int8=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        export_encoder_onnx(tiny_bert, tmp_path / "file" / "a.onnx", example=ex, int8=False)
    with pytest.raises(ConfigError, match="example"):
        export_encoder_onnx(tiny_bert, tmp_path / "a.onnx", example={"ids": ex["input_ids"]}, int8=False)
    with pytest.raises(ConfigError, match="fusion option"):
        export_encoder_onnx(tiny_bert, tmp_path / "a.onnx", example=ex, int8=False, fusions={"enable_magic": True})
    with pytest.raises(ConfigError, match="lowering"):
        export_encoder_onnx(tiny_bert, tmp_path / "a.onnx", example=ex, lowering="magic")
    grouped = quantize_linears(tiny_bert, QuantSpec(format=IntFormat(bits=4), granularity=PerGroup(16)), A8_TOKEN)
    with pytest.raises(UnsupportedError, match="per_group"):
        export_encoder_onnx(grouped, tmp_path / "a.onnx", example=ex)
    with pytest.raises(DataError):
        encoder_onnx_info(tmp_path / "missing.onnx")
    assert not (tmp_path / "a.onnx").exists()  # nothing half-written


def test_float_export_of_quantized_model_uses_master_weights(tmp_path, tiny_bert):
    q = quantize_linears(tiny_bert, W8, A8_TOKEN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no saturation / approximation warnings on a float export
        p = export_encoder_onnx(q, tmp_path / "f.onnx", example=_batch(2, 7), int8=False, optimize=False)
    b = _batch(3, 6)
    with torch.no_grad():
        ref = tiny_bert(**b)
    assert (OrtEncoder(p)(**b) - ref).abs().max() < 1e-4


def test_fusion_switches(tmp_path, tiny_bert):
    q = quantize_linears(tiny_bert, W8, A8_TOKEN)
    ex = _batch(2, 7)
    p = export_encoder_onnx(q, tmp_path / "q.onnx", example=ex, fusions={"enable_skip_layer_norm": False}, attention="none")
    ops = encoder_onnx_info(p)["ops"]
    assert "SkipLayerNormalization" not in ops and "MultiHeadAttention" not in ops and ops["MatMulIntegerToFloat"] == 12
    b = _batch(3, 9)
    with torch.no_grad():
        rq = q(**b)
    assert torch.nn.functional.cosine_similarity(OrtEncoder(p, allow_spinning=False)(**b), rq).min() > 0.999
