"""Transformer sentence encoders on ONNX Runtime: float, or every ``QuantLinear`` on integer kernels.

:func:`export_encoder_onnx` exports a model called as ``model(input_ids, attention_mask, token_type_ids)``
(e.g. :class:`lowbit.zoo.text.TextEncoder`, a Hugging Face BERT + pooling) with dynamic batch and sequence axes. With
``int8=True`` every :class:`~lowbit.nn.layers.QuantLinear` becomes ONNX Runtime integer kernels fed with
lowbit's own weight codes ``Q_w`` and scales ``S_w`` (nothing is re-quantized by
``onnxruntime.quantization``). For a layer with per-token dynamic symmetric 8-bit inputs the lowered graph
computes, for each token row ``x`` (``x / smooth`` when the layer has a ``smooth`` buffer):

.. code-block:: text

    S_x   = max(max_k |x_k| / ((qmax - qmin) / 2), eps)          one scale per token (ReduceMax(Abs))
    Q_x   = clamp(round_half_even(x / S_x), qmin, qmax) + 128      uint8 codes (QuantizeLinear, zero point 128)
    y_j   = S_x * S_w[j] * sum_k (Q_x[k] - 128) * Q_w[k, j]        int32 GEMM, scaled (MatMulIntegerToFloat)
    y     = y + b                                                  the bias, left to the fused op that follows

which is exactly lowbit's fake-quant ``linear(fq(x), fq(W), b)`` up to float32 summation order (the integer
sum is exact; see ``tests/runtime/test_encoder_onnx.py`` for the measured tolerance). Per-tensor and static
(calibrated) activations, affine mappings, narrower grids (e.g. 7-bit weights, 4-bit activations) lower
exactly too; what cannot be expressed raises :class:`~lowbit.errors.UnsupportedError`.

Lowerings (``lowering=``), all for the same module semantics unless marked *approximate*:

* ``"auto"`` (default) — the exact graph above; inputs that several layers share (Q / K / V) are
  quantized once.
* ``"elementwise"`` — exact, spelled out: ``Div, Round, Clip, Cast -> MatMulInteger -> Cast, Mul, Mul``.
* ``"dynamic_quantize_matmul"`` (= ``fast=True``) — *approximate*: ``com.microsoft.DynamicQuantizeMatMul``
  quantizes the whole activation tensor with ONE affine uint8 range (per-tensor, not per-token); ORT's
  fastest dynamic int8 kernel. The returned info (:func:`encoder_onnx_info`) lists the approximation.
* ``"matmul_integer"`` — *approximate* the same way: ``DynamicQuantizeLinear + MatMulInteger + Cast + Mul``.

``optimize=True`` applies ONNX Runtime's transformer fusions (``onnxruntime.transformers.optimizer``,
``model_type="bert"``: EmbedLayerNormalization, SkipLayerNormalization, BiasGelu, attention; ``fusions``
overrides single ``FusionOptions.enable_*`` switches) to the float graph *before* lowering, so float and int8
graphs get the same fusions; the only difference is that the int8 graph fuses attention as
``MultiHeadAttention`` (it takes the projected Q / K / V, so the projections stay separate int8 GEMMs) where
the float graph uses ``Attention`` (projection inside).

Measured (bench/encoder_speed.py: all-MiniLM-L6-v2, batch 32 x 43 tokens, ONNX Runtime 1.32, 2 vCPUs of an
AMD EPYC with AVX-512 VNNI, 2 threads, no thread spinning): W8A8 per-token ``"auto"`` 0.46-0.48x float
latency (``"elementwise"`` 0.57x, the per-tensor ``fast`` 0.40-0.42x); the fusions made BOTH graphs slower on
that machine (SkipLayerNormalization alone +10-15 ms), so ``optimize=False`` was fastest there.

Example:
    >>> import tempfile, os, torch
    >>> from transformers import BertConfig, BertModel
    >>> from lowbit.zoo.text import TextEncoder
    >>> from lowbit.config import QuantSpec
    >>> from lowbit.quant import IntFormat, PerChannel, PerToken, Symmetric
    >>> cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                  intermediate_size=64, attn_implementation="eager")
    >>> model = quantize_linears(TextEncoder(BertModel(cfg), None, normalize=True).eval(),
    ...     QuantSpec(format=IntFormat(bits=8), mapping=Symmetric(), granularity=PerChannel(0)),
    ...     QuantSpec(format=IntFormat(bits=8), mapping=Symmetric(), granularity=PerToken(), dynamic=True))
    >>> ex = {"input_ids": torch.randint(0, 50, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long),
    ...       "token_type_ids": torch.zeros(2, 7, dtype=torch.long)}
    >>> p = export_encoder_onnx(model, os.path.join(tempfile.mkdtemp(), "enc.onnx"), example=ex, optimize=False)
    >>> info = encoder_onnx_info(p)
    >>> info["lowered"], info["exact"]
    (6, True)
    >>> y = OrtEncoder(p)(**ex)
    >>> bool(torch.allclose(y, model(**ex), atol=1e-3))
    True
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, UnsupportedError
from ..io import atomic_write_bytes
from .base import module_available

__all__ = ["quantize_linears", "export_encoder_onnx", "encoder_onnx_info", "OrtEncoder", "encoder_latency_ratio", "interleaved_rounds", "LOWERINGS"]

LOWERINGS = ("auto", "elementwise", "dynamic_quantize_matmul", "matmul_integer")
_APPROXIMATE = {"dynamic_quantize_matmul", "matmul_integer"}
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_TAG = "lowbit_qw"  # buffer name of the weight each lowered MatMul reads in the pre-lowering graph
_META_KEY = "lowbit.encoder_onnx"
_OPSET = 17
_EPS = float(torch.finfo(torch.float32).eps)


def quantize_linears(model: nn.Module, weight, activation, *, include: str = ".encoder.") -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers with ``include`` in their dotted name (default: the
    encoder layers of a Hugging Face model, not the pooler) are ``QuantLinear.from_float(lin, weight, activation)``.

    Example:
        >>> import torch
        >>> from lowbit.config import QuantSpec
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> type(quantize_linears(m, QuantSpec(), None, include="")[0]).__name__
        'QuantLinear'
    """
    from ..nn.layers import QuantLinear

    m = copy.deepcopy(model)
    for parent_name, parent in list(m.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f".{parent_name}.{child_name}." if parent_name else f".{child_name}."
            if type(child) is nn.Linear and include in full:
                setattr(parent, child_name, QuantLinear.from_float(child, weight, activation))
    return m


# --------------------------------------------------------------------------------------------- planning


def _spec_name(spec) -> str:
    return (
        f"{'dynamic ' if spec.dynamic else ''}{spec.granularity.name} {type(spec.mapping).__name__.lower()} "
        f"{'' if spec.format.signed else 'u'}int{spec.format.bits}"
    )


def _plan_linear(name: str, m: nn.Module) -> dict:
    """Integer weight codes, scales and the activation spec of one ``QuantLinear``, checked for lowering."""
    from ..nn.quantizers import ActQuant
    from ..quant import PerChannel, PerTensor, PerToken, quantize

    if getattr(m, "output_quant", None) is not None:
        raise UnsupportedError(f"{name}: an output quantizer has no integer lowering here; quantize outputs in the next layer's input")
    wq = m.weight_quant
    w = m.weight.detach().float()
    out_f, in_f = w.shape
    if wq is None:
        codes, w_scale, w_zp, wbits = None, None, None, 32
    else:
        ws = wq.spec
        if ws.format.bits > 8:
            raise UnsupportedError(f"{name}: {ws.format.bits}-bit weights have no int8 kernel; use <= 8-bit weights")
        if isinstance(ws.granularity, PerChannel) and ws.granularity.axis % 2 != 0:
            raise UnsupportedError(f"{name}: per-channel weights along axis {ws.granularity.axis}; integer GEMMs scale output rows (axis 0)")
        if not isinstance(ws.granularity, PerChannel | PerTensor):
            raise UnsupportedError(
                f"{name}: {ws.granularity.name} weights have no scale-per-output GEMM in ONNX Runtime; use per-channel (axis 0) or per-tensor weights"
            )
        if ws.rounding == "stochastic":
            raise UnsupportedError(f"{name}: stochastic weight rounding changes the weight every call; export a converted model")
        scale, zp = wq.qparams(m.weight)
        q = quantize(w, scale, zp, ws.format, ws.granularity, ws.rounding)  # [out, in] int8 / uint8
        codes = q.t().contiguous().numpy()
        w_scale = scale.float().reshape(-1).expand(out_f).contiguous().numpy().astype(np.float32)
        w_zp = zp.to(torch.int32).reshape(-1).expand(out_f).contiguous().numpy()
        w_zp = w_zp.astype(np.int8 if ws.format.signed else np.uint8)
        if ws.format.signed and not w_zp.any():
            w_zp = None
        wbits = ws.format.bits
    smooth = getattr(m, "smooth", None)
    smooth = None if smooth is None else smooth.detach().float().reshape(-1).numpy()
    aq = m.input_quant
    act = None
    if aq is not None and wq is not None:
        if not isinstance(aq, ActQuant):
            raise UnsupportedError(f"{name}: input quantizer {type(aq).__name__} has no integer lowering")
        s = aq.spec
        if s.format.bits > 8:
            raise UnsupportedError(f"{name}: {s.format.bits}-bit activations have no int8 kernel")
        if s.rounding != "nearest_even":
            raise UnsupportedError(f"{name}: activation rounding {s.rounding!r}; ONNX rounds half to even (use 'nearest_even')")
        if s.dynamic:
            if not isinstance(s.granularity, PerTensor | PerToken):
                raise UnsupportedError(
                    f"{name}: dynamic {s.granularity.name} activations: only per_tensor / per_token lower to "
                    "ONNX Runtime's GEMMs (one scale per GEMM row or per tensor)"
                )
            act = {"spec": s, "kind": "per_token" if isinstance(s.granularity, PerToken) else "per_tensor"}
        else:
            if not isinstance(s.granularity, PerTensor):
                raise UnsupportedError(f"{name}: static {s.granularity.name} activations have no integer GEMM; use per_tensor")
            if aq.scale is None:
                raise UnsupportedError(f"{name}: the activation quantizer is not calibrated; calibrate before exporting")
            act = {"spec": s, "kind": "static", "scale": float(aq.scale.reshape(-1)[0]), "zero_point": int(aq.zero_point.reshape(-1)[0])}
    elif aq is not None:
        raise UnsupportedError(f"{name}: quantized inputs with float weights have no integer kernel")
    deq = m.quantized_weight().detach().float() if wq is not None else w
    return {
        "name": name,
        "in": in_f,
        "out": out_f,
        "codes": codes,
        "w_scale": w_scale,
        "w_zp": w_zp,
        "w_bits": wbits,
        "smooth": smooth,
        "act": act,
        "w_deq_t": deq.t().contiguous(),
    }


class _ExportLinear(nn.Module):
    """Stand-in for a ``QuantLinear`` while tracing: ``matmul(x, lowbit_qw) + bias`` with the weight as a
    named buffer, so its MatMul can be found (and lowered) in the ONNX graph after ORT's fusions."""

    def __init__(self, weight_t: torch.Tensor, bias: torch.Tensor | None, smooth: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer(_TAG, weight_t)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("smooth", smooth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth
        y = torch.matmul(x, getattr(self, _TAG))
        return y + self.bias if self.bias is not None else y


def _export_copy(model: nn.Module, int8: bool) -> tuple[nn.Module, dict[str, dict]]:
    """A copy of ``model`` with every ``QuantLinear`` replaced by :class:`_ExportLinear` (float master weights
    when ``int8=False``) and the plans of the layers to lower (keyed by the weight's buffer name)."""
    from ..nn.layers import QuantEmbedding, QuantLinear, is_quant_module

    m = copy.deepcopy(model).eval()
    plans: dict[str, dict] = {}
    for parent_name, parent in list(m.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if isinstance(child, QuantLinear):
                if not int8:
                    smooth = getattr(child, "smooth", None)
                    new = _ExportLinear(child.weight.detach().t().contiguous(), child.bias, smooth)
                else:
                    plan = _plan_linear(full, child)
                    new = _ExportLinear(plan["w_deq_t"], child.bias)
                    if plan["act"] is not None or plan["smooth"] is not None:
                        plans[f"{full}.{_TAG}"] = plan
                    elif plan["codes"] is not None:
                        plans[f"{full}.{_TAG}"] = plan  # weight-only: float MatMul on the dequantized weight
                setattr(parent, child_name, new)
            elif isinstance(child, QuantEmbedding):
                emb = nn.Embedding(child.num_embeddings, child.embedding_dim, padding_idx=child.padding_idx)
                with torch.no_grad():
                    emb.weight.copy_(child.quantized_weight() if int8 else child.weight)
                setattr(parent, child_name, emb)
            elif is_quant_module(child):
                raise UnsupportedError(f"{full}: {type(child).__name__} has no encoder lowering; only QuantLinear / QuantEmbedding")
    leftovers = [n for n, mod in m.named_modules() if type(mod).__name__ in ("ActQuant", "WeightQuant", "QuantAdd")]
    if leftovers:
        raise UnsupportedError(f"quantizers outside QuantLinear layers ({', '.join(leftovers[:3])}) have no lowering here")
    return m, plans


def _check_inputs(model, example) -> dict[str, torch.Tensor]:
    if not isinstance(model, nn.Module):
        raise UnsupportedError(
            f"model must be a torch.nn.Module (an encoder called as model(input_ids, attention_mask, token_type_ids)), got {type(model).__name__}"
        )
    if not isinstance(example, Mapping) or "input_ids" not in example or "attention_mask" not in example:
        raise ConfigError("example must be a dict with at least 'input_ids' and 'attention_mask' tensors (e.g. a tokenizer's output with return_tensors='pt')")
    unknown = sorted(set(example) - set(_INPUTS))
    if unknown:
        raise ConfigError(f"example has unknown keys {unknown}; allowed: {list(_INPUTS)}")
    ex = {}
    for k in _INPUTS:
        if k in example:
            v = example[k]
            if not isinstance(v, torch.Tensor) or v.dim() != 2 or v.is_floating_point():
                raise ConfigError(f"example[{k!r}] must be an integer tensor [batch, seq], got {getattr(v, 'shape', type(v))}")
            ex[k] = v.to(torch.long)
    if ex["input_ids"].shape != ex["attention_mask"].shape:
        raise ConfigError(f"input_ids {tuple(ex['input_ids'].shape)} and attention_mask {tuple(ex['attention_mask'].shape)} differ")
    return ex


def _check_path(path) -> Path:
    try:
        p = Path(path)
    except TypeError:
        raise ConfigError(f"path must be a file path, got {type(path).__name__}") from None
    if p.is_dir():
        raise ConfigError(f"{p} is a directory; give a file path such as {p / 'encoder.onnx'}")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot write {p}: {parent} is a file, not a directory")
            break
    return p


def _attention_config(model: nn.Module) -> tuple[int, int]:
    for mod in model.modules():
        cfg = getattr(mod, "config", None)
        if cfg is not None and hasattr(cfg, "num_attention_heads") and hasattr(cfg, "hidden_size"):
            return int(cfg.num_attention_heads), int(cfg.hidden_size)
    return 0, 0  # ORT's optimizer detects them from the graph


def _torch_export(model: nn.Module, ex: dict[str, torch.Tensor]):
    import onnx

    buf = io.BytesIO()
    names = list(ex)
    axes = {k: {0: "batch", 1: "sequence"} for k in names}
    axes["embedding"] = {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            model(**ex)
            torch.onnx.export(model, (), buf, kwargs=ex, input_names=names, output_names=["embedding"], dynamic_axes=axes, opset_version=_OPSET, dynamo=False)
    except (RuntimeError, TypeError, ValueError, AttributeError, IndexError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedError(f"not an exportable encoder: model({', '.join(names)}) failed: {first[:300]}") from None
    return onnx.load_from_string(buf.getvalue())


def _ort_optimize(proto, num_heads: int, hidden: int, attention: str, fusions: Mapping[str, bool] | None = None):
    """ONNX Runtime's BERT fusions; ``attention``: ``"Attention"``, ``"MultiHeadAttention"`` or ``"none"``."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions("bert")
    opts.enable_attention = attention != "none"
    opts.use_multi_head_attention = attention == "MultiHeadAttention"
    for key, value in (fusions or {}).items():
        if not key.startswith("enable_") or not hasattr(opts, key):
            known = sorted(k for k in vars(opts) if k.startswith("enable_"))
            raise ConfigError(f"unknown fusion option {key!r}; known: {known}")
        setattr(opts, key, bool(value))
    import logging

    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # the fusions log through top-level loggers ("fusion_embedlayer", ...)
        try:
            om = optimize_model(proto, model_type="bert", num_heads=num_heads, hidden_size=hidden, optimization_options=opts, opt_level=0)
        finally:
            logging.disable(previous)
    return om.model


# --------------------------------------------------------------------------------------------- lowering


class _Lowerer:
    """Rewrites tagged ``MatMul(x, W)`` nodes of a graph into integer subgraphs (see the module docstring).

    Two kernel choices that keep the semantics (timed in bench/encoder_speed.py): ``amax`` — the per-token
    ``max |x|`` as ``Max(ReduceMax(x), -ReduceMin(x))`` (``"minmax"``, no full-size temporary) or
    ``ReduceMax(Abs(x))`` (``"abs"``); ``row_scale`` — the per-token scale applied by MatMulIntegerToFloat
    itself (``"kernel"``) or by a separate ``Mul`` after it (``"mul"``)."""

    amax = "minmax"
    row_scale = "mul"  # ORT parallelizes Mul; the kernel's own row scaling is a serial broadcast loop

    def __init__(self, graph, plans: dict[str, dict], lowering: str) -> None:
        self.g = graph
        self.plans = plans
        self.lowering = lowering
        self.inits: list = []
        self.n = 0
        self.shared: dict[tuple, dict] = {}
        self.kinds: Counter = Counter()
        self.approx: list[str] = []
        self.const_cache: dict[tuple, str] = {}

    def name(self, base: str) -> str:
        self.n += 1
        return f"lowbit_{base}_{self.n}"

    def const(self, value: np.ndarray, base: str = "c") -> str:
        from onnx import numpy_helper

        value = np.asarray(value)
        key = (value.dtype.str, value.shape, value.tobytes())
        if key in self.const_cache:
            return self.const_cache[key]
        nm = self.name(base)
        self.inits.append(numpy_helper.from_array(value, nm))
        self.const_cache[key] = nm
        return nm

    def node(self, out: list, op: str, inputs: list[str], domain: str = "", **attrs) -> str:
        from onnx import helper

        o = self.name(op.lower())
        out.append(helper.make_node(op, inputs, [o], name=o + "_node", domain=domain or None, **attrs))
        return o

    # -- activation quantization, shared between layers that read the same tensor with the same spec
    def quantize_input(self, nodes: list, x: str, plan: dict) -> dict:
        act = plan["act"]
        spec = act["spec"]
        smooth = plan["smooth"]
        key = (x, None if smooth is None else smooth.tobytes(), repr(spec), act.get("scale"), act.get("zero_point"), self.lowering)
        if key in self.shared:
            return self.shared[key]
        if smooth is not None:
            x = self.node(nodes, "Div", [x, self.const(smooth.astype(np.float32), "smooth")])
        fmt, mapping = spec.format, type(spec.mapping).__name__
        qmin, qmax = fmt.qmin, fmt.qmax
        offset = 128 if fmt.signed else 0  # uint8 container: code + 128 for signed grids
        full8 = fmt.bits == 8 and not fmt.narrow_range
        res: dict = {"x": x}
        if act["kind"] == "static":
            s = self.const(np.array(act["scale"], np.float32), "a_scale")
            zp_u8 = act["zero_point"] + offset
            res.update(scale=s, zp=self.const(np.array(zp_u8, np.uint8), "a_zp"), per_row=False, zp_row=None)
            if full8 and self.lowering != "elementwise":
                res["q"] = self.node(nodes, "QuantizeLinear", [x, s, res["zp"]])
            else:
                res["q"] = self._elementwise_codes(nodes, x, s, float(zp_u8), qmin + offset, qmax + offset)
            self.shared[key] = res
            return res
        per_token = act["kind"] == "per_token"
        axes = [-1] if per_token else None
        kw = {"axes": axes} if axes else {}
        if mapping == "Symmetric":
            if per_token and self.amax == "minmax":
                mx = self.node(nodes, "ReduceMax", [x], keepdims=1, **kw)
                mn = self.node(nodes, "ReduceMin", [x], keepdims=1, **kw)
                amax = self.node(nodes, "Max", [mx, self.node(nodes, "Neg", [mn])])
            else:
                amax = self.node(nodes, "ReduceMax", [self.node(nodes, "Abs", [x])], keepdims=1 if per_token else 0, **kw)
            denom = np.float32((qmax - qmin) / 2)
            s = self.node(nodes, "Max", [self.node(nodes, "Div", [amax, self.const(denom, "denom")]), self.const(np.float32(_EPS), "eps")])
            zp_code = 0 if fmt.signed else (qmin + qmax + 1) // 2
            zp_u8 = zp_code + offset
            res.update(scale=s, zp=self.const(np.array(zp_u8, np.uint8), "a_zp"), per_row=per_token, zp_row=None)
            if full8 and self.lowering != "elementwise":
                if per_token:
                    s1 = self.node(nodes, "Reshape", [s, self.const(np.array([-1], np.int64), "flat")])
                    zp1 = self.node(nodes, "ConstantOfShape", [self.node(nodes, "Shape", [s1])], value=_tensor_attr(np.array([zp_u8], np.uint8)))
                    k = plan["in"]
                    x2 = self.node(nodes, "Reshape", [x, self.const(np.array([-1, k], np.int64), "rows")])
                    q2 = self.node(nodes, "QuantizeLinear", [x2, s1, zp1], axis=0)
                    res["q"] = self.node(nodes, "Reshape", [q2, self.node(nodes, "Shape", [x])])
                else:
                    res["q"] = self.node(nodes, "QuantizeLinear", [x, s, res["zp"]])
            else:
                res["q"] = self._elementwise_codes(nodes, x, s, float(zp_u8), qmin + offset, qmax + offset)
        else:  # Affine: zero point from the range (per token: one per row)
            mx = self.node(nodes, "ReduceMax", [x], keepdims=1 if per_token else 0, **kw)
            mn = self.node(nodes, "ReduceMin", [x], keepdims=1 if per_token else 0, **kw)
            zero = self.const(np.float32(0.0), "zero")
            hi = self.node(nodes, "Max", [mx, zero])
            lo = self.node(nodes, "Min", [mn, zero])
            s = self.node(
                nodes,
                "Max",
                [
                    self.node(nodes, "Div", [self.node(nodes, "Sub", [hi, lo]), self.const(np.float32(qmax - qmin), "levels")]),
                    self.const(np.float32(_EPS), "eps"),
                ],
            )
            zp_f = self.node(
                nodes,
                "Clip",
                [
                    self.node(nodes, "Sub", [self.const(np.float32(qmin), "qmin"), self.node(nodes, "Round", [self.node(nodes, "Div", [lo, s])])]),
                    self.const(np.float32(qmin), "qmin"),
                    self.const(np.float32(qmax), "qmax"),
                ],
            )
            zp_u8f = self.node(nodes, "Add", [zp_f, self.const(np.float32(offset), "offset")])
            codes = self._elementwise_codes(nodes, x, s, zp_u8f, qmin + offset, qmax + offset)
            res.update(q=codes, scale=s, per_row=per_token)
            if per_token:  # GEMM with zero point 0, then subtract zp_row * colsum(Q_w - Z_w)
                res.update(zp=self.const(np.array(0, np.uint8), "a_zp"), zp_row=zp_u8f)
            else:
                res.update(zp=self.node(nodes, "Cast", [zp_u8f], to=2), zp_row=None)  # 2 = UINT8
        self.shared[key] = res
        return res

    def _elementwise_codes(self, nodes, x, s, zp, lo, hi) -> str:
        zp_name = zp if isinstance(zp, str) else self.const(np.float32(zp), "zp")
        v = self.node(nodes, "Add", [self.node(nodes, "Round", [self.node(nodes, "Div", [x, s])]), zp_name])
        c = self.node(nodes, "Clip", [v, self.const(np.float32(lo), "lo"), self.const(np.float32(hi), "hi")])
        return self.node(nodes, "Cast", [c], to=2)  # UINT8

    # -- one layer
    def lower(self, mm, plan: dict) -> list:
        nodes: list = []
        x, y = mm.input[0], mm.output[0]
        if plan["act"] is None:  # weight-only (or smooth only): float MatMul on the dequantized weight
            if plan["smooth"] is not None:
                x = self.node(nodes, "Div", [x, self.const(plan["smooth"].astype(np.float32), "smooth")])
            nodes.append(_make(mm.op_type, [x, mm.input[1]], [y], mm.name))
            self.kinds["float_matmul_dequantized_weight"] += 1
            return nodes
        w = self.const(plan["codes"], "w_codes")
        ws = self.const(plan["w_scale"], "w_scale")
        wz = [self.const(plan["w_zp"], "w_zp")] if plan["w_zp"] is not None else []
        act = plan["act"]
        if self.lowering in _APPROXIMATE and act["kind"] != "static":
            exact = (
                act["kind"] == "per_tensor"
                and type(act["spec"].mapping).__name__ == "Affine"
                and not act["spec"].format.signed
                and act["spec"].format.bits == 8
                and not act["spec"].format.narrow_range
            )
            if not exact:
                self.approx.append(f"{plan['name']}: {_spec_name(act['spec'])} activations run as dynamic per_tensor affine uint8")
            if plan["smooth"] is not None:
                x = self.node(nodes, "Div", [x, self.const(plan["smooth"].astype(np.float32), "smooth")])
            if self.lowering == "dynamic_quantize_matmul":
                bz = wz if wz else []
                nodes.append(_make("DynamicQuantizeMatMul", [x, w, ws, *bz], [y], mm.name, domain="com.microsoft"))
            else:
                q = self.name("dql_q")
                s = self.name("dql_s")
                z = self.name("dql_z")
                nodes.append(_make("DynamicQuantizeLinear", [x], [q, s, z], q + "_node"))
                acc = self.node(nodes, "MatMulInteger", [q, w, z, *wz])
                scale = self.node(nodes, "Mul", [s, ws])
                nodes.append(_make("Mul", [self.node(nodes, "Cast", [acc], to=1), scale], [y], mm.name))
            self.kinds[f"{self.lowering}_per_tensor"] += 1
            return nodes
        qa = self.quantize_input(nodes, x, plan)
        kind = act["kind"]
        if self.lowering == "elementwise":
            acc = self.node(nodes, "MatMulInteger", [qa["q"], w, qa["zp"], *wz])
            f = self.node(nodes, "Mul", [self.node(nodes, "Mul", [self.node(nodes, "Cast", [acc], to=1), qa["scale"]]), ws])
        elif qa["per_row"] and self.row_scale == "mul":
            one = self.const(np.array(1.0, np.float32), "one")
            f = self.node(nodes, "MatMulIntegerToFloat", [qa["q"], w, one, ws, qa["zp"], *wz], domain="com.microsoft")
            f = self.node(nodes, "Mul", [f, qa["scale"]])
        else:  # a_scale of shape [.., 1] (per token) is applied to the rows after the GEMM by the kernel itself
            f = self.node(nodes, "MatMulIntegerToFloat", [qa["q"], w, qa["scale"], ws, qa["zp"], *wz], domain="com.microsoft")
        if qa["zp_row"] is not None:  # affine per-token: remove the row zero point's contribution
            colsum = plan["codes"].astype(np.int64).sum(0)
            if plan["w_zp"] is not None:
                colsum = colsum - plan["in"] * plan["w_zp"].astype(np.int64)
            c = self.const((colsum.astype(np.float64) * plan["w_scale"]).astype(np.float32), "colsum")
            corr = self.node(nodes, "Mul", [self.node(nodes, "Mul", [qa["zp_row"], qa["scale"]]), c])
            nodes.append(_make("Sub", [f, corr], [y], mm.name))
        else:
            nodes.append(_make("Identity", [f], [y], mm.name))
        self.kinds[f"{self.lowering}_{kind}"] += 1
        return nodes

    def run(self) -> int:
        lowered = 0
        new_nodes = []
        for node in self.g.node:
            if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in self.plans:
                new_nodes.extend(self.lower(node, self.plans[node.input[1]]))
                lowered += 1
            else:
                new_nodes.append(node)
        del self.g.node[:]
        self.g.node.extend(new_nodes)
        self.g.initializer.extend(self.inits)
        used = {i for n in self.g.node for i in n.input}
        for init in [i for i in self.g.initializer if i.name not in used]:
            self.g.initializer.remove(init)
        return lowered


def _make(op, inputs, outputs, name, domain=None, **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs)


def _tensor_attr(value: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(value)


def _drop_identities(graph) -> None:
    """Fold the ``Identity`` nodes the lowering leaves (rename the producer's output)."""
    outputs = {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.name and n.output[0] not in outputs]:
        src, dst = node.input[0], node.output[0]
        producer = next((n for n in graph.node if src in n.output), None)
        consumers = [n for n in graph.node if src in n.input and n is not node]
        if producer is None or consumers:
            continue
        producer.output[list(producer.output).index(src)] = dst
        graph.node.remove(node)


# --------------------------------------------------------------------------------------------- public API


def export_encoder_onnx(
    model: nn.Module,
    path,
    *,
    example: dict[str, torch.Tensor],
    int8: bool = True,
    optimize: bool = True,
    fast: bool = False,
    lowering: str = "auto",
    attention: str | None = None,
    fusions: Mapping[str, bool] | None = None,
) -> Path:
    """Export the sentence encoder ``model`` to ONNX at ``path`` (written atomically) and return the path.

    ``model(input_ids, attention_mask, token_type_ids)`` must return one tensor (e.g. :class:`lowbit.zoo.text.TextEncoder`);
    ``example`` holds those inputs as ``[batch, seq]`` integer tensors (a tokenizer's output); the graph has
    dynamic ``batch`` and ``sequence`` axes.

    * ``int8=False`` — the float model (quantizers off: ``QuantLinear`` computes ``linear(x / smooth, W, b)`` with
      its float master weight).
    * ``int8=True`` — every ``QuantLinear`` lowered to integer kernels on lowbit's own codes (module docstring:
      ``y = S_x S_w (Q_x - Z_x)^T Q_w + b``, ``S_x`` per token for per-token specs). ``lowering`` picks the
      kernels (:data:`LOWERINGS`); ``fast=True`` is ``lowering="dynamic_quantize_matmul"``, which runs dynamic
      activations with ONE per-tensor affine uint8 range: an approximation of per-token quantization, reported in
      :func:`encoder_onnx_info` (``exact: False`` and ``approximations``) and as a ``UserWarning``.
    * ``optimize=True`` — ONNX Runtime's BERT fusions before lowering; ``attention`` (``"Attention"``,
      ``"MultiHeadAttention"`` or ``"none"``) defaults to ``Attention`` for float and ``MultiHeadAttention`` for
      int8 (whose Q / K / V projections must stay outside the fused op to run in int8); ``fusions`` sets single
      ``FusionOptions`` switches, e.g. ``{"enable_skip_layer_norm": False}``. Measure before keeping it: on the
      2-vCPU test machine the fusions slowed both float and int8 graphs (module docstring).

    Activation granularity: per-token and per-tensor specs keep their exact meaning under ``lowering="auto"`` /
    ``"elementwise"``; ``fast`` / ``"matmul_integer"`` change per-token to per-tensor (documented, reported).
    The same holds for a ``smooth`` buffer (an explicit ``Div`` by ``smooth`` before quantizing; layers that share
    an input and a smoothing vector share one quantization of it).

    The export's facts (lowered layers, kernels, exactness, attention op, CPU int8 plan) are stored in the
    ONNX file's metadata; read them with :func:`encoder_onnx_info`.

    Raises :class:`~lowbit.errors.UnsupportedError` (not an nn.Module, forward fails on ``example``, a layer
    spec with no exact lowering, no ``QuantLinear`` with ``int8=True``) and :class:`~lowbit.errors.ConfigError`
    (bad ``example``, ``path`` a directory or under a file or not writable, unknown ``lowering`` / ``attention`` /
    ``fusions`` key).

    Example:
        >>> import tempfile, os, torch
        >>> from transformers import BertConfig, BertModel
        >>> from lowbit.zoo.text import TextEncoder
        >>> cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
        >>> enc = TextEncoder(BertModel(cfg), None, normalize=True).eval()
        >>> ex = {"input_ids": torch.randint(0, 50, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
        >>> p = export_encoder_onnx(enc, os.path.join(tempfile.mkdtemp(), "f.onnx"), example=ex, int8=False)
        >>> encoder_onnx_info(p)["int8"], p.suffix
        (False, '.onnx')
    """
    import onnx

    from ..nn.layers import QuantLinear

    ex = _check_inputs(model, example)
    p = _check_path(path)
    if fast:
        lowering = "dynamic_quantize_matmul"
    if lowering not in LOWERINGS:
        raise ConfigError(f"lowering must be one of {list(LOWERINGS)}, got {lowering!r}")
    if attention not in (None, "Attention", "MultiHeadAttention", "none"):
        raise ConfigError(f"attention must be 'Attention', 'MultiHeadAttention' or 'none', got {attention!r}")
    if not module_available("onnxruntime"):
        raise UnsupportedError("onnxruntime is not installed; install the extra: pip install 'lowbit[onnx]'")
    n_quant = sum(isinstance(m, QuantLinear) for m in model.modules())
    if int8 and n_quant == 0:
        raise UnsupportedError("int8=True but the model has no QuantLinear layer; quantize it first (e.g. quantize_linears) or export with int8=False")
    export_model, plans = _export_copy(model, int8)
    proto = _torch_export(export_model, ex)
    heads, hidden = _attention_config(model)
    if attention is None:
        attention = ("MultiHeadAttention" if int8 and plans else "Attention") if optimize else "none"
    if optimize:
        proto = _ort_optimize(proto, heads, hidden, attention, fusions)
    info: dict = {
        "int8": bool(int8),
        "optimize": bool(optimize),
        "lowering": lowering if int8 else None,
        "attention_op": attention if optimize else "none",
        "quant_linear_layers": n_quant,
        "lowered": 0,
        "kernels": {},
        "exact": True,
        "approximations": [],
    }
    if int8:
        low = _Lowerer(proto.graph, plans, lowering)
        info["lowered"] = low.run()
        _drop_identities(proto.graph)
        missing = len(plans) - info["lowered"]
        if missing:
            raise UnsupportedError(f"{missing} QuantLinear layers were not found as MatMul nodes after export; export with optimize=False or report the model")
        info["kernels"] = dict(low.kinds)
        info["approximations"] = low.approx
        info["exact"] = not low.approx
        from .cpu import int8_plan

        plan = int8_plan()
        wide = [pl["name"] for pl in plans.values() if pl["codes"] is not None and pl["w_bits"] >= 8 and np.abs(pl["codes"].astype(np.int32)).max() > 64]
        info["cpu_int8_plan"] = plan
        info["int16_saturation_risk"] = bool(wide) and plan["weight_bits"] < 8
        if info["int16_saturation_risk"]:
            warnings.warn(
                f"{len(wide)} layers use 8-bit weight codes beyond +-64 and this CPU has AVX2 without VNNI: ONNX "
                "Runtime's u8 x s8 GEMM may saturate; quantize with 7-bit weights (lowbit.runtime.fit_to_cpu)",
                UserWarning,
                stacklevel=2,
            )
        if low.approx:
            warnings.warn(f"lowering {lowering!r} approximates {len(low.approx)} layers' activation quantization ({low.approx[0]})", UserWarning, stacklevel=2)
    if any(n.domain == "com.microsoft" for n in proto.graph.node) and not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    info["ops"] = dict(sorted(Counter(n.op_type for n in proto.graph.node).items()))
    entry = proto.metadata_props.add()
    entry.key, entry.value = _META_KEY, json.dumps(info)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:  # pragma: no cover - a lowering bug
        raise UnsupportedError(f"the lowered graph is not valid ONNX: {str(e).splitlines()[0]}") from None
    try:
        atomic_write_bytes(p, proto.SerializeToString())
    except OSError as e:
        raise ConfigError(f"cannot write {p}: {e.strerror or e}") from None
    return p


def encoder_onnx_info(path) -> dict:
    """The facts :func:`export_encoder_onnx` stored in the file: ``int8``, ``lowering``, ``lowered`` (layer
    count), ``kernels``, ``exact`` and ``approximations`` (activation granularities the kernels could not keep),
    ``attention_op``, ``ops``, ``cpu_int8_plan``, ``int16_saturation_risk``.

    Example:
        >>> import tempfile, os
        >>> try:
        ...     encoder_onnx_info(os.path.join(tempfile.mkdtemp(), "missing.onnx"))
        ... except FileNotFoundError as e:
        ...     print(type(e).__name__)
        DataError
    """
    import onnx

    from ..errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p} does not exist")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError / others
        raise DataError(f"{p} is not an ONNX model ({type(e).__name__})") from None
    for entry in proto.metadata_props:
        if entry.key == _META_KEY:
            return json.loads(entry.value)
    raise DataError(f"{p} was not written by export_encoder_onnx (no {_META_KEY} metadata)")


class OrtEncoder:
    """An exported encoder in an ``onnxruntime.InferenceSession`` (CPU, ``threads`` intra-op threads, one
    inter-op thread: the options :class:`~lowbit.runtime.ort.OrtModel` uses), called like the torch model.

    ``encoder(input_ids, attention_mask, token_type_ids)`` (tensors or a tokenizer's dict via ``**``) returns a
    torch tensor; ``run_numpy(feeds)`` takes a dict of numpy arrays (what :func:`interleaved_latency` calls).
    Inputs the graph does not read (e.g. ``token_type_ids`` folded away) are dropped. ``allow_spinning``
    sets ONNX Runtime's ``session.intra_op.allow_spinning`` (``None``: its default, spinning on). On a small
    shared VM, spinning worker threads cost a lot between the many small ops of a quantized graph (measured on
    2 vCPUs, batch 32: per-token int8 68 ms without spinning, 104 ms with; float 166 vs 174 ms).

    Example:
        >>> import tempfile, os, torch
        >>> from transformers import BertConfig, BertModel
        >>> from lowbit.zoo.text import TextEncoder
        >>> cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
        >>> enc = TextEncoder(BertModel(cfg), None, normalize=True).eval()
        >>> ex = {"input_ids": torch.randint(0, 50, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
        >>> p = export_encoder_onnx(enc, os.path.join(tempfile.mkdtemp(), "f.onnx"), example=ex, int8=False)
        >>> OrtEncoder(p)(**ex).shape
        torch.Size([2, 32])
    """

    training = False

    def __init__(self, path, threads: int = 2, optimized_path=None, profile_prefix: str | None = None, allow_spinning: bool | None = None) -> None:
        if not module_available("onnxruntime"):
            raise UnsupportedError("onnxruntime is not installed; install the extra: pip install 'lowbit[onnx]'")
        import onnxruntime as ort

        from ..errors import DataError

        if not Path(path).is_file():
            raise DataError(f"{path} does not exist")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if allow_spinning is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        if optimized_path is not None:
            so.optimized_model_filepath = str(optimized_path)
        if profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        self.path = Path(path)
        self.threads = threads
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run_numpy(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """One forward pass on a dict of int64 numpy arrays."""
        return self.session.run(None, {k: np.asarray(feeds[k], dtype=np.int64) for k in self.input_names})[0]

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, **_) -> torch.Tensor:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if feeds["token_type_ids"] is None and "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = torch.zeros_like(torch.as_tensor(input_ids))
        missing = [k for k in self.input_names if feeds.get(k) is None]
        if missing:
            raise ConfigError(f"missing encoder inputs {missing}")
        arrays = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in feeds.items() if v is not None}
        return torch.from_numpy(np.array(self.run_numpy(arrays)))

    def eval(self) -> OrtEncoder:
        return self

    def train(self, mode: bool = True) -> OrtEncoder:
        return self


def interleaved_rounds(runners: Mapping[str, object], feeds, repeats: int, calls: int = 1, warmup: int = 3) -> dict[str, list[float]]:
    """Seconds per call of each runner (``run_numpy(feeds)``), round by round: ``warmup`` untimed calls each,
    then ``repeats`` rounds in which every runner runs ``calls`` times; the order of the runners is reversed
    every other round, so a drift of the machine (another process, clock changes) hits all of them alike and
    per-round ratios between runners stay meaningful.

    Example:
        >>> class Sleepy:
        ...     def run_numpy(self, feeds): return None
        >>> r = interleaved_rounds({"a": Sleepy(), "b": Sleepy()}, {}, repeats=3)
        >>> sorted(r), len(r["a"])
        (['a', 'b'], 3)
    """
    import time

    for r in runners.values():
        for _ in range(warmup):
            r.run_numpy(feeds)
    names = list(runners)
    out: dict[str, list[float]] = {k: [] for k in names}
    for i in range(repeats):
        for k in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            for _ in range(calls):
                runners[k].run_numpy(feeds)
            out[k].append((time.perf_counter() - t0) / calls)
    return out


def encoder_latency_ratio(
    float_onnx, int8_onnx, batch: Mapping, *, repeats: int = 10, calls: int = 3, threads: int = 2, allow_spinning: bool | None = None
) -> dict:
    """Float vs int8 latency of two exported encoders on ONNX Runtime CPU, measured in one run with the same
    session options (``threads`` intra-op threads, one inter-op thread, ``allow_spinning`` as in
    :class:`OrtEncoder`) by :func:`interleaved_rounds`.

    Returns ``float_s`` / ``int8_s`` (median seconds per call over the rounds) and
    ``ratio = median_r(int8_r / float_r)``, the median of the per-round ratios (robust to the machine slowing
    down for a while: both models of a round see the same conditions), with ``ratio_q1`` / ``ratio_q3`` its
    quartiles and ``ratio_of_medians = int8_s / float_s``. ``ratio < 1``: int8 is faster.

    ``batch``: the encoder inputs (torch tensors or numpy arrays), e.g. a tokenizer's output.

    Example:
        >>> import tempfile, os, torch
        >>> from transformers import BertConfig, BertModel
        >>> from lowbit.zoo.text import TextEncoder
        >>> from lowbit.config import QuantSpec
        >>> from lowbit.quant import IntFormat, PerChannel, PerToken
        >>> cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
        >>> enc = TextEncoder(BertModel(cfg), None, normalize=True).eval()
        >>> q = quantize_linears(enc, QuantSpec(granularity=PerChannel(0)), QuantSpec(granularity=PerToken(), dynamic=True))
        >>> ex = {"input_ids": torch.randint(0, 50, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
        >>> d = tempfile.mkdtemp()
        >>> f = export_encoder_onnx(enc, os.path.join(d, "f.onnx"), example=ex, int8=False)
        >>> i = export_encoder_onnx(q, os.path.join(d, "i.onnx"), example=ex)
        >>> r = encoder_latency_ratio(f, i, ex, repeats=2, calls=1)
        >>> r["ratio"] > 0, r["batch"], r["seq"]
        (True, 2, 6)
    """
    if repeats < 1 or calls < 1:
        raise ConfigError(f"repeats and calls must be >= 1, got {repeats}, {calls}")
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise ConfigError("batch must be a dict of encoder inputs with at least 'input_ids'")
    feeds = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).astype(np.int64) for k, v in batch.items() if k in _INPUTS}
    if "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    opts = {"threads": threads, "allow_spinning": allow_spinning}
    runners = {"float": OrtEncoder(float_onnx, **opts), "int8": OrtEncoder(int8_onnx, **opts)}
    t = interleaved_rounds(runners, feeds, repeats, calls)
    ratios = sorted(i / f for i, f in zip(t["int8"], t["float"], strict=True))
    q1, med, q3 = (float(np.percentile(ratios, q)) for q in (25, 50, 75))
    f_s, i_s = float(np.median(t["float"])), float(np.median(t["int8"]))
    return {
        "float_s": f_s,
        "int8_s": i_s,
        "ratio": med,
        "ratio_q1": q1,
        "ratio_q3": q3,
        "ratio_of_medians": i_s / f_s,
        "runtime": "onnxruntime-cpu",
        "threads": threads,
        "allow_spinning": allow_spinning,
        "batch": int(feeds["input_ids"].shape[0]),
        "seq": int(feeds["input_ids"].shape[1]),
        "repeats": repeats,
        "calls": calls,
    }
