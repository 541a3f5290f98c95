"""The bit controller: a two-layer MLP on the pooled feature map of the network's own first layers.

For a trunk feature map ``h`` of shape ``[B, C, H, W]`` (or ``[B, C]``)::

    v      = (pool_g(h) - mu) / sigma                    [B, C g^2]  (mu, sigma: per-feature calibration statistics)
    logits = W_2 relu(W_1 v + c_1) + c_2                 [B, L * K] -> [B, L, K]
    p_jl   = softmax_k(logits_jl)                        probability of candidate k at dynamic layer l

``pool_g`` averages ``h`` over a ``g x g`` grid of regions (``g = 1``: global average pooling; ``g = 2``
keeps where in the image the features are, which tells the controller more about the input's class).

The trunk (the first layers of the main network) is shared, not duplicated: it runs once per forward
as part of the network (:class:`~lowbit.algorithms.dynamic.DynamicQuantModel`), so the controller's
own cost is just the MLP. It runs in float: ``MACs = C g^2 * hidden + hidden * L * K``, counted at
``32 x 32`` BitOPs per MAC (:meth:`BitController.bitops`). The pooling's ``C * H * W`` additions and
the standardization (foldable into ``W_1``) are not counted, as no layer's additions are.

Example:
    >>> import torch
    >>> ctrl = BitController(trunk_channels=16, n_layers=5, K=3, hidden=8)
    >>> ctrl(torch.rand(4, 16, 7, 7)).shape, ctrl.macs(), ctrl.bitops()
    (torch.Size([4, 5, 3]), 248, 253952)
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError


class BitController(nn.Module):
    """``logits[B, n_layers, K] = MLP(standardize(GAP(trunk features)))`` (module docstring).

    Args:
        trunk_channels: ``C``, channels of the trunk's output.
        n_layers: dynamic layers ``L`` the controller decides for.
        K: candidate widths per layer.
        hidden: width of the MLP's hidden layer; ``0``: no MLP and no input, one learned logit vector per
            layer shared by every sample (``logits[j] = c``): a *static* mixed-precision choice found by the
            same Gumbel-softmax search and budget, the baseline that isolates what instance awareness adds.
        grid: pool the trunk features over a ``grid x grid`` split of the image (1: global average).
    """

    def __init__(self, trunk_channels: int, n_layers: int, K: int, hidden: int = 64, grid: int = 1) -> None:
        super().__init__()
        for name, v in (("trunk_channels", trunk_channels), ("n_layers", n_layers), ("K", K), ("hidden", hidden), ("grid", grid)):
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "hidden" else 1):
                raise ConfigError(f"{name} must be a positive integer{' (or 0: a static choice)' if name == 'hidden' else ''}, got {v!r}")
        self.trunk_channels, self.n_layers, self.K, self.hidden, self.grid = trunk_channels, n_layers, K, hidden, grid
        self.features = trunk_channels * grid * grid
        if hidden:
            self.fc1 = nn.Linear(self.features, hidden)
            self.fc2 = nn.Linear(hidden, n_layers * K)
        else:
            self.static_logits = nn.Parameter(torch.zeros(n_layers * K))
        self.register_buffer("feature_mean", torch.zeros(self.features))
        self.register_buffer("feature_std", torch.ones(self.features))

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Average pooling over a ``grid x grid`` split of the spatial dimensions: ``[B, C, H, W] -> [B, C grid^2]``
        (``grid = 1``: over every dimension after the channels, any rank)."""
        if h.ndim < 2:
            raise ConfigError(f"the controller needs trunk features of shape [batch, channels, ...], got {list(h.shape)}")
        if self.grid > 1:
            if h.ndim != 4 or min(h.shape[2:]) < self.grid:
                raise ConfigError(f"a controller grid of {self.grid}x{self.grid} needs [batch, channels, H, W] trunk features with "
                                  f"H, W >= {self.grid}, got {list(h.shape)}; use grid 1")
            return torch.nn.functional.adaptive_avg_pool2d(h, self.grid).flatten(1)
        return h.flatten(2).mean(2) if h.ndim > 2 else h

    @torch.no_grad()
    def set_feature_stats(self, pooled: torch.Tensor) -> None:
        """Standardize the pooled features with the per-channel mean / std of ``pooled`` ``[N, C]``
        (calibration data), so the MLP starts on inputs of unit scale whatever the trunk's."""
        self.feature_mean.copy_(pooled.mean(0))
        self.feature_std.copy_(pooled.std(0, unbiased=False).clamp_min(1e-6) if pooled.shape[0] > 1 else torch.ones_like(self.feature_std))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, n_layers, K]`` for trunk features ``h``."""
        if h.shape[1] != self.trunk_channels:
            raise ConfigError(f"the controller was built for {self.trunk_channels} trunk channels, got {h.shape[1]}")
        v = self.pool(h)
        if not self.hidden:
            return self.static_logits.reshape(1, self.n_layers, self.K).expand(v.shape[0], -1, -1)
        v = (v - self.feature_mean) / self.feature_std
        return self.fc2(torch.relu(self.fc1(v))).reshape(v.shape[0], self.n_layers, self.K)

    def macs(self) -> int:
        """MLP multiply-accumulates per sample: ``C g^2 * hidden + hidden * L * K`` (0 for a static choice)."""
        return self.features * self.hidden + self.hidden * self.n_layers * self.K

    def bitops(self) -> int:
        """``macs() * 32 * 32``: the controller runs in float."""
        return self.macs() * 32 * 32
