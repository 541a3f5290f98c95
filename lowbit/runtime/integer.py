"""Integer-only reference engine and the integer-exact simulation mode.

A calibrated lowbit model (``quantize_`` with static per-tensor activations and symmetric weights)
is executed the way an int8 accelerator executes it (Jacob et al. 2018):

* every value between layers is an integer tensor ``n`` with a real scale ``s`` (``x = s * n``);
  an activation quantizer's output is ``n = q - Z`` with ``q`` in ``[qmin, qmax]``;
* conv / linear: ``acc = sum(n_x * q_w) + round(b / (S_x S_w))`` accumulated in int32, scale
  ``S_x * S_w`` (per output channel);
* requantization to the next quantizer ``(S_y, Z_y)``: the real multiplier ``m = s / S_y`` is
  written as ``M0 * 2^-r`` with a 31-bit ``M0``; ``q = clamp(rshift_rne(acc * M0, r) + Z_y)``,
  where ``rshift_rne`` is an exact round-half-to-even right shift in int64;
* ReLU is ``max(n, 0)``, ReLU6 is ``min(max(n, 0), round(6 / s))`` (integer clamps);
* residual add of two grids ``(S_a, Z_a)``, ``(S_b, Z_b)`` into ``(S_c, Z_c)``: both multipliers
  ``S_a/S_c``, ``S_b/S_c`` share one shift ``r``: ``q = rshift_rne(A n_a + B n_b, r) + Z_c``;
* average pooling sums ``n`` in the integer domain (scale ``s / N``); max pooling takes the
  maximum of ``n`` (the scale is positive);
* the only float operations are quantizing the model input and scaling the final accumulator.

Two executors share this lowering and the requantization arithmetic but not the kernels:

* :class:`IntegerEngine` (``backend="int"``) runs conv / linear as im2col + int8 x int8 -> int32
  GEMM (``torch._int_mm``; int32 matmul where it is missing), depthwise convs as int32
  multiply-add, pooling as integer sums — no float in any inner loop;
* :func:`integer_exact` (``backend="float64"``) is lowbit's simulation in integer-exact mode: the
  layers' own float forward (``_conv_forward`` / ``F.linear`` / ``F.avg_pool``) evaluated in
  float64 on the integer grids, which is exact below ``2^53``, so it runs wherever torch does
  (GPU included) and gives **bit-identical** logits to the engine.

Example:
    >>> import torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> torch.manual_seed(0) and None
    >>> m = lowbit.quantize_(FmnistMLP(), lowbit.load_recipe("w8a8"), data=[torch.randn(64, 1, 28, 28)])
    >>> x = torch.randn(5, 1, 28, 28)
    >>> torch.equal(IntegerEngine(m)(x), integer_exact(m)(x))
    True
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import CalibrationError, UnsupportedError
from ..nn import ActQuant, QuantAdd
from ..nn.layers import QuantConv1d, QuantConv2d, QuantLinear, is_quant_module
from ..quant import PerChannel, PerTensor, quantize
from ..transform.graph import trace
from .base import NumpyRunner

_ACC_LIMIT = 2**31


# ----------------------------------------------------------------------------- integer arithmetic
def quantize_multiplier(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Write positive reals ``m`` as ``M0 * 2^-r`` with integer ``M0`` in ``[2^30, 2^31]`` and ``r >= 0``.

    ``m = f * 2^e`` with ``f`` in ``[0.5, 1)`` gives ``M0 = round(f * 2^31)``, ``r = 31 - e``
    (multipliers below ``2^-31`` keep ``r = 62`` and a smaller ``M0``).

    Example:
        >>> M0, r = quantize_multiplier(torch.tensor([0.5, 0.1], dtype=torch.float64))
        >>> M0.tolist(), r.tolist()
        ([1073741824, 1717986918], [31, 34])
    """
    m = torch.as_tensor(m, dtype=torch.float64)
    if not bool((m > 0).all()) or not bool(torch.isfinite(m).all()):
        raise UnsupportedError("requantization multipliers must be positive and finite (a zero or NaN scale in the model?)")
    mant, exp = torch.frexp(m)
    M0 = torch.round(mant * 2.0**31).long()
    r = 31 - exp.long()
    if bool((r < 0).any()):
        raise UnsupportedError(f"a requantization multiplier of {float(m.max()):.3g} is too large for 31-bit fixed point")
    over = (r - 62).clamp(min=0)
    return M0 >> over, r - over


