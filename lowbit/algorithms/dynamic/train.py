"""Joint training of a dynamic model and its bit controller, and its evaluation.

Per minibatch (``target`` = fraction of the reference BitOPs, :meth:`DynamicQuantModel.reference_bitops`)::

    sel    = onehot(argmax(z + n_t G)) - sg(s) + s,  s = softmax((z + n_t G) / tau_t)    (straight-through)
    logits = dyn(x) with the widths sel                z: controller logits, G: Gumbel(0, 1) noise
    C_j    = sum_l sum_k sel_jlk BitOPs_lk + fixed + controller      (the BitOPs of the widths taken)
    loss   = CE(logits, y)  [or distillation_loss(logits, teacher(x), y)]
             + reg_weight * (mean_j C_j / (target * reference) - 1)^2

One Adam step on everything: the float weights and biases, every candidate's LSQ steps, the
controller (its own learning rate, ``controller_lr``, default ``10 lr``). Learning rates follow a
half cosine per step, ``lr_t = lr (1 + cos(pi t / T)) / 2``; the temperature anneals geometrically,
``tau_t = tau_0 (tau_1 / tau_0)^(t / (T - 1))`` and the Gumbel noise linearly, ``n_t = n_0 + (n_1 - n_0)
t / (T - 1)``. With the default ``noise = (1, 0)`` training explores early and ends on the argmax choices
that inference takes (with the noise kept, the widths sampled in training and the argmax at inference
differ: on fmnist-resnet the budget was met in training, 0.19, and missed at inference, 0.165).
The regularizer is on the cost of the widths actually taken (its value is the measured BitOPs, its
gradient the straight-through one), so the budget holds for the argmax choices too; it is two-sided:
it also raises the cost of a model that spends less than the budget.

Cost: a dynamic layer computes, in training, each sample at its chosen candidate with autograd and at
every other candidate without (the straight-through gradient needs all ``K`` outputs): ``K`` forward ops
and one backward, about ``(K + 2) / 3`` times a static layer's work (measured on fmnist-resnet,
``K = 5``, batch 64, 2 threads: 0.51 s per step, 2.2x less than summing the candidates with autograd).

Example:
    >>> import torch
    >>> from lowbit.zoo.models import FmnistResNet
    >>> from lowbit.algorithms.dynamic import DynamicConfig, prepare
    >>> torch.manual_seed(0) and None
    >>> x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    >>> dyn = prepare(FmnistResNet(width=4).eval(), DynamicConfig(bits=(2, 4), hidden=8), [x])
    >>> hist = train_dynamic(dyn, (x, y), epochs=1, lr=1e-3, batch_size=32, target_bitops=0.5, progress=False)
    >>> r = evaluate_dynamic(dyn, (x, y))
    >>> len(hist["history"]), r["n"], r["min_bitops"] <= r["mean_bitops"] <= r["max_bitops"]
    (1, 64, True)
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from ..._progress import track
from ...errors import CalibrationError, ConfigError
from ..distill import task_loss
from ..qat.trainer import minibatches, resolve_device, split_batch
from .model import DynamicQuantModel, check_target


def _check_args(dyn: Any, epochs: Any, lr: Any, controller_lr: Any, batch_size: Any, target_bitops: Any, reg_weight: Any,
                tau: Any, seed: Any) -> tuple[float, float]:
    if not isinstance(dyn, DynamicQuantModel):
        raise ConfigError(f"train_dynamic needs a DynamicQuantModel (lowbit.algorithms.dynamic.prepare), got {type(dyn).__name__}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("seed", seed)):
        if not isinstance(v, int) or isinstance(v, bool) or (name != "seed" and v < 1):
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    for name, v in (("lr", lr), ("controller_lr", controller_lr)):
        if v is not None and not (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
            raise ConfigError(f"{name} must be a positive finite number, got {v!r}")
    if lr is None:
        raise ConfigError("lr must be a positive finite number, got None")
    if not (isinstance(reg_weight, int | float) and math.isfinite(reg_weight) and reg_weight >= 0):
        raise ConfigError(f"reg_weight must be a finite number >= 0, got {reg_weight!r}")
    try:
        t0, t1 = (float(t) for t in tau)
    except (TypeError, ValueError):
        raise ConfigError(f"tau must be a (start, end) pair of temperatures, got {tau!r}") from None
    if not (math.isfinite(t0) and t0 >= t1 > 0):
        raise ConfigError(f"tau must anneal from a start to a smaller or equal positive end, got {tau!r}")
    check_target(dyn, target_bitops)
    return t0, t1


def train_dynamic(
    dyn: DynamicQuantModel,
    train_data: Any,
    *,
    epochs: int = 3,
    lr: float = 1e-4,
    controller_lr: float | None = None,
    batch_size: int = 128,
    target_bitops: float = 0.5,
    reg_weight: float = 5.0,
    tau: tuple[float, float] = (5.0, 0.5),
    noise: tuple[float, float] = (1.0, 0.0),
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    distill_weight: float = 0.9,
    val_data: Any = None,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> dict:
    """Train ``dyn`` (network and controller) in place (see the module docstring).

    Args:
        dyn: a prepared :class:`DynamicQuantModel`.
        train_data: a lowbit ``TensorDataset``, an ``(inputs, labels)`` pair of tensors (both shuffled
            per epoch with ``seed``) or a sized iterable of ``(x, y)`` batches.
        target_bitops: average BitOPs budget, fraction of :meth:`DynamicQuantModel.reference_bitops`.
        tau: Gumbel-softmax temperature (start, end), annealed geometrically.
        noise: scale of the Gumbel noise (start, end), annealed linearly; ``(1, 1)``: plain Gumbel-softmax.
        teacher: the float model: distillation (``temperature``, ``distill_weight`` as in
            :func:`lowbit.distillation_loss`) instead of plain cross-entropy.
        val_data: evaluated with :func:`evaluate_dynamic` after every epoch when given.
        device: train on an accelerator (``cuda``, ``auto``); the models are back on the CPU after.

    Returns:
        ``{"history": [...], "seconds": s, "device": name}``; per epoch ``epoch, loss, task_loss, reg_loss,
        expected_fraction`` (mean ``E[BitOPs]`` / reference), ``sampled_fraction`` (mean BitOPs of the hard
        samples taken / reference), ``tau, lr, seconds`` and, with ``val_data``, ``val_accuracy``,
        ``val_fraction``.

    Raises:
        ConfigError: bad hyper-parameters, a target outside the reachable range, batches without labels
            when the loss needs them.
    """
    t0, t1 = _check_args(dyn, epochs, lr, controller_lr, batch_size, target_bitops, reg_weight, tau, seed)
    try:
        n0, n1 = (float(v) for v in noise)
    except (TypeError, ValueError):
        raise ConfigError(f"noise must be a (start, end) pair of Gumbel-noise scales, got {noise!r}") from None
    if not (math.isfinite(n0) and math.isfinite(n1) and n0 >= 0 and n1 >= 0):
        raise ConfigError(f"noise scales must be finite and >= 0, got {noise!r}")
    dev = resolve_device(device)
    if dev.type != "cpu":
        dyn.to(dev)
        if teacher is not None:
            teacher.to(dev)
    try:
        fork = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=fork):  # the Gumbel noise is seeded; the caller's RNG state is left alone
            torch.manual_seed(seed)
            return _train(dyn, train_data, dev, epochs=epochs, lr=float(lr), controller_lr=float(controller_lr or 10 * lr),
                          batch_size=batch_size, target=float(target_bitops), reg_weight=float(reg_weight), tau=(t0, t1), noise=(n0, n1),
                          teacher=teacher, temperature=temperature, distill_weight=distill_weight, val_data=val_data, seed=seed,
                          progress=progress)
    finally:
        if dev.type != "cpu":
            dyn.to("cpu")
            if teacher is not None:
                teacher.to("cpu")


def _train(dyn: DynamicQuantModel, data: Any, dev: torch.device, *, epochs: int, lr: float, controller_lr: float, batch_size: int,
           target: float, reg_weight: float, tau: tuple[float, float], noise: tuple[float, float], teacher: nn.Module | None,
           temperature: float,
           distill_weight: float, val_data: Any, seed: int, progress: bool) -> dict:
    ctrl = [p for p in dyn.controller.parameters() if p.requires_grad]
    net = [p for p in dyn.model.parameters() if p.requires_grad]
    opt = torch.optim.Adam([{"params": net, "lr": lr}, {"params": ctrl, "lr": controller_lr}])
    _, steps_per_epoch = minibatches(data, batch_size, seed, 0)
    total = max(1, steps_per_epoch * epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    ref = float(dyn.reference_bitops())
    if teacher is not None:
        teacher.eval()
    history: list[dict] = []
    step = 0
    t_all = time.perf_counter()
    for epoch in range(epochs):
        t_ep = time.perf_counter()
        dyn.train()
        batches, n = minibatches(data, batch_size, seed, epoch)
        sums = {"loss": 0.0, "task_loss": 0.0, "reg_loss": 0.0, "expected_fraction": 0.0, "sampled_fraction": 0.0}
        seen = 0
        for batch in track(batches, f"dynamic epoch {epoch + 1}/{epochs}", total=n) if progress else batches:
            x, y = split_batch(batch)
            x = x.to(dev)
            y = y.to(dev) if isinstance(y, torch.Tensor) else y
            if not torch.isfinite(x).all():
                raise CalibrationError("a training batch holds NaN/Inf values; clean the data first")
            frac = step / max(1, total - 1)
            dyn.tau = tau[0] * (tau[1] / tau[0]) ** frac
            dyn.noise = noise[0] + (noise[1] - noise[0]) * frac
            out = dyn(x)
            task = task_loss(out, x, y, teacher, temperature=temperature, weight=distill_weight)
            expected = dyn.expected_bitops(normalized=True).mean().detach()
            sampled = dyn.sampled_bitops(normalized=True).mean()
            reg = reg_weight * (sampled / target - 1) ** 2
            loss = task + reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            b = x.shape[0]
            for k, v in (("loss", loss), ("task_loss", task), ("reg_loss", reg), ("expected_fraction", expected)):
                sums[k] += float(v.detach()) * b
            sums["sampled_fraction"] += float(dyn.last_bitops.double().sum()) / ref
            seen += b
        dyn.eval()
        entry = {"epoch": epoch + 1, **{k: v / max(1, seen) for k, v in sums.items()}, "tau": dyn.tau, "noise": dyn.noise,
                 "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t_ep}
        if val_data is not None:
            r = evaluate_dynamic(dyn, val_data)
            entry["val_accuracy"], entry["val_fraction"] = r["accuracy"], r["mean_fraction"]
        history.append(entry)
    dyn.eval()
    if dyn.last_probs is not None:
        dyn.last_probs = dyn.last_probs.detach()  # drop the last step's graph
        dyn.last_sel = dyn.last_sel.detach()
    return {"history": history, "seconds": time.perf_counter() - t_all, "device": str(dev)}


@torch.no_grad()
def evaluate_dynamic(dyn: DynamicQuantModel, data: Any, *, batch_size: int = 256) -> dict:
    """Accuracy and measured per-sample BitOPs of ``dyn`` in eval mode (argmax choices, grouped inference).

    Returns a dict:
        ``accuracy`` (percent), ``n``;
        ``mean_bitops``, ``min_bitops``, ``max_bitops`` (per sample, from the hard choices taken,
        controller included), ``reference_bitops`` (static model at the largest candidate) and
        ``mean_fraction = mean_bitops / reference_bitops``;
        ``controller_bitops``, ``controller_share = controller_bitops / mean_bitops``, ``fixed_bitops``;
        ``layers`` (dynamic layer names) and ``layer_bits`` (name -> average chosen width);
        per-sample tensors ``bits`` ``[N, L]``, ``bitops`` ``[N]`` (int64), ``correct`` ``[N]`` (bool).

    Raises:
        ConfigError: data of an unknown shape, or batches without labels.
        UnsupportedError: empty data.
    """
    from ...errors import UnsupportedError

    if not isinstance(dyn, DynamicQuantModel):
        raise ConfigError(f"evaluate_dynamic needs a DynamicQuantModel, got {type(dyn).__name__}")
    was = dyn.training
    dyn.eval()
    dev = next(dyn.parameters()).device
    bits, bitops, correct = [], [], []
    try:
        for batch in minibatches(data, batch_size, shuffle=False, what="evaluation data")[0]:
            x, y = split_batch(batch)
            if y is None:
                raise ConfigError("evaluate_dynamic needs labelled batches: (inputs, labels)")
            out = dyn(x.to(dev))
            correct.append((out.argmax(-1) == y.to(dev)).cpu())
            bits.append(dyn.last_bits.cpu())
            bitops.append(dyn.last_bitops.cpu())
    finally:
        dyn.train(was)
    if not correct:
        raise UnsupportedError("evaluation data is empty")
    correct_t, bits_t, bitops_t = torch.cat(correct), torch.cat(bits), torch.cat(bitops)
    ref = dyn.reference_bitops()
    mean = float(bitops_t.double().mean())
    ctrl = dyn.controller_bitops()
    return {
        "accuracy": 100.0 * float(correct_t.double().mean()),
        "n": int(correct_t.numel()),
        "mean_bitops": mean,
        "min_bitops": int(bitops_t.min()),
        "max_bitops": int(bitops_t.max()),
        "reference_bitops": ref,
        "mean_fraction": mean / ref,
        "controller_bitops": ctrl,
        "controller_share": ctrl / mean,
        "fixed_bitops": dyn.fixed_bitops(),
        "layers": list(dyn.dynamic_layers),
        "layer_bits": {n: float(v) for n, v in zip(dyn.dynamic_layers, bits_t.double().mean(0).tolist(), strict=True)},
        "bits": bits_t,
        "bitops": bitops_t,
        "correct": correct_t,
    }
