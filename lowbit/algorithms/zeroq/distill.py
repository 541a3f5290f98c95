"""Distilled calibration data (ZeroQ, Cai et al. 2020) and its PTQ handler.

Random inputs ``x ~ N(0, 1)`` are optimized so that, at every BatchNorm layer ``l`` of the float
model, the batch statistics of the BN input match the stored running statistics:

    L(x) = sum_l ||mu_l(x) - mu_l||_2^2 + ||sigma_l(x) - sigma_l||_2^2

(``mu_l(x)``, ``sigma_l(x)``: per-channel mean / standard deviation over batch and space). The
optimized inputs then serve as the calibration set — no real image is used.

Example:
    >>> import torch, lowbit
    >>> from lowbit.zoo import load_model
    >>> x, loss = distill_data(load_model("fmnist-resnet"), samples=8, iters=5, batch_size=8)
    >>> x.shape, loss[-1] < loss[0]
    (torch.Size([8, 1, 28, 28]), True)
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ...errors import ConfigError
from ..ptq import quantize_ptq
from .config import ZeroQConfig


def distill_data(model: nn.Module, samples: int = 256, iters: int = 300, lr: float = 0.2, batch_size: int = 64,
                 input_shape: tuple[int, ...] = (1, 28, 28), seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """Inputs whose BN-layer batch statistics match ``model``'s running statistics; returns
    ``(inputs, loss per step of the first batch)``. Raises ConfigError for a model without BatchNorm."""
    model = copy.deepcopy(model).eval()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        raise ConfigError(f"{type(model).__name__} has no BatchNorm layers with running statistics; distilled (ZeroQ) data "
                          "needs them — calibrate on real inputs instead (PTQConfig with data=...)")
    for p in model.parameters():
        p.requires_grad_(False)
    stats: list[torch.Tensor] = []

    def hook(mod, args):
        x = args[0]
        dims = [0] + list(range(2, x.ndim))
        mu, sd = x.mean(dims), (x.var(dims, unbiased=False) + mod.eps).sqrt()
        stats.append(((mu - mod.running_mean) ** 2).sum() + ((sd - (mod.running_var + mod.eps).sqrt()) ** 2).sum())

    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    g = torch.Generator().manual_seed(seed)
    out, history = [], []
    try:
        with torch.enable_grad():
            for start in range(0, samples, batch_size):
                n = min(batch_size, samples - start)
                x = torch.randn(n, *input_shape, generator=g).requires_grad_(True)
                opt = torch.optim.Adam([x], lr=lr)
                sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
                for _ in range(iters):
                    stats.clear()
                    model(x)
                    loss = torch.stack(stats).sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    if start == 0:
                        history.append(float(loss.detach()))
                out.append(x.detach())
    finally:
        for h in handles:
            h.remove()
    return torch.cat(out), history


def quantize_zeroq(model: nn.Module, config: ZeroQConfig) -> tuple[nn.Module, dict]:
    """Handler: distill inputs from the float model's BN statistics, then PTQ; ``quantize_`` calibrates
    on the distilled inputs when no ``data`` is given (with ``data``, the real data wins)."""
    t0 = time.perf_counter()
    x, history = distill_data(model, config.samples, config.iters, config.lr, config.batch_size, config.input_shape, config.seed)
    seconds = time.perf_counter() - t0
    model, info = quantize_ptq(model, config)
    info.update(synthetic_data=x, distill={"samples": len(x), "loss_first": history[0], "loss_last": history[-1], "seconds": seconds})
    return model, info


def finetune_zeroq(model: nn.Module, config: ZeroQConfig, inputs: list[torch.Tensor]) -> dict:
    """Refiner (when ``fine_tune_epochs > 0``): distillation fine-tuning on the calibration inputs
    (the distilled ones when no real data was given) toward the float model's outputs."""
    from ..iterative import finetune_to_float

    r = finetune_to_float(model, inputs, epochs=config.fine_tune_epochs, lr=config.fine_tune_lr,
                          batch_size=config.batch_size, seed=config.seed)
    return {"fine_tune": r}
