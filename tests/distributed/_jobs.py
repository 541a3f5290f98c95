"""Worker functions the 2-process tests start with ``torch.multiprocessing`` (spawn): module level so the
children can import them. Each joins a gloo group on localhost through lowbit's own runtime, runs one job and
writes its result as JSON (rank-suffixed) for the parent test to compare."""

from __future__ import annotations

import copy
import json
import os
import socket
import traceback
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(job: str, world: int, out: Path, **kw) -> list[dict]:
    """Run ``job`` on ``world`` spawned processes; returns every rank's result dict (rank order)."""
    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_entry, args=(job, r, world, port, str(out), kw)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        if p.is_alive():
            p.kill()
    return [json.loads((out / f"{job}-{r}.json").read_text()) if (out / f"{job}-{r}.json").exists() else {"missing": True}
            for r in range(world)]


def _entry(job: str, rank: int, world: int, port: int, out: str, kw: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOWBIT_PROGRESS="0")
    torch.set_num_threads(1)
    from lowbit.distributed import init_distributed, shutdown

    result: dict
    try:
        init_distributed(backend="gloo", timeout_s=kw.pop("timeout_s", 60))
        result = JOBS[job](rank, world, Path(out), **kw)
    except Exception as e:  # noqa: BLE001 - the parent test asserts on the error
        result = {"error": type(e).__name__, "message": str(e), "trace": traceback.format_exc()}
    finally:
        if kw.get("die_rank") != rank:
            shutdown()
    tmp = Path(out) / f".{job}-{rank}.tmp"
    tmp.write_text(json.dumps(result, default=float))
    tmp.replace(Path(out) / f"{job}-{rank}.json")


def toy_data(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 28, 28, generator=g)
    w = torch.randn(784, 10, generator=g)
    y = (x.reshape(n, -1) @ w).argmax(1)
    return x, y


def prepared_mlp(calibrate: str = "replicated"):
    """A QAT-prepared FmnistMLP (w4a8 + LSQ), identical on every rank (seeded)."""
    import lowbit
    from lowbit.zoo.models import FmnistMLP

    torch.manual_seed(0)
    model = FmnistMLP()
    x, _ = toy_data()
    cfg = lowbit.QATConfig.wrap(lowbit.load_recipe("w4a8"), epochs=2, lr=1e-3)
    if calibrate == "sharded":
        from lowbit.api import quantize_

        q = quantize_(copy.deepcopy(model), cfg, data=[x[:256]], sharded=True)
    else:
        q = lowbit.quantize_(copy.deepcopy(model), cfg, data=[x[:256]])
    return q


class Stop(Exception):
    """Raised by a step hook to interrupt a one-process run (as a crash would, minus the process exit)."""


def qat_job(rank: int, world: int, out: Path, epochs: int = 2, comm: str | None = None, checkpoint: str | None = None,
            die_rank: int | None = None, die_step: int = 3, calibrate: str = "replicated", n: int = 600,
            stop_step: int | None = None) -> dict:
    import lowbit

    q = prepared_mlp(calibrate)
    x, y = toy_data(n)
    hook = None
    if die_rank == rank:
        def hook(step, total):  # noqa: ARG001 - the trainer's signature
            if step == die_step:
                os._exit(3)  # a crash: no cleanup, no goodbye to the peers
    elif stop_step is not None:
        def hook(step, total):  # noqa: ARG001 - the trainer's signature
            if step == stop_step:
                raise Stop(f"stopped at step {step}")
    r = lowbit.train(q, (x, y), epochs=epochs, lr=1e-3, batch_size=64, checkpoint=checkpoint, comm=comm, progress=False,
                     step_hook=hook)
    state = {k: v.double().sum().item() for k, v in q.state_dict().items() if isinstance(v, torch.Tensor)}
    return {"step_losses": r["step_losses"], "history": r["history"], "distributed": r.get("distributed"),
            "resumed_from": r["resumed_from"], "state": state, "accuracy": lowbit.evaluate(q, [(x, y)])}


def calib_job(rank: int, world: int, out: Path, observer: str = "minmax") -> dict:
    import lowbit
    from lowbit.distributed import calibrate_sharded
    from lowbit.zoo.models import FmnistMLP

    torch.manual_seed(0)
    model = FmnistMLP()
    x, _ = toy_data(300)
    cfg = lowbit.PTQConfig.from_dict({"activation": {"bits": 8, "signed": False, "mapping": "affine", "observer": observer}})
    q = lowbit.quantize_(model, cfg, calibrate=False)
    n = calibrate_sharded(q, list(x.split(70)))
    return {"samples": n, "qparams": {k: v.tolist() for k, v in q.state_dict().items() if k.endswith(("scale", "zero_point"))}}


def nan_shard_job(rank: int, world: int, out: Path) -> dict:
    """Rank 1's own shard holds a NaN (``shard=False``): it fails, and rank 0 must not wait forever."""
    import lowbit
    from lowbit.distributed import calibrate_sharded
    from lowbit.zoo.models import FmnistMLP

    q = lowbit.quantize_(FmnistMLP(), lowbit.PTQConfig(), calibrate=False)
    x = torch.randn(8, 1, 28, 28)
    if rank == 1:
        x[0, 0, 0, 0] = float("nan")
    calibrate_sharded(q, [x], shard=False)
    return {"ok": True}


def mismatch_job(rank: int, world: int, out: Path) -> dict:
    import lowbit

    q = prepared_mlp()
    x, y = toy_data()
    lowbit.train(q, (x, y), epochs=1, lr=1e-3 * (1 + rank), batch_size=64, progress=False)
    return {"ok": True}


JOBS = {"qat": qat_job, "calib": calib_job, "mismatch": mismatch_job, "nan_shard": nan_shard_job}
