"""ONNX export with QuantizeLinear / DequantizeLinear (QDQ format) for ONNX Runtime's int8 kernels.

Each activation quantizer becomes a ``QuantizeLinear -> DequantizeLinear`` pair with its calibrated
``(S, Z)``; each weight becomes an int8 initializer (the codes ``q``) followed by a per-channel
(axis 0) or per-tensor ``DequantizeLinear``. ONNX Runtime's graph optimizer then fuses
``DQ -> Conv/MatMul/Add -> Q`` groups into ``QLinearConv`` / ``QLinearMatMul`` / ``QLinearAdd``.

Also: plain float32 / float16 / bfloat16 export of any model (``precision=``).

Example:
    >>> import tempfile, os, torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> m = lowbit.quantize_(FmnistMLP(), lowbit.load_recipe("w8a8"), data=[torch.randn(8, 1, 28, 28)])
    >>> path = os.path.join(tempfile.mkdtemp(), "mlp.onnx")
    >>> info = lowbit.export_onnx(m, torch.randn(1, 1, 28, 28), path)
    >>> info["quantize_linear"] >= 2, info["weight_initializers_int8"]
    (True, 2)
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CalibrationError, ConfigError, UnsupportedError
from ..io import atomic_write_bytes
from ..nn import ActQuant, WeightQuant
from ..quant import PerChannel, PerTensor

MIN_OPSET = 13  # per-channel QuantizeLinear / DequantizeLinear


def _check_exportable(model: nn.Module) -> list[nn.Module]:
    mods = [m for m in model.modules() if isinstance(m, ActQuant | WeightQuant)]
    from ..nn.learned import CodebookQuant, LearnedQuant

    for name, m in model.named_modules():
        if isinstance(m, CodebookQuant):
            raise UnsupportedError(f"{name}: {m.method} codebook weights ({m.codebook.numel()} non-uniform values) have no ONNX "
                                   "QDQ form; keep this model in lowbit's packed format (lowbit.save)")
        if isinstance(m, LearnedQuant):
            raise UnsupportedError(f"{name}: the model is QAT-prepared; convert it first: quantize_(model, cfg.replace(step='convert'))")
        if not isinstance(m, ActQuant | WeightQuant):
            continue
        spec = m.spec
        if spec.format.bits > 8:
            raise UnsupportedError(f"{name}: {spec.format.bits}-bit quantizers have no ONNX int8 kernel; use lowbit.save for >8-bit")
        if not isinstance(spec.granularity, PerTensor | PerChannel):
            raise UnsupportedError(
                f"{name}: {spec.granularity.name} weights cannot be expressed in ONNX QDQ below opset 21; "
                "use per-channel weights (e.g. recipe w4a8) or lowbit.save for the packed format"
            )
        if isinstance(m, ActQuant):
            if spec.format.bits != 8:
                raise UnsupportedError(
                    f"{name}: {spec.format.bits}-bit activations have no ONNX Runtime int8 kernel; export a recipe with 8-bit "
                    "activations (w8a8, w4a8) or keep this model in lowbit's packed format (lowbit.save)"
                )
            if spec.dynamic:
                raise UnsupportedError(f"{name}: dynamic activation ranges are not exported to QDQ; use a calibrated (static) recipe")
            if m.scale is None:
                raise CalibrationError(f"activation quantizer {name} is not calibrated; calibrate the model before exporting")
    return mods


def _float_layer_modules(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    from ..nn.layers import is_quant_module

    mods = dict(model.named_modules())
    quantized = [n for n, m in mods.items() if is_quant_module(m)]
    out = []
    for name in names:
        if name not in mods or not is_quant_module(mods[name]):
            raise ConfigError(f"--keep-float {name!r} is not a quantized layer of this model; quantized layers: {', '.join(quantized[:12])}"
                              + (" ..." if len(quantized) > 12 else ""))
        out.append(mods[name])
    return out


@contextmanager
def onnx_export_mode(model: nn.Module, float_layers: Sequence[str] = ()) -> Iterator[nn.Module]:
    """Quantizers use torch's exportable fake-quant ops inside the block; the layers named in
    ``float_layers`` export without their weight / input quantizers (float kernels). Restored on any exit."""
    layers = _float_layer_modules(model, float_layers)
    saved = [(m, m.weight_quant, m.input_quant) for m in layers]
    for m in layers:
        m.weight_quant = m.input_quant = None
    on_grid: list[tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    try:
        mods = _check_exportable(model)
        for m in mods:
            m.onnx_export = True
        on_grid = _weights_onto_their_grid(model)
        yield model
    finally:
        for m in model.modules():
            if isinstance(m, ActQuant | WeightQuant):
                m.onnx_export = False
        with torch.no_grad():
            for layer, original, scale, zp in on_grid:
                layer.weight.copy_(original)
                layer.weight_quant.set_qparams(layer.weight, scale, zp)
                layer.weight_quant.onnx_on_grid = False
        for m, wq, iq in saved:
            m.weight_quant, m.input_quant = wq, iq


@torch.no_grad()
def _weights_onto_their_grid(model: nn.Module) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Put every weight whose grid is narrower than its int8 container (4-bit, 7-bit, narrow range)
    on that grid in place, its qparams pinned, so the traced graph quantizes an initializer (stored
    as int8 codes by :func:`_fold_weight_quantizers`) instead of a chain of float ops. Returns what
    :func:`onnx_export_mode` restores."""
    from ..nn.layers import is_quant_module
    from ..quant import fake_quantize

    done = []
    for m in model.modules():
        wq = getattr(m, "weight_quant", None)
        if not (is_quant_module(m) and isinstance(wq, WeightQuant)):
            continue
        fmt = wq.spec.format
        if fmt.bits >= 8 and not fmt.narrow_range:
            continue
        scale, zp = wq.qparams(m.weight)
        scale, zp = scale.clone(), zp.clone()
        done.append((m, m.weight.detach().clone(), scale, zp))
        m.weight.copy_(fake_quantize(m.weight, scale, zp, fmt, wq.spec.granularity, wq.spec.rounding))
        wq.set_qparams(m.weight, scale, zp)
        wq.onnx_on_grid = True
    return done


