"""The process group lowbit runs on: PyTorch's own ``torch.distributed`` (started by ``torchrun``).

lowbit never spawns or connects processes itself: ``torchrun --nproc-per-node N -m lowbit qat ...`` (or any
launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``) starts the processes and
:func:`init_distributed` joins them into one group — gloo on CPU, NCCL when the ranks train on CUDA GPUs.
Everything else in :mod:`lowbit.distributed` is collectives on that group:

* :func:`agree` — every rank must hold the same value (a config, the data size); a mismatch fails on every
  rank with the same message, before any training step.
* :func:`collective_guard` — a collective that breaks because a peer died (or timed out) becomes a
  :class:`~lowbit.errors.DistributedError` that says so, instead of a backend traceback.

Without a process group every helper is the one-process identity (rank 0 of 1), so the same code runs
unchanged in a plain ``python`` process.

Example:
    >>> rank(), world_size(), is_main(), active()
    (0, 1, True, False)
    >>> agree({"lr": 1e-3}, "config")   # one process agrees with itself
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError, DistributedError

ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is up in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the process that prints, writes checkpoints and result files."""
    return rank() == 0


def active() -> bool:
    """A process group of more than one process is up (data-parallel work must be split and synced)."""
    return world_size() > 1


def launched() -> bool:
    """The environment of a launcher (``torchrun``) is present: ``WORLD_SIZE`` and friends are set."""
    return all(k in os.environ for k in ENV)


def init_distributed(backend: str = "auto", timeout_s: float = 600.0) -> dict:
    """Join the process group ``torchrun`` set up (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``
    in the environment). ``backend="auto"`` is NCCL when CUDA GPUs are visible and ``LOCAL_RANK`` picks one,
    else gloo. A collective that waits longer than ``timeout_s`` (a dead peer) fails instead of hanging.
    Idempotent: with a group already up it only reports it.

    With NCCL, CPU tensors go over gloo in the same group (``"cpu:gloo,cuda:nccl"``).

    Returns ``{"rank", "world_size", "backend"}``.

    Raises:
        DistributedError: the launcher's environment is missing (not started by ``torchrun``), or the
            rendezvous fails.
        ConfigError: unknown backend or a non-positive timeout.
    """
    if backend not in ("auto", "gloo", "nccl"):
        raise ConfigError(f"backend must be auto, gloo or nccl, got {backend!r}")
    if isinstance(timeout_s, bool) or not (isinstance(timeout_s, int | float) and 0 < timeout_s < float("inf")):
        raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if not is_initialized():
        missing = [k for k in ENV if k not in os.environ]
        if missing:
            raise DistributedError(f"no process group to join: {', '.join(missing)} not set; start the processes with "
                                   "torchrun --nproc-per-node N -m lowbit ... (or set the torch.distributed env:// variables)")
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() and "LOCAL_RANK" in os.environ else "gloo"
        if backend == "nccl":
            # CPU tensors (observer statistics, loss sums, agreement) still travel over gloo: NCCL has no CPU path
            backend = "cpu:gloo,cuda:nccl"
        try:
            if backend != "gloo":
                if not torch.cuda.is_available():
                    raise RuntimeError("NCCL needs CUDA GPUs and PyTorch sees none; use backend gloo")
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout_s)))
        except (RuntimeError, ValueError) as e:
            raise DistributedError(f"cannot join the process group ({backend}, {os.environ['MASTER_ADDR']}:"
                                   f"{os.environ['MASTER_PORT']}): {_first_line(e)}") from None
    return {"rank": rank(), "world_size": world_size(), "backend": dist.get_backend()}


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if is_initialized():
        dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


@contextmanager
def collective_guard(what: str, checkpoint: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a collective's backend failure inside the block into a :class:`DistributedError` naming
    ``what`` was running and where the last complete checkpoint is. Without a process group it is a no-op.

    >>> with collective_guard("a test"):
    ...     pass
    """
    if not active():
        yield
        return
    try:
        yield
    except DistributedError:
        raise
    except (RuntimeError, dist.DistBackendError) as e:
        name = type(e).__name__
        text = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip()).split(". This is typically")[0]
        if not (isinstance(e, dist.DistBackendError) or any(k in text for k in ("Connection", "gloo", "NCCL", "Timed out",
                                                                                  "timed out", "peer", "closed"))):
            raise
        saved = checkpoint is not None and os.path.exists(checkpoint)
        where = f"; the last complete checkpoint {checkpoint} stays loadable: rerun to resume" if saved else ""
        raise DistributedError(f"rank {rank()} of {world_size()}: {what} stopped because a collective failed "
                               f"({name}: {text.strip().splitlines()[0] if text.strip() else ''}) — another process "
                               f"probably died or hung{where}") from None


def together(fn, what: str):
    """Run ``fn()`` on every rank and fail on every rank if it failed on any: local work between collectives
    (a forward pass over this rank's shard, reading a file) that raises on one rank only would otherwise
    leave the others waiting in the next collective. The failing rank re-raises its own error; the others
    raise a :class:`DistributedError` quoting it. One process: just ``fn()``.

    >>> together(lambda: 42, "a test")
    42
    """
    if not active():
        return fn()
    error: BaseException | None = None
    result = None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
        error = e
    report = None if error is None else f"{type(error).__name__}: {_first_line(error).split(': ', 1)[-1]}"
    gathered: list[str | None] = [None] * world_size()
    with collective_guard(what):
        dist.all_gather_object(gathered, report)
    failed = [(r, m) for r, m in enumerate(gathered) if m is not None]
    if error is not None:
        raise error
    if failed:
        r, m = failed[0]
        raise DistributedError(f"rank {r} failed during {what} ({m}); every rank stops")
    return result


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (``["fingerprint.lr"]``).

    >>> _differences({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 2, "d": 4}})
    ['b.d']
    """
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                out += _differences(a.get(k), b.get(k), f"{prefix}{k}.") if k in a and k in b else [f"{prefix}{k}"]
        return out
    return [prefix.rstrip(".") or "value"]


def agree(value: Any, what: str) -> None:
    """Every rank must pass an equal ``value`` (JSON-comparable: a config dict, a data size...).

    All ranks gather every rank's value; if they differ, every rank raises the same
    :class:`DistributedError`, naming the ranks and the first differing top-level keys — so no rank
    starts training with a config its peers do not share. One process always agrees.
    """
    if not active():
        return
    mine = _canonical(value)
    gathered: list[str | None] = [None] * world_size()
    with collective_guard(f"checking that every rank has the same {what}"):
        dist.all_gather_object(gathered, mine)
    if all(g == gathered[0] for g in gathered):
        return
    digests = [hashlib.sha256(g.encode()).hexdigest()[:8] for g in gathered]
    detail = ""
    for r, g in enumerate(gathered):
        if g != gathered[0]:
            detail = f"; rank {r} differs from rank 0 in {_differences(json.loads(gathered[0]), json.loads(g))[:6]}"
            break
    raise DistributedError(f"the ranks do not share the same {what} (fingerprints by rank: {digests}){detail}; "
                           "start every process with the same arguments and files")