def rshift_rne(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``round_half_even(p / 2^r)`` for int64 ``p`` and shifts ``r >= 1`` — exact integer arithmetic.

    Example:
        >>> rshift_rne(torch.tensor([5, 6, 7, -5, -6]), torch.tensor(1)).tolist()
        [2, 3, 4, -2, -3]
    """
    r = torch.as_tensor(r, dtype=torch.int64, device=p.device)
    # p = k * 2^r + rem: adding 2^(r-1) - 1 plus the parity of k rounds the tie rem = 2^(r-1) to even
    return (p + ((torch.ones_like(r) << (r - 1)) - 1) + ((p >> r) & 1)) >> r


def requantize(n: torch.Tensor, s: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int) -> torch.Tensor:
    """Codes ``q = clamp(round(n * s / scale) + Z, qmin, qmax)`` with the fixed-point multiplier."""
    M0, r = quantize_multiplier(s.double() / scale)
    M0, r = M0.to(n.device), r.to(n.device)
    if bool((n.abs() >= 2**32).any()):
        raise UnsupportedError("an accumulator exceeds 32 bits; the integer engine cannot requantize it")
    return torch.clamp(rshift_rne(n * M0, r) + zero_point, qmin, qmax)


# ----------------------------------------------------------------------------- values
class IntValue:
    """``x = s * n``: int64 tensor ``n``, float64 scale ``s`` (broadcastable), and the grid
    ``(zero_point, qmin, qmax)`` when ``n`` comes straight from an activation quantizer."""

    __slots__ = ("n", "s", "zero_point", "qmin", "qmax")

    def __init__(self, n, s, zero_point=None, qmin=None, qmax=None) -> None:
        self.n, self.s, self.zero_point, self.qmin, self.qmax = n, s, zero_point, qmin, qmax

    def full_scale(self) -> torch.Tensor:
        return self.s if self.s.numel() == 1 else self.s.expand_as(self.n)

    def real(self) -> torch.Tensor:
        return (self.n.double() * self.s).float()


def _act_params(name: str, mod: ActQuant) -> tuple[float, int, int, int]:
    spec = mod.spec
    if spec.dynamic:
        raise UnsupportedError(f"{name}: dynamic activation ranges are not integer-only; use a calibrated (static) recipe such as w8a8")
    if not isinstance(spec.granularity, PerTensor):
        raise UnsupportedError(f"{name}: the integer engine needs per-tensor activation scales, got {spec.granularity.name}")
    if spec.format.bits > 8:
        raise UnsupportedError(f"{name}: {spec.format.bits}-bit activations; the integer engine runs 8-bit or narrower activations")
    if not mod.calibrated or mod.scale is None:
        raise CalibrationError(f"activation quantizer {name} is not calibrated; calibrate the model first")
    return float(mod.scale), int(mod.zero_point), spec.format.qmin, spec.format.qmax


def _weight_codes(name: str, mod: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer weight codes and their per-output-channel scale (shape ``(O,)``)."""
    wq = mod.weight_quant
    if wq is None or mod.input_quant is None:
        raise UnsupportedError(
            f"{name}: {'weights' if wq is None else 'the input'} of this layer are not quantized, so it runs in float; "
            "the integer engine needs weights and activations quantized (use a w8a8 / w4a8 recipe and do not exclude the layer)"
        )
    spec = wq.spec
    if spec.format.bits > 8:
        raise UnsupportedError(f"{name}: {spec.format.bits}-bit weights; the integer engine runs 8-bit or narrower weights")
    g = spec.granularity
    if not (isinstance(g, PerTensor) or (isinstance(g, PerChannel) and g.axis % mod.weight.ndim == 0)):
        raise UnsupportedError(f"{name}: {g.name} weights are not supported by the integer engine; use per-tensor or per-channel (axis 0)")
    scale, zp = wq.qparams(mod.weight)
    if bool((zp != 0).any()):
        raise UnsupportedError(f"{name}: the integer engine needs symmetric weights (zero point 0); use mapping: symmetric")
    codes = quantize(mod.weight.detach(), scale, zp, spec.format, g, spec.rounding).long()
    s = scale.double().reshape(-1).expand(mod.weight.shape[0]) if scale.numel() == 1 else scale.double().reshape(-1)
    return codes, s


# ----------------------------------------------------------------------------- kernels
class _IntKernels:
    """Integer-only kernels: im2col + int8 GEMM with int32 accumulation."""

    name = "int"

    @staticmethod
    def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """int8 ``a (M, K)`` @ int8 ``b (K, N)`` -> int32."""
        if a.shape[1] * 128 * 128 >= _ACC_LIMIT:
            raise UnsupportedError(f"a reduction over {a.shape[1]} terms can overflow int32 accumulators")
        try:
            return torch._int_mm(a.contiguous(), b.contiguous())
        except (RuntimeError, AttributeError):  # _int_mm missing or shape unsupported on this build
            return a.int() @ b.int()

    @staticmethod
    def _shifted(x: IntValue) -> tuple[torch.Tensor, int]:
        """int8 codes ``u = q - c`` (``c = 128`` for unsigned grids) and ``c - Z``, so ``n = u + (c - Z)``."""
        c = 128 if x.qmax > 127 else 0
        return (x.n + x.zero_point - c).to(torch.int8), c - x.zero_point

    def linear(self, mod, x: IntValue, w: torch.Tensor) -> torch.Tensor:
        u, corr = self._shifted(x)
        lead = u.shape[:-1]
        acc = self._mm(u.reshape(-1, u.shape[-1]), w.t().to(torch.int8)).long()
        acc = acc + corr * w.sum(1)
        return acc.reshape(*lead, w.shape[0])

    def conv(self, mod, x: IntValue, w: torch.Tensor) -> torch.Tensor:
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise UnsupportedError(f"padding_mode={mod.padding_mode!r} / padding={mod.padding!r}: the integer engine supports numeric zero padding")
        u, corr = self._shifted(x)
        one_d = u.ndim == 3
        if one_d:
            u, w = u.unsqueeze(2), w.unsqueeze(2)
        k = tuple(w.shape[2:])

        def pair(v, unit):
            return (unit, v[0]) if one_d else tuple(v)

        stride, pad, dil = pair(mod.stride, 1), pair(mod.padding, 0), pair(mod.dilation, 1)
        # pad with the code of real zero: u = Z - c
        u = F.pad(u, (pad[1], pad[1], pad[0], pad[0]), value=-corr)
        cols = u.unfold(2, dil[0] * (k[0] - 1) + 1, stride[0]).unfold(3, dil[1] * (k[1] - 1) + 1, stride[1])
        cols = cols[..., :: dil[0], :: dil[1]]  # (N, C, OH, OW, kh, kw)
        N, C, OH, OW = cols.shape[:4]
        G, O = mod.groups, w.shape[0]  # noqa: E741 - conv notation (O output channels)
        cg, og = C // G, O // G
        if cg == 1 and og == 1:  # depthwise: int32 multiply-add per channel
            wc = w.reshape(C, 1, 1, k[0], k[1]).int()
            acc = torch.zeros(N, C, OH, OW, dtype=torch.int32)
            for i in range(k[0]):
                for j in range(k[1]):
                    acc += cols[..., i, j].int() * wc[..., i, j]
            acc = acc.long()
        else:
            cols = cols.reshape(N, G, cg, OH, OW, k[0] * k[1]).permute(1, 0, 3, 4, 2, 5).reshape(G, N * OH * OW, cg * k[0] * k[1])
            wg = w.reshape(G, og, cg * k[0] * k[1]).to(torch.int8)
            outs = [self._mm(cols[g], wg[g].t()) for g in range(G)]
            acc = torch.cat(outs, 1).reshape(N, OH, OW, O).permute(0, 3, 1, 2).long()
        acc = acc + corr * w.reshape(O, -1).sum(1).reshape(1, O, 1, 1)
        return acc.squeeze(2) if one_d else acc

    @staticmethod
    def pool_sum(x: IntValue, kernel: tuple[int, int]) -> torch.Tensor:
        n = x.n
        N, C, H, W = n.shape
        return n.reshape(N, C, H // kernel[0], kernel[0], W // kernel[1], kernel[1]).sum((3, 5))

    @staticmethod
    def max_pool(n: torch.Tensor, kernel, stride) -> torch.Tensor:
        return n.unfold(2, kernel[0], stride[0]).unfold(3, kernel[1], stride[1]).amax((-1, -2))


class _Float64Kernels:
    """The simulation's own float ops evaluated in float64 on integer grids (exact below 2^53)."""

    name = "float64"

    @staticmethod
    def _exact(y: torch.Tensor) -> torch.Tensor:
        if bool((y.abs() >= 2**52).any()):
            raise UnsupportedError("a float64 accumulator exceeds 2^52; integer-exact simulation is not exact here")
        return torch.round(y).long()

    def linear(self, mod, x: IntValue, w: torch.Tensor) -> torch.Tensor:
        return self._exact(F.linear(x.n.double(), w.double()))

    def conv(self, mod, x: IntValue, w: torch.Tensor) -> torch.Tensor:
        return self._exact(mod._conv_forward(x.n.double(), w.double(), None))

    def pool_sum(self, x: IntValue, kernel: tuple[int, int]) -> torch.Tensor:
        return self._exact(F.avg_pool2d(x.n.double(), kernel, kernel) * (kernel[0] * kernel[1]))

    @staticmethod
    def max_pool(n: torch.Tensor, kernel, stride) -> torch.Tensor:
        return F.max_pool2d(n.double(), kernel, stride).long()


_KERNELS = {"int": _IntKernels, "float64": _Float64Kernels}


# ----------------------------------------------------------------------------- program
_RESHAPES = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous"}
_RELU = {F.relu, torch.relu}


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class IntegerProgram(nn.Module):
    """A calibrated lowbit model lowered to integer arithmetic (see the module docstring).

    ``backend="int"`` is the integer-only reference engine, ``"float64"`` the integer-exact
    simulation. Calling it returns float32 logits ``s * n`` of the last accumulator.
    """

    def __init__(self, model: nn.Module, backend: str = "int") -> None:
        super().__init__()
        if backend not in _KERNELS:
            raise UnsupportedError(f"backend must be one of {sorted(_KERNELS)}, got {backend!r}")
        gm = model if isinstance(model, fx.GraphModule) else trace(model)
        self.gm = gm.eval()
        self.kernels = _KERNELS[backend]()
        self.backend = backend
        self._modules_by_name = dict(gm.named_modules())
        self._check()
        self._cache: dict[str, tuple] = {}

    # -- static check: name the first op the engine cannot run
    def _check(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "call_module":
                mod = self._modules_by_name[node.target]
                if is_quant_module(mod):
                    _weight_codes(node.target, mod)
                    _act_params(f"{node.target}.input_quant", mod.input_quant)
                elif isinstance(mod, ActQuant):
                    _act_params(node.target, mod)
                elif isinstance(mod, QuantAdd):
                    for q in ("input_quant_a", "input_quant_b", "output_quant"):
                        _act_params(f"{node.target}.{q}", getattr(mod, q))
                elif not isinstance(mod, self._SIMPLE_MODULES):
                    raise self._unsupported(node, type(mod).__name__)
            elif node.op == "call_function" and not (
                node.target in _RESHAPES or node.target in _RELU or node.target in (F.relu6, getattr, operator.getitem)
                or node.target in (F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d)
            ):
                raise self._unsupported(node, getattr(node.target, "__name__", str(node.target)))
            elif node.op == "call_method" and node.target not in _RESHAPE_METHODS | {"size", "relu"}:
                raise self._unsupported(node, f".{node.target}()")

    _SIMPLE_MODULES = (nn.ReLU, nn.ReLU6, nn.Identity, nn.Dropout, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d)

    @staticmethod
    def _unsupported(node: fx.Node, what: str) -> UnsupportedError:
        hint = {
            "add": "quantize residual adds (PTQConfig quantize_adds: true)",
            "BatchNorm2d": "fold BatchNorm into the convolution (PTQConfig fold_bn: true)",
            **dict.fromkeys(("Linear", "Conv1d", "Conv2d"), "this layer was left in float (exclude / layers in the config); quantize it to run it here"),
        }.get(what, "replace it by a supported op (quantized conv / linear / add, ReLU, ReLU6, avg / max pooling, flatten) "
                    "or run this model on ONNX Runtime (lowbit export --format onnx)")
        where = f"layer {node.target!r}" if node.op == "call_module" else f"node {node.name!r}"
        return UnsupportedError(f"the integer engine cannot run {where} ({what}): {hint}")

    # -- value helpers
    def _act(self, name: str, mod: ActQuant, v) -> IntValue:
        S, Z, qmin, qmax = _act_params(name, mod)
        if isinstance(v, IntValue):
            q = requantize(v.n, v.s, S, Z, qmin, qmax)
        elif torch.is_tensor(v) and v.is_floating_point():
            q = quantize(v, mod.scale, mod.zero_point, mod.spec.format, mod.spec.granularity, mod.spec.rounding).long()
        else:
            raise UnsupportedError(f"{name}: cannot quantize a value of type {type(v).__name__}")
        return IntValue(q - Z, torch.tensor(S, dtype=torch.float64), Z, qmin, qmax)

    def _layer(self, name: str, mod: nn.Module, v) -> IntValue:
        key = name
        if key not in self._cache or self._cache[key][0] is not mod.weight._version:
            codes, s_w = _weight_codes(name, mod)
            self._cache[key] = (mod.weight._version, codes, s_w)
        _, codes, s_w = self._cache[key]
        x = self._act(f"{name}.input_quant", mod.input_quant, v)
        if isinstance(mod, QuantLinear):
            acc = self.kernels.linear(mod, x, codes)
        elif isinstance(mod, QuantConv2d | QuantConv1d):
            acc = self.kernels.conv(mod, x, codes)
        else:  # pragma: no cover - guarded by _check
            raise UnsupportedError(f"{name}: {type(mod).__name__}")
        s = x.s * s_w  # (O,)
        if mod.bias is not None:
            acc = acc + torch.round(mod.bias.detach().double() / s).long().reshape(-1, *([1] * (acc.ndim - 2)))
        s = s.reshape(1, -1, *([1] * (acc.ndim - 2)))
        if bool((acc.abs() >= _ACC_LIMIT).any()):
            raise UnsupportedError(f"{name}: int32 accumulator overflow (weights or bias too large for the input scale)")
        out = IntValue(acc, s)
        if mod.output_quant is not None:
            out = self._act(f"{name}.output_quant", mod.output_quant, out)
        return out

    def _add(self, name: str, mod: QuantAdd, a, b) -> IntValue:
        if not (isinstance(a, IntValue | torch.Tensor) and isinstance(b, IntValue | torch.Tensor)):
            return a + b
        va = self._act(f"{name}.input_quant_a", mod.input_quant_a, a)
        vb = self._act(f"{name}.input_quant_b", mod.input_quant_b, b)
        S, Z, qmin, qmax = _act_params(f"{name}.output_quant", mod.output_quant)
        ma, mb = float(va.s) / S, float(vb.s) / S
        r = 31 - int(torch.frexp(torch.tensor(max(ma, mb), dtype=torch.float64))[1])
        if r < 1:
            raise UnsupportedError(f"{name}: add operand scales are too far apart for 31-bit fixed point")
        A, B = round(ma * 2.0**r), round(mb * 2.0**r)
        q = torch.clamp(rshift_rne(A * va.n + B * vb.n, torch.tensor(r)) + Z, qmin, qmax)
        if mod.fused_relu:  # quantize(relu(s)) = max(quantize(s), Z)
            q = q.clamp(min=Z)
        return IntValue(q - Z, torch.tensor(S, dtype=torch.float64), Z, qmin, qmax)

    @staticmethod
    def _relu(v, six: bool = False):
        if not isinstance(v, IntValue):
            return F.relu6(v) if six else F.relu(v)
        n = v.n.clamp(min=0)
        if six:
            n = torch.minimum(n, torch.round(6.0 / v.s).long())
        return IntValue(n, v.s, v.zero_point, v.qmin, v.qmax)

    def _avg_pool(self, node, v, kernel, stride=None, adaptive=False):
        if not isinstance(v, IntValue):
            raise self._unsupported(node, "average pooling of a float tensor (quantize_adds: true quantizes pooling)")
        H, W = v.n.shape[-2:]
        if adaptive:
            oh, ow = _pair(kernel)
            oh, ow = oh or H, ow or W
            if H % oh or W % ow:
                raise self._unsupported(node, f"adaptive average pooling {H}x{W} -> {oh}x{ow} with unequal windows")
            kernel = (H // oh, W // ow)
        else:
            kernel = _pair(kernel)
            if stride is not None and _pair(stride) != kernel or H % kernel[0] or W % kernel[1]:
                raise self._unsupported(node, "average pooling with overlapping, padded or partial windows")
        if v.s.numel() != 1:
            raise self._unsupported(node, "average pooling of a per-channel accumulator (put an activation quantizer before it)")
        return IntValue(self.kernels.pool_sum(v, kernel), v.s / (kernel[0] * kernel[1]))

    def _max_pool(self, node, v, kernel, stride=None, padding=0):
        kernel = _pair(kernel)
        stride = _pair(stride) if stride else kernel
        if _pair(padding) != (0, 0):
            raise self._unsupported(node, "max pooling with padding")
        if not isinstance(v, IntValue):
            return F.max_pool2d(v, kernel, stride)
        return IntValue(self.kernels.max_pool(v.n, kernel, stride), v.s, v.zero_point, v.qmin, v.qmax)

    @staticmethod
    def _reshape(fn, v, *args, **kwargs):
        if not isinstance(v, IntValue):
            return fn(v, *args, **kwargs)
        s = v.s if v.s.numel() == 1 else fn(v.full_scale(), *args, **kwargs)
        return IntValue(fn(v.n, *args, **kwargs), s, v.zero_point, v.qmin, v.qmax)

    # -- interpreter
    def _call_module(self, node, mod, args):
        name = node.target
        if is_quant_module(mod):
            return self._layer(name, mod, args[0])
        if isinstance(mod, ActQuant):
            return self._act(name, mod, args[0])
        if isinstance(mod, QuantAdd):
            return self._add(name, mod, *args)
        if isinstance(mod, nn.ReLU | nn.ReLU6):
            return self._relu(args[0], six=isinstance(mod, nn.ReLU6))
        if isinstance(mod, nn.Identity | nn.Dropout):
            return args[0]
        if isinstance(mod, nn.Flatten):
            return self._reshape(torch.flatten, args[0], mod.start_dim, mod.end_dim)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return self._avg_pool(node, args[0], mod.output_size, adaptive=True)
        if isinstance(mod, nn.AvgPool2d):
            if mod.padding or mod.ceil_mode:
                raise self._unsupported(node, "average pooling with padding / ceil_mode")
            return self._avg_pool(node, args[0], mod.kernel_size, mod.stride)
        return self._max_pool(node, args[0], mod.kernel_size, mod.stride, mod.padding)  # nn.MaxPool2d (checked)

    def _call_function(self, node, fn, args, kwargs):
        if fn in _RESHAPES:
            return self._reshape(fn, *args, **kwargs)
        if fn in _RELU or fn is F.relu6:
            return self._relu(args[0], six=fn is F.relu6)
        if fn is F.adaptive_avg_pool2d:
            return self._avg_pool(node, args[0], args[1] if len(args) > 1 else kwargs["output_size"], adaptive=True)
        if fn is F.avg_pool2d:
            return self._avg_pool(node, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("stride"))
        if fn is F.max_pool2d:
            return self._max_pool(node, *args, **kwargs)
        if fn is getattr and isinstance(args[0], IntValue):
            return getattr(args[0].n, args[1])
        return fn(*args, **kwargs)

    def _call_method(self, node, args, kwargs):
        self_, *rest = args
        if node.target == "size":
            return (self_.n if isinstance(self_, IntValue) else self_).size(*rest)
        if node.target == "relu":
            return self._relu(self_)
        return self._reshape(lambda t, *a, **k: getattr(t, node.target)(*a, **k), self_, *rest, **kwargs)

    @torch.no_grad()
    def run(self, x: torch.Tensor):
        """Execute; returns the output :class:`IntValue` (or a float tensor if the graph ends in float)."""
        env: dict[fx.Node, object] = {}
        for node in self.gm.graph.nodes:
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            if node.op == "placeholder":
                env[node] = x
            elif node.op == "call_module":
                env[node] = self._call_module(node, self._modules_by_name[node.target], args)
            elif node.op == "call_function":
                env[node] = self._call_function(node, node.target, args, kwargs)
            elif node.op == "call_method":
                env[node] = self._call_method(node, args, kwargs)
            elif node.op == "get_attr":
                raise self._unsupported(node, f"parameter access {node.target}")
            elif node.op == "output":
                return args[0]
        raise UnsupportedError("the model graph has no output")  # pragma: no cover

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.run(x)
        return out.real() if isinstance(out, IntValue) else out


class IntegerEngine(NumpyRunner):
    """The integer-only reference engine (``backend="int"``), callable like a model (torch or numpy in).

    Raises :class:`~lowbit.errors.UnsupportedError` naming the first op it cannot run.
    """

    def __init__(self, model: nn.Module) -> None:
        self.program = IntegerProgram(model, backend="int")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x.detach().cpu().float())

    def run_numpy(self, x):
        return self.program(torch.from_numpy(x).float()).numpy()

    def run(self, x: torch.Tensor) -> IntValue:
        """The final integer accumulator and its scale."""
        return self.program.run(x)


def integer_exact(model: nn.Module) -> IntegerProgram:
    """lowbit's fake-quant simulation in integer-exact mode: bit-identical to :class:`IntegerEngine`.

    The returned module evaluates the layers' float ops in float64 on the integer grids with the
    engine's bias rounding and fixed-point requantization, so its logits equal the engine's (and,
    up to requantization rounding, the deployed int8 model's) exactly.
    """
    return IntegerProgram(model, backend="float64")