def _const_reader(g):
    """``value(name)``: the numpy value of an initializer / Constant output (through Identity), else None."""
    from onnx import numpy_helper

    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    identities = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}  # shared initializers

    def value(name):
        while name in identities:
            name = identities[name]
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    return value


def _drop_requantize_pairs(proto) -> int:
    """Remove ``DequantizeLinear -> [Relu] -> QuantizeLinear`` chains that give back the same codes.

    With equal ``(S, Z)`` on both ends, ``Q(DQ(q)) = q``; a Relu between them is the identity too
    when ``Z`` is the container's minimum (0 for uint8). The Q's consumers then read ``q`` directly, so
    ONNX Runtime sees one quantized tensor feeding several integer kernels (no float round trip).
    """
    import numpy as np

    g = proto.graph
    value = _const_reader(g)
    producer = {o: n for n in g.node for o in n.output}
    removed = 0
    for q in [n for n in g.node if n.op_type == "QuantizeLinear"]:
        src = producer.get(q.input[0])
        if src is not None and src.op_type == "Relu":
            src = producer.get(src.input[0])
            through_relu = True
        else:
            through_relu = False
        if src is None or src.op_type != "DequantizeLinear" or len(q.input) < 3 or len(src.input) < 3:
            continue
        if q.output[0] in {o.name for o in g.output}:
            continue  # a graph output keeps its Q node
        s1, z1, s2, z2 = (value(n) for n in (src.input[1], src.input[2], q.input[1], q.input[2]))
        if any(v is None for v in (s1, z1, s2, z2)) or s1.shape != s2.shape or z1.dtype != z2.dtype:
            continue
        if not (np.array_equal(s1, s2) and np.array_equal(z1, z2)):
            continue
        if through_relu and not np.all(z1 == np.iinfo(z1.dtype).min):
            continue
        for other in g.node:
            for i, name in enumerate(other.input):
                if name == q.output[0]:
                    other.input[i] = src.input[0]
        g.node.remove(q)
        removed += 1
    # drop nodes whose outputs nobody reads any more (the DQ / Relu left behind)
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type in ("DequantizeLinear", "Relu", "Constant") and not any(o in used for o in n.output)]
        if not dead:
            return removed
        for n in dead:
            g.node.remove(n)


def _fold_weight_quantizers(proto) -> int:
    """Replace ``QuantizeLinear(float initializer)`` by the integer initializer it computes."""
    from onnx import numpy_helper

    g = proto.graph
    value = _const_reader(g)

    folded = 0
    for node in list(g.node):
        if node.op_type != "QuantizeLinear":
            continue
        w = value(node.input[0])
        if w is None or w.ndim < 2:  # activations and biases stay as they are
            continue
        scale = value(node.input[1])
        zp = value(node.input[2]) if len(node.input) > 2 else np.zeros((), np.uint8)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = scale.size
        s = scale.astype(np.float32).reshape(shape) if scale.ndim else scale.astype(np.float32)
        z = zp.astype(np.int32).reshape(shape) if zp.ndim else zp.astype(np.int32)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(w.astype(np.float32) / s) + z, info.min, info.max).astype(zp.dtype)
        name = node.input[0] + "_quantized"
        g.initializer.append(numpy_helper.from_array(q, name))
        for other in g.node:
            for i, inp in enumerate(other.input):
                if inp == node.output[0]:
                    other.input[i] = name
        g.node.remove(node)
        folded += 1
    used = {i for n in g.node for i in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)  # the float weights are replaced by their int8 codes
    return folded


