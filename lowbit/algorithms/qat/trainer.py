"""``lowbit.train``: the small trainer for QAT (and any fine-tuning of a lowbit model).

Per minibatch: ``loss = CE(model(x), y)`` — or :func:`~lowbit.algorithms.distill.distillation_loss`
against ``teacher(x)`` — plus every trainable quantizer's regularization (PACT's ``alpha^2``
decay); one optimizer step; the learning rate follows a half cosine per step,
``lr_t = lr (1 + cos(pi t / T)) / 2`` over all ``T`` steps; quantizers that follow the schedule
(DSQ) get the progress ``t / T``. Weight decay applies to layer weights only, never to biases or
quantizer parameters.

Checkpoint / resume: with ``checkpoint=path`` the model, optimizer, scheduler, epoch and history
are written atomically after every epoch (``torch.save`` of tensors and plain values; read back
with ``weights_only=True``, mapped to the CPU). A later call with the same path resumes after the last finished
epoch, so an interrupted run loses only the epoch in progress; shuffling depends on
``(seed, epoch)`` only, so a resumed run sees the same batches as an uninterrupted one. A
checkpoint of another model or recipe is refused (its fingerprint — parameter names and shapes
plus the caller's ``fingerprint`` dict — must match).

Device: ``device="cuda"`` (or ``"cuda:1"``, ``"auto"``) moves the model (and the teacher) to that device
for the training loop, feeds it each minibatch there (a tensor dataset is moved once, up front), and
moves both back to the CPU at the end, so calibration before and ``convert`` / export after run
where they always do. The arithmetic is the same; results differ from a CPU run only by float
rounding order. A device PyTorch cannot see is a :class:`~lowbit.errors.ConfigError`.

Example:
    >>> import torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> torch.manual_seed(0) and None
    >>> x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    >>> cfg = lowbit.QATConfig.wrap(lowbit.load_recipe("w4a8"), epochs=2, lr=1e-3)
    >>> q = lowbit.quantize_(FmnistMLP(), cfg, data=[x])
    >>> r = lowbit.train(q, (x, y), epochs=2, lr=1e-3, batch_size=64)
    >>> [h["epoch"] for h in r["history"]], r["history"][1]["loss"] < r["history"][0]["loss"]
    ([1, 2], True)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..._progress import track
from ...errors import CalibrationError, ConfigError
from ...export.checkpoint import CheckpointError
from ...nn.learned import LearnedQuant
from ..distill import task_loss

FORMAT = "lowbit-train-checkpoint"
VERSION = 1


def minibatches(data: Any, batch_size: int, seed: int = 0, epoch: int = 0, *, shuffle: bool = True,
                what: str = "training data") -> tuple[Iterable, int | None]:
    """Minibatches of one pass over ``data`` and their count: a lowbit ``TensorDataset``, an ``(inputs,
    labels)`` tensor pair or a tensor of inputs is cut into ``batch_size`` slices, in an order shuffled by a
    generator seeded with ``(seed, epoch)`` (``shuffle=False``: in order); any other sized iterable of
    batches is iterated as it is (it shuffles itself, e.g. a DataLoader; with ``shuffle=False`` an unsized
    iterable too, count ``None``). Shared by the QAT and dynamic trainers and their evaluations.

    Example:
        >>> x, y = torch.arange(5.0), torch.arange(5)
        >>> batches, n = minibatches((x, y), 2, shuffle=False)
        >>> n, [b[1].tolist() for b in batches]
        (3, [[0, 1], [2, 3], [4]])

    Raises:
        ConfigError: inputs and labels of different lengths, or data of an unknown kind (``what`` names it).
    """
    if hasattr(data, "images") and hasattr(data, "labels"):
        data = (data.images, data.labels)
    pair = isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
    if pair or isinstance(data, torch.Tensor):
        x = data[0] if pair else data
        if pair and x.shape[0] != data[1].shape[0]:
            raise ConfigError(f"inputs and labels differ in length: {x.shape[0]} vs {data[1].shape[0]}")
        if shuffle:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(x.shape[0], generator=g).to(x.device)
            cuts = [order[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]
        else:
            cuts = [slice(i, i + batch_size) for i in range(0, x.shape[0], batch_size)]
        gen = ((data[0][c], data[1][c]) for c in cuts) if pair else (data[c] for c in cuts)
        return gen, len(cuts)
    try:
        return data, len(data)
    except TypeError:
        pass
    if not shuffle:  # an evaluation pass can stream batches of unknown count (a generator)
        try:
            return iter(data), None
        except TypeError:
            pass
    raise ConfigError(f"{what} must be a lowbit TensorDataset, an (inputs, labels) pair of tensors, or a sized "
                      f"iterable of batches (e.g. a DataLoader); got {type(data).__name__}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The training device: ``None`` / ``"cpu"`` is the CPU, ``"auto"`` a CUDA GPU when PyTorch sees one
    (else the CPU), ``"cuda"`` / ``"cuda:N"`` / ``"mps"`` that accelerator, refused when it is absent.

    Example:
        >>> resolve_device(None), resolve_device("cpu")
        (device(type='cpu'), device(type='cpu'))
    """
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for but PyTorch sees no CUDA GPU here (torch.cuda.is_available() is "
                              "False: a CPU build of torch, or no driver); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} does not exist: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"device {device!r} was asked for but the MPS backend is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; use cpu, cuda, cuda:N, mps or auto")
    return dev


def split_batch(batch: Any, transform_fn: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, labels or None)`` of one batch (after ``transform_fn``): a list / tuple gives its first two
    items, anything else is inputs without labels.

    >>> split_batch((torch.zeros(2), torch.ones(2)))[1].tolist(), split_batch(torch.zeros(2))[1]
    ([1.0, 1.0], None)
    """
    if transform_fn is not None:
        batch = transform_fn(batch)
    if isinstance(batch, list | tuple):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _fingerprint(model: nn.Module, extra: dict | None) -> dict:
    shapes = sorted((k, list(v.shape)) for k, v in model.state_dict().items())
    digest = hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]
    return {"structure": digest, **(extra or {})}


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path, fingerprint: dict) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one error for the user
        raise CheckpointError(f"cannot read training checkpoint {path}: {type(e).__name__}: {e}; delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lowbit training checkpoint; pass another --checkpoint path")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{path} was written by a newer lowbit (version {state['version']} > {VERSION})")
    theirs = state.get("fingerprint", {})
    diff = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
    if diff:
        detail = "; ".join(f"{k}: checkpoint {_short(theirs.get(k))} vs this run {_short(fingerprint.get(k))}" for k in diff)
        raise CheckpointError(f"{path} belongs to another model or recipe ({detail}); use another checkpoint path or delete it")
    return state


def _short(v: Any) -> str:
    s = json.dumps(v, default=str, sort_keys=True)
    return s if len(s) <= 80 else s[:77] + "..."


@torch.no_grad()
def _accuracy(model: nn.Module, data: Any) -> float:
    from ...api import evaluate

    return evaluate(model, data)


def train(
    model: nn.Module,
    data: Any,
    *,
    epochs: int = 3,
    lr: float = 1e-4,
    batch_size: int = 128,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    distill_weight: float = 0.9,
    val_data: Any = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    fingerprint: dict | None = None,
    seed: int = 0,
    transform_fn: Callable[[Any], Any] | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    step_hook: Callable[[int, int], None] | None = None,
    distributed: bool | None = None,
    comm: str | None = None,
    comm_error_feedback: bool | None = None,
) -> dict:
    """Train ``model`` in place (see the module docstring). Returns ``{"history": [...], "seconds": s,
    "resumed_from": epoch or None, "device": name}``; each history entry has ``epoch, loss, lr, seconds``
    and ``val_accuracy`` when ``val_data`` is given. ``device`` trains on an accelerator (module
    docstring); the model is back on the CPU when this returns. ``step_hook(step, total)``, when given, runs
    before every optimizer step's forward pass (``step`` counts from 0 over the whole run, ``total`` steps in
    all) — e.g. a pruning schedule that updates the masks as training goes.

    Data-parallel training (``torchrun``): with a ``torch.distributed`` process group of N > 1 processes up
    (``distributed=None`` detects it; ``True`` joins the launcher's group or fails; ``False`` trains
    alone), the model is wrapped in ``DistributedDataParallel`` and every rank takes its slice of each
    *global* minibatch of ``batch_size`` samples (``tensor_split`` over ranks; every rank draws the same
    ``(seed, epoch)`` order, so a tensor dataset is cut identically everywhere). Rank ``r``'s loss is
    scaled by ``N n_r / n`` before DDP averages the gradients, so the step equals the one-process step on
    the whole minibatch (up to float summation order) even when the last minibatch does not split evenly:
    ``(1/N) sum_r (N n_r / n) grad L_r = grad (1/n) sum_i l_i``; a last minibatch of fewer than N samples is
    skipped on every rank. Layers whose forward depends on the batch (BatchNorm in train mode) see only the
    rank's slice, and their running statistics are rank 0's (DDP broadcasts buffers); QAT folds BatchNorm
    before training, so this does not arise there. Parameters and buffers (LSQ steps,
    observers, BatchNorm statistics) start from rank 0's and DDP keeps them in step; every rank must
    agree on the model structure, hyper-parameters (incl. distillation and weight decay) and data size
    before the first step
    (:func:`lowbit.distributed.agree`). Only rank 0 writes the checkpoint; since it holds the plain
    model, optimizer and step, a run resumes with any number of processes. ``comm`` sends quantized
    gradients instead of fp32 (``"terngrad"``, ``"ternary"``, ``"int8"``, ``"int4"``, ``"sign"``;
    :mod:`lowbit.distributed.comm`, error feedback per ``comm_error_feedback``, default per method) and
    the result's ``distributed.comm`` counts the bytes sent. A peer that dies makes the others stop with
    a :class:`~lowbit.errors.DistributedError` naming the last complete checkpoint.
    The result also holds ``step_losses``: the loss of the first 32 steps (over the global minibatch).

    Raises:
        ConfigError: bad hyper-parameters, data of an unknown shape, batches without labels when the
            loss needs them (no teacher, or ``distill_weight < 1``).
        CheckpointError: ``checkpoint`` is unreadable or belongs to another model / recipe.
        DistributedError: ``distributed=True`` without a launcher, ranks that disagree, a dead peer.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("seed", seed)):
        if not isinstance(v, int) or isinstance(v, bool) or (name != "seed" and v < 1):
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a positive finite number, got {lr!r}")
    if optimizer not in ("adam", "sgd"):
        raise ConfigError(f"optimizer must be adam or sgd, got {optimizer!r}")
    if not weight_decay >= 0:
        raise ConfigError(f"weight_decay must be >= 0, got {weight_decay!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameter (every requires_grad is False)")
    dist_on = use_distributed(distributed, comm)
    dev = resolve_device(device)
    if dev.type != "cpu":
        model.to(dev)
        if teacher is not None:
            teacher.to(dev)
        if hasattr(data, "images") and hasattr(data, "labels"):
            data = (data.images, data.labels)
        if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            data = (data[0].to(dev), data[1].to(dev))
        elif isinstance(data, torch.Tensor):
            data = data.to(dev)
    try:
        return _train(model, data, dev, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, weight_decay=weight_decay,
                      teacher=teacher, temperature=temperature, distill_weight=distill_weight, val_data=val_data, checkpoint=checkpoint,
                      resume=resume, fingerprint=fingerprint, seed=seed, transform_fn=transform_fn, progress=progress,
                      step_hook=step_hook, dist_on=dist_on, comm=comm, comm_error_feedback=comm_error_feedback)
    finally:
        if dev.type != "cpu":
            model.to("cpu")
            if teacher is not None:
                teacher.to("cpu")


