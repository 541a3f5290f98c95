"""ACIQ (Banner et al. 2019, "Post training 4-bit quantization of convolutional networks for
rapid-deployment"): analytical clipping plus per-channel bit allocation under a fixed bit budget.

Weights of output channel ``c`` are modelled as Laplace with scale ``b_c = mean|w_c - mean(w_c)|``;
at ``M`` bits the clip that minimises clipping + rounding noise is ``alpha_c(M) = b_c * a(M)`` with
``a(M)`` = :func:`lowbit.observe.histogram.aciq_alpha` (5.03 at 4 bits, ...). Each channel's MSE
``E_c(M) = mean((Q_M(w_c; alpha_c(M)) - w_c)^2)`` is measured for ``M`` in ``[min_bits, max_bits]``;
the bits ``M_c`` minimise ``sum_c E_c(M_c)`` subject to ``sum_c M_c = round(budget * C)``, solved
exactly by greedy marginal allocation (each ``E_c`` is convex-decreasing in ``M``: every extra bit
goes where it removes the most error). Channels live in an 8-bit container: the ``M_c``-bit grid
``S_c * k, |k| <= 2^(M_c - 1)`` is a subset of the int8 grid with the same scale, so the result runs
unchanged on int8 runtimes and through lowbit's packed format (stored at 8 bits).

Activations use the ``aciq`` observer (Laplace / Gaussian clip) of the activation spec, per tensor.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> w = torch.randn(4, 64, generator=g) * torch.tensor([[0.1], [1.0], [1.0], [5.0]])
    >>> bits, _ = allocate_bits(w, budget=4.0)
    >>> int(bits.sum()), bool(bits[3] > bits[0])   # 16 bits in all; the wide channel gets more
    (16, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ...errors import ConfigError
from ...nn.layers import is_quant_module
from ...observe.histogram import aciq_alpha
from ...quant import PerChannel
from ..ptq import PTQConfig, quantize_ptq


@dataclass(frozen=True, kw_only=True)
class ACIQConfig(PTQConfig):
    """Attributes (besides :class:`~lowbit.PTQConfig`'s; ``weight`` must be 8-bit per-channel — the container):
        bit_budget: average weight bits per output channel, per layer.
        min_bits, max_bits: range of a channel's width.
        prior: ``laplace`` or ``gaussian`` weight model for the analytical clip.
        clip: ``aciq`` (analytical clip from the prior) or ``mse`` (per channel and width, the clip
            among 40 fractions of max|w| with the least error — slower, usually better on conv weights).
    """

    kind: ClassVar[str] = "aciq"
    bit_budget: float = 4.0
    min_bits: int = 2
    max_bits: int = 8
    prior: str = "laplace"
    clip: str = "aciq"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight is None or self.weight.format.bits != 8 or not isinstance(self.weight.granularity, PerChannel):
            raise ConfigError("ACIQ bit allocation needs 8-bit per-channel weights as the container (weight: {bits: 8, granularity: per_channel})")
        if not (1 <= self.min_bits <= self.max_bits <= 8):
            raise ConfigError(f"need 1 <= min_bits <= max_bits <= 8, got {self.min_bits}..{self.max_bits}")
        if not (self.min_bits <= self.bit_budget <= self.max_bits):
            raise ConfigError(f"bit_budget {self.bit_budget} must lie in [min_bits, max_bits] = [{self.min_bits}, {self.max_bits}]")
        if self.clip not in ("aciq", "mse"):
            raise ConfigError(f"clip must be aciq or mse, got {self.clip!r}")
        if self.prior not in ("laplace", "gaussian"):
            raise ConfigError(f"prior must be laplace or gaussian, got {self.prior!r}")


def _channel_quant(w: torch.Tensor, alpha: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    qmax = 2 ** (bits - 1) - 1 if bits > 1 else 1
    s = (alpha / qmax).clamp_min(1e-12).unsqueeze(1)
    q = torch.clamp(torch.round(w / s), -(2 ** (bits - 1)), qmax)
    return q * s, s.squeeze(1)


def channel_clip(w: torch.Tensor, bits: int, prior: str = "laplace", clip: str = "aciq") -> torch.Tensor:
    """Per-row clip ``alpha`` of a 2-D weight at ``bits``: ACIQ's ``b * a(bits)`` (capped at max|w|) or the MSE-best fraction of max|w|."""
    wmax = w.abs().amax(1)
    if clip == "mse":
        fracs = torch.linspace(0.2, 1.0, 40, dtype=w.dtype)
        errs = torch.stack([((_channel_quant(w, wmax * f, bits)[0] - w) ** 2).mean(1) for f in fracs], 1)
        return wmax * fracs[errs.argmin(1)]
    centred = w - w.mean(1, keepdim=True)
    b = centred.abs().mean(1) if prior == "laplace" else centred.pow(2).mean(1).sqrt()
    return torch.minimum(b * aciq_alpha(1.0, 2**bits, prior), wmax)


def allocate_bits(w: torch.Tensor, budget: float, min_bits: int = 2, max_bits: int = 8, prior: str = "laplace",
                  clip: str = "aciq") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel bits (sum = ``round(budget * C)``) and the per-channel MSE table ``E[c, M - min_bits]``."""
    w = w.detach().flatten(1).double()
    C = w.shape[0]
    widths = list(range(min_bits, max_bits + 1))
    err = torch.stack([((_channel_quant(w, channel_clip(w, m, prior, clip), m)[0] - w) ** 2).mean(1) for m in widths], 1)
    bits = torch.full((C,), min_bits, dtype=torch.long)
    total = round(budget * C)
    for _ in range(total - int(bits.sum())):
        idx = bits - min_bits
        gain = torch.where(bits < max_bits, err.gather(1, idx[:, None]).squeeze(1) - err.gather(1, (idx + 1).clamp_max(len(widths) - 1)[:, None]).squeeze(1),
                           torch.full((C,), -1.0, dtype=err.dtype))
        c = int(gain.argmax())
        if gain[c] < 0:
            break
        bits[c] += 1
    return bits, err


@torch.no_grad()
def quantize_aciq(model: nn.Module, config: ACIQConfig) -> tuple[nn.Module, dict]:
    """Handler: PTQ with the 8-bit container, then per-layer ACIQ bit allocation written into the weights
    (pinned qparams, so export / packing / the integer engine see exactly the allocated grids)."""
    model, info = quantize_ptq(model, config)
    alloc = {}
    for name, m in model.named_modules():
        if not is_quant_module(m) or m.weight_quant is None or m.weight_quant.spec != config.weight:
            continue  # layers given another spec by an override keep it
        bits, _ = allocate_bits(m.weight, config.bit_budget, config.min_bits, config.max_bits, config.prior, config.clip)
        w = m.weight.detach().flatten(1).double()
        new = torch.empty_like(w)
        scales = torch.empty(w.shape[0], dtype=torch.float64)
        for k in bits.unique().tolist():
            sel = bits == k
            alpha = channel_clip(w[sel], k, config.prior, config.clip)
            new[sel], scales[sel] = _channel_quant(w[sel], alpha, k)
        scale = scales.float()
        codes = torch.round(new / scales[:, None]).float()
        m.weight.copy_((codes * scale[:, None]).reshape(m.weight.shape))  # fp32 products, as fake-quant computes them
        # on the int8 grid with the same scale the codes are exactly the k-bit codes
        m.weight_quant.set_qparams(m.weight, scale.reshape(m.weight_quant.spec.granularity.param_shape(m.weight.shape)),
                                   torch.zeros(scale.shape, dtype=torch.int32).reshape(m.weight_quant.spec.granularity.param_shape(m.weight.shape)))
        alloc[name] = {"mean_bits": float(bits.float().mean()), "histogram": {int(k): int((bits == k).sum()) for k in bits.unique()}}
    info["bit_allocation"] = alloc
    return model, info