def _torch_export(model: nn.Module, example: torch.Tensor, buf: io.BytesIO, kwargs: dict) -> None:
    try:
        torch.onnx.export(model, (example,), buf, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:  # torch's exporter dumps whole graphs: keep the first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedError(f"torch.onnx.export failed: {first[:300]}") from None


def _weights_beyond_7bit(proto) -> list[str]:
    """Names of int8 weight initializers (2-D and up) with a code outside ``[-64, 64]``.

    Why 64: AVX2's ``vpmaddubsw`` computes ``a0 b0 + a1 b1`` for uint8 ``a`` and int8 ``b`` in a
    saturating int16; ``255 (|b0| + |b1|) <= 32767`` holds for every input exactly when ``|b| <= 64``.
    """
    from onnx import TensorProto, numpy_helper

    out = []
    for init in proto.graph.initializer:
        if init.data_type == TensorProto.INT8 and len(init.dims) >= 2:
            q = numpy_helper.to_array(init)
            if q.size and int(np.abs(q.astype(np.int32)).max()) > 64:
                out.append(init.name.removesuffix("_quantized"))
    return out


def _cpu_saturates_8bit_weights() -> bool:
    from ..runtime.cpu import int8_plan

    return int8_plan()["weight_bits"] < 8


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    *,
    opset: int = 17,
    precision: str = "qdq",
    float_layers: Sequence[str] = (),
) -> dict:
    """Export ``model`` to ONNX at ``path`` (atomically) and return a summary.

    Args:
        model: a model quantized and calibrated by ``quantize_`` (``precision="qdq"``), or any model
            for ``precision`` in ``fp32`` / ``fp16`` / ``bf16``.
        example_input: one input batch (the batch dimension is exported as dynamic).
        opset: ONNX opset (>= 13 for per-channel QDQ).
        precision: ``qdq`` (int8 QuantizeLinear / DequantizeLinear), ``fp32``, ``fp16`` or ``bf16``.
        float_layers: names of quantized layers to export in float (e.g. layers whose int8 kernel
            :func:`lowbit.report.bench.benchmark` measured slower than float).

    The summary also says how many int8 weight tensors use codes beyond ``+-64``
    (``weights_beyond_7bit``) and whether that makes ONNX Runtime's results differ on this CPU
    (``int16_saturation_risk``: x86 with AVX2 but no VNNI, see :func:`lowbit.runtime.int8_plan`);
    a ``UserWarning`` then names the fix (7-bit weights).
    """
    import onnx

    if precision not in ("qdq", "fp32", "fp16", "bf16"):
        raise ConfigError(f"precision must be qdq, fp32, fp16 or bf16, got {precision!r}")
    if opset < MIN_OPSET:
        raise ConfigError(f"opset {opset} is too old: QDQ export needs opset >= {MIN_OPSET} (per-channel DequantizeLinear)")
    model = model.eval()
    buf = io.BytesIO()
    kwargs = dict(opset_version=opset, input_names=["input"], output_names=["output"],
                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if precision == "qdq":
            with onnx_export_mode(model, float_layers), torch.no_grad():
                _torch_export(model, example_input, buf, kwargs)
        else:
            import copy

            dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
            m = copy.deepcopy(model).to(dtype)
            with torch.no_grad():
                _torch_export(m, example_input.to(dtype), buf, kwargs)
    proto = onnx.load_from_string(buf.getvalue())
    folded = _fold_weight_quantizers(proto) if precision == "qdq" else 0
    dropped = _drop_requantize_pairs(proto) if precision == "qdq" else 0
    onnx.checker.check_model(proto)
    wide = _weights_beyond_7bit(proto) if precision == "qdq" else []
    risk = bool(wide) and _cpu_saturates_8bit_weights()
    if risk:
        warnings.warn(f"{len(wide)} weight tensors use int8 codes beyond +-64 ({', '.join(wide[:3])}{', ...' if len(wide) > 3 else ''}); "
                      "this CPU has AVX2 without VNNI, where ONNX Runtime's u8 x s8 kernels add product pairs in saturating "
                      "int16, so its outputs will differ from lowbit's simulation: quantize with 7-bit weights "
                      "(lowbit.runtime.int8_plan()['weight_bits']; e.g. weight bits: 7 in the recipe) for exact results",
                      UserWarning, stacklevel=2)
    data = proto.SerializeToString()
    atomic_write_bytes(path, data)
    ops = [n.op_type for n in proto.graph.node]
    return {
        "path": str(path), "bytes": len(data), "opset": opset, "precision": precision,
        "quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear"),
        "weight_initializers_int8": folded, "requantize_pairs_dropped": dropped, "ops": sorted(set(ops)), "float_layers": list(float_layers),
        "weights_beyond_7bit": len(wide), "int16_saturation_risk": risk,
    }
