"""GPTQ (Frantar et al. 2023): quantize a Linear weight column by column, spreading each column's rounding
error over the columns not yet quantized so that the layer's output on the calibration inputs changes least.

For a layer ``y = W x`` with calibration inputs ``X`` (rows = tokens) the objective per output row ``w`` is
``||(w - q) X^T||^2 = (w - q) H (w - q)^T`` with ``H = 2 X^T X / n``. Quantizing column ``j`` to ``q_j`` and
compensating optimally in the remaining columns ``F`` (the Optimal Brain Surgeon step) gives

    delta_F = - (w_j - q_j) / [H_F^-1]_jj * [H_F^-1]_{j, F}

GPTQ applies it to all rows at once, in a fixed column order, with the upper Cholesky factor ``U`` of ``H^-1``
(``[H_F^-1]_{j,F} / [H_F^-1]_jj = U_{j,F} / U_jj``), in blocks of ``block`` columns (lazy batch updates).
``act_order`` visits columns by decreasing ``diag(H)`` (the most-used inputs first). The grid (scale, zero
point per output row, or per output row and input group) is fixed before the sweep from the original weight
("static groups"), so the result is an ordinary per-channel / per-group integer weight.
"""

from __future__ import annotations

import torch

from ...config import QuantSpec
from ...errors import CalibrationError
from ...observe import make_observer
from ...quant import PerGroup, dequantize, quantize


def hessian(inputs: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``H = 2 X^T X / n`` over every row of the 2-D input batches (float64 accumulation); returns ``(H, n)``.

    Example:
        >>> import torch
        >>> H, n = hessian([torch.eye(3)])
        >>> n, H.diagonal().tolist()
        (3, [0.6666666666666666, 0.6666666666666666, 0.6666666666666666])
    """
    n = sum(x.shape[0] for x in inputs)
    if n == 0:
        raise CalibrationError("GPTQ needs calibration inputs: the layer saw no tokens")
    d = inputs[0].shape[-1]
    H = torch.zeros(d, d, dtype=torch.float64)
    for x in inputs:
        x = x.reshape(-1, d).double()
        H += x.T @ x
    return 2 * H / n, n


def grid_for(weight: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight's ``(scale, zero_point)`` from ``spec``'s observer (min-max / MSE ...) and granularity."""
    ob = make_observer(spec.observer, spec.granularity, **spec.observer_args)
    ob.update(weight.detach().float())
    return ob.qparams(spec.format, spec.mapping)


def _column_params(spec: QuantSpec, scale: torch.Tensor, zp: torch.Tensor, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column ``(rows, cols)`` views of the row / row-group parameters."""
    rows = scale.shape[0]
    if isinstance(spec.granularity, PerGroup):
        g = spec.granularity.size
        return scale.repeat_interleave(g, dim=1), zp.repeat_interleave(g, dim=1)
    s = scale.reshape(rows, 1).expand(rows, cols) if scale.numel() == rows else scale.reshape(1, 1).expand(rows, cols)
    z = zp.reshape(rows, 1).expand(rows, cols) if zp.numel() == rows else zp.reshape(1, 1).expand(rows, cols)
    return s, z


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, H: torch.Tensor, spec: QuantSpec, *, block: int = 128, damp: float = 0.01,
                  act_order: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """GPTQ-quantize a ``(out, in)`` weight with input Hessian ``H`` (see the module docstring).

    Returns ``(dequantized weight, scale, zero_point, info)``: the weight lies exactly on the ``spec`` grid
    given by ``(scale, zero_point)``; ``info`` holds the proxy loss ``sum (w - q) H (w - q)^T`` before
    (plain rounding) and after GPTQ.

    Example:
        >>> import torch
        >>> from lowbit.config import QuantSpec
        >>> from lowbit.quant import IntFormat, PerChannel
        >>> _ = torch.manual_seed(0); X = torch.randn(256, 16); W = torch.randn(4, 16)
        >>> spec = QuantSpec(format=IntFormat(bits=3), granularity=PerChannel(0))
        >>> H, _ = hessian([X])
        >>> Wq, s, z, info = gptq_quantize(W, H, spec)
        >>> info["loss_gptq"] < info["loss_rtn"]
        True
    """
    W = weight.detach().double().clone()
    rows, cols = W.shape
    scale, zp = grid_for(weight, spec)
    S, Z = _column_params(spec, scale.double(), zp.double(), cols)
    qmin, qmax = spec.format.qmin, spec.format.qmax
    H = H.double().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    def q_of(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return s * (torch.clamp(torch.round(w / s) + z, qmin, qmax) - z)

    W_orig = W.clone()
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(cols)
    inv = torch.argsort(perm)
    W, H, S, Z = W[:, perm], H[perm][:, perm], S[:, perm], Z[:, perm]
    lam = damp * float(H.diagonal().mean())
    H.diagonal().add_(lam)
    try:
        L = torch.linalg.cholesky(H)
        U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except RuntimeError:  # not positive definite even after damping: damp harder
        H.diagonal().add_(10 * lam + 1e-6)
        L = torch.linalg.cholesky(H)
        U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            q = q_of(w, S[:, i1 + i], Z[:, i1 + i])
            Q[:, i1 + i] = q
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    Q = Q[:, inv]
    Hp = H[inv][:, inv]  # damped H in the original order
    Hp.diagonal().sub_(lam)
    rtn = q_of(W_orig, S[:, inv], Z[:, inv])

    def loss(q: torch.Tensor) -> float:
        d = W_orig - q
        return float(((d @ Hp) * d).sum())

    # the result lies on the grid: quantize -> dequantize with the same params returns it exactly
    Qf = Q.float()
    codes = quantize(Qf, scale, zp, spec.format, spec.granularity)
    Qf = dequantize(codes, scale, zp, spec.granularity).to(weight.dtype)
    return Qf, scale, zp, {"loss_rtn": loss(rtn), "loss_gptq": loss(Q), "damp": lam}