def _train(model: nn.Module, data: Any, dev: torch.device, *, epochs: int, lr: float, batch_size: int, optimizer: str,
           weight_decay: float, teacher: nn.Module | None, temperature: float, distill_weight: float, val_data: Any,
           checkpoint: str | os.PathLike | None, resume: bool, fingerprint: dict | None, seed: int,
           transform_fn: Callable[[Any], Any] | None, progress: bool, step_hook: Callable[[int, int], None] | None = None,
           dist_on: bool = False, comm: str | None = None, comm_error_feedback: bool | None = None) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    quant_params = {id(p) for m in model.modules() if isinstance(m, LearnedQuant) for p in m.parameters(recurse=False)}
    decay = [p for n, p in model.named_parameters() if p.requires_grad and id(p) not in quant_params and n.endswith("weight")]
    rest = [p for p in params if all(p is not d for d in decay)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    opt = (torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True) if optimizer == "sgd" else torch.optim.AdamW(groups, lr=lr)
           if weight_decay else torch.optim.Adam(groups, lr=lr))
    _, steps_per_epoch = minibatches(data, batch_size, seed, 0)
    total = max(1, steps_per_epoch * epochs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    learned = [m for m in model.modules() if isinstance(m, LearnedQuant)]
    fp = _fingerprint(model, {**(fingerprint or {}), "epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer})
    path = Path(checkpoint) if checkpoint is not None else None
    history: list[dict] = []
    start, resumed = 0, None
    if path is not None and resume and path.exists():
        from ...distributed.runtime import together

        state = together(lambda: _load(path, fp), f"reading the checkpoint {path}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start = list(state["history"]), int(state["epoch"])
        resumed = start
    if teacher is not None:
        teacher.eval()
    net, hook, world, me = model, None, 1, 0
    if dist_on:
        setup = {"weight_decay": weight_decay, "teacher": teacher is not None, "temperature": temperature,
                 "distill_weight": distill_weight, "transform_fn": transform_fn is not None}
        net, hook = _wrap_ddp(model, dev, fp, start, steps_per_epoch, _n_samples(data), comm, comm_error_feedback, seed, setup)
        world, me = dist.get_world_size(), dist.get_rank()
    main = me == 0
    step_losses: list[float] = []
    t_all = time.perf_counter()
    guard = _guard(dist_on, path)
    with guard:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            model.train()
            batches, n = minibatches(data, batch_size, seed, epoch)
            task_sum = torch.zeros((), dtype=torch.float64)
            reg_sum, seen = 0.0, 0
            it = track(batches, f"epoch {epoch + 1}/{epochs}", total=n) if progress and main else batches
            for batch in it:
                x, y = split_batch(batch, transform_fn)
                if not torch.isfinite(x).all():  # checked on the global batch: every rank raises alike
                    raise CalibrationError("a training batch holds NaN/Inf values; clean the data first")
                n_all = x.shape[0]
                if n_all < world:  # a last minibatch smaller than the world: every rank skips it alike
                    continue
                if world > 1:
                    lo, hi = _share(n_all, world, me)
                    x, y = x[lo:hi], (y[lo:hi] if isinstance(y, torch.Tensor) else y)
                if dev.type != "cpu":
                    x = x.to(dev, non_blocking=True)
                    y = y.to(dev, non_blocking=True) if isinstance(y, torch.Tensor) else y
                for m in learned:
                    m.set_progress(sched.last_epoch / total)
                if step_hook is not None:
                    step_hook(sched.last_epoch, total)
                out = net(x)
                task = task_loss(out, x, y, teacher, temperature=temperature, weight=distill_weight)
                loss = task * (x.shape[0] * world / n_all)
                regs = [r for m in learned if (r := m.regularization()) is not None]
                reg = torch.stack(regs).sum() if regs else None
                if reg is not None:
                    loss = loss + reg
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step_task = task.detach().double().cpu() * x.shape[0]
                if world > 1:
                    dist.all_reduce(step_task)
                task_sum += step_task
                reg_value = float(reg.detach()) if reg is not None else 0.0
                reg_sum += reg_value * n_all
                seen += n_all
                if len(step_losses) < 32 and start == 0:
                    step_losses.append(float(step_task) / n_all + reg_value)
            model.eval()
            entry = {"epoch": epoch + 1, "loss": (float(task_sum) + reg_sum) / max(1, seen), "lr": opt.param_groups[0]["lr"],
                     "seconds": time.perf_counter() - t0}
            if val_data is not None:
                entry["val_accuracy"] = _accuracy(model.cpu(), val_data)
                model.to(dev)
            history.append(entry)
            if path is not None:
                state = {"format": FORMAT, "version": VERSION, "fingerprint": fp, "epoch": epoch + 1, "history": history,
                         "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
                if dist_on:  # rank 0 writes; every rank learns whether it could, and waits for the file
                    from ...distributed.runtime import together

                    together(lambda st=state: _save(path, st) if main else None, f"writing the checkpoint {path}")
                else:
                    _save(path, state)
    model.eval()
    out_info = {"history": history, "seconds": time.perf_counter() - t_all, "resumed_from": resumed, "device": str(dev),
                "step_losses": step_losses}
    if dist_on:
        out_info["distributed"] = {"world_size": world, "rank": me, "backend": dist.get_backend(),
                                   "comm": hook.stats() if hook is not None else {"method": "fp32 (DDP all-reduce)"}}
        del net
    return out_info


def _n_samples(data: Any) -> int | None:
    """Samples in ``data`` (tensors / lowbit datasets), or batches of a sized iterable; ``None`` if unknown."""
    if hasattr(data, "images"):
        return int(data.images.shape[0])
    if isinstance(data, torch.Tensor):
        return int(data.shape[0])
    if isinstance(data, tuple) and data and isinstance(data[0], torch.Tensor):
        return int(data[0].shape[0])
    try:
        return len(data)
    except TypeError:
        return None


def _share(n: int, world: int, r: int) -> tuple[int, int]:
    """Rank ``r``'s slice ``[lo, hi)`` of a global minibatch of ``n`` samples (``torch.tensor_split`` sizes:
    the first ``n % world`` ranks get one more).

    >>> [_share(5, 2, r) for r in range(2)]
    [(0, 3), (3, 5)]
    """
    q, extra = divmod(n, world)
    lo = r * q + min(r, extra)
    return lo, lo + q + (1 if r < extra else 0)


def use_distributed(distributed: bool | None, comm: str | None) -> bool:
    """Whether :func:`train` runs data-parallel (see its ``distributed`` and ``comm`` arguments): checks ``comm``
    names a codec and has processes to run between; ``distributed=True`` joins the launcher's group.

    >>> use_distributed(None, None)
    False
    """
    from ...distributed import runtime as rt
    from ...distributed.comm import METHODS

    if comm is not None and comm not in METHODS:
        raise ConfigError(f"comm must be one of {list(METHODS)} (the gradient codec between processes), got {comm!r}")
    if distributed not in (None, True, False):
        raise ConfigError(f"distributed must be true, false or null (auto), got {distributed!r}")
    if distributed is None:
        on = rt.active()
    elif distributed:
        rt.init_distributed()
        on = rt.active()
    else:
        on = False
    if comm is not None and not on:
        raise ConfigError(f"comm={comm!r} compresses the gradients DDP exchanges between processes, but this run is not "
                          "distributed; start it with torchrun --nproc-per-node N (N > 1) or drop comm")
    return on


def _guard(dist_on: bool, path: Path | None):
    from contextlib import nullcontext

    if not dist_on:
        return nullcontext()
    from ...distributed.runtime import collective_guard

    return collective_guard("training", checkpoint=path)


def _wrap_ddp(model: nn.Module, dev: torch.device, fp: dict, start: int, steps: int, samples: int | None, comm: str | None,
              comm_error_feedback: bool | None, seed: int, setup: dict):
    """``DistributedDataParallel(model)`` after every rank agreed on the setup; the gradient hook when ``comm``."""
    from torch.nn.parallel import DistributedDataParallel

    from ...distributed.runtime import agree, collective_guard

    agree({"fingerprint": fp, "start_epoch": start, "steps_per_epoch": steps, "samples": samples, "comm": comm,
           "comm_error_feedback": comm_error_feedback, "seed": seed, **setup}, "training setup")
    with collective_guard("wrapping the model in DistributedDataParallel"):
        # static_graph: the same parameters take part in every step (a quantizer parameter a method never
        # uses is found once, not searched for at every step as find_unused_parameters would)
        ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids, static_graph=True)
    hook = None
    if comm is not None:
        from ...distributed.comm import register

        hook = register(ddp, method=comm, error_feedback=comm_error_feedback, seed=seed)
    return ddp, hook

