"""Benchmark: lowbit on torch.distributed (issue 10) — fmnist-resnet, 2 processes on this machine (gloo).

Three measurements, each against its one-process / fp32 reference in the same invocation:

* ``--calib``: sharded calibration (2 ranks, each observing half of 512 training images) vs one process
  calibrating on all 512 with the same exact algorithm, for the min-max and histogram observers: are the
  activation grids bit-identical? (min-max also vs the plain one-pass ``lowbit.calibrate``.)
* ``--run NAME --procs P [--comm M]``: ``lowbit qat fmnist-resnet`` through the real command line —
  ``torchrun --standalone --nproc-per-node P -m lowbit qat ...`` for P > 1 — with the same recipe, global
  batch, data and schedule; records the per-step losses, accuracy, wall time and the gradient bytes sent.
* ``--table``: prints the table from ``bench/results/distributed.json``.

Usage (one at a time: the machine has 2 cores)::

    python bench/distributed.py --calib
    python bench/distributed.py --run one-process --procs 1
    python bench/distributed.py --run ddp-fp32 --procs 2
    python bench/distributed.py --run ddp-terngrad-ef --procs 2 --comm terngrad
    python bench/distributed.py --table
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "distributed.json"
RECIPE, TRAIN_SIZE, EPOCHS = "qat-w2a2-lsq", 12000, 2
OBSERVERS = ("minmax", "percentile", "mse", "entropy")


def _store(key: str, value: dict) -> None:
    from lowbit.io import atomic_write_text

    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = value
    atomic_write_text(RESULTS, json.dumps(data, indent=1, default=float) + "\n")


def _calib_grids(observer: str, sharded: bool) -> dict:
    import lowbit
    from lowbit.data import load_fashion_mnist
    from lowbit.distributed import calibrate_sharded
    from lowbit.zoo import load_model

    model = load_model("fmnist-resnet")
    calib = load_fashion_mnist("train").subset(512, seed=0)
    cfg = lowbit.PTQConfig.from_dict({"activation": {"bits": 8, "signed": False, "mapping": "affine", "observer": observer}})
    q = lowbit.quantize_(copy.deepcopy(model), cfg, calibrate=False)
    batches = list(calib.images.split(128))
    if sharded:
        calibrate_sharded(q, batches)
    else:
        lowbit.calibrate(q, batches)
    return {k: v.tolist() for k, v in q.state_dict().items() if k.endswith(("scale", "zero_point")) and "weight" not in k}


def calib_worker(out: str) -> None:
    """Runs under torchrun: every rank calibrates its half; rank 0 writes the grids."""
    from lowbit.distributed import init_distributed, is_main, shutdown

    init_distributed()
    grids = {ob: _calib_grids(ob, sharded=True) for ob in OBSERVERS}
    if is_main():
        Path(out).write_text(json.dumps(grids))
    shutdown()


def calib_bench() -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "grids.json"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        __file__, "--calib-worker", str(out)], check=True, cwd=ROOT)
        seconds_2 = time.perf_counter() - t0
        two = json.loads(out.read_text())
    t0 = time.perf_counter()
    one = {ob: _calib_grids(ob, sharded=True) for ob in OBSERVERS}
    seconds_1 = time.perf_counter() - t0
    plain = _calib_grids("minmax", sharded=False)
    rows = {ob: {"grids": len(one[ob]), "bit_identical": two[ob] == one[ob]} for ob in OBSERVERS}
    rows["minmax"]["equals_plain_calibrate"] = two["minmax"] == plain
    result = {"observers": rows, "calib_images": 512, "ranks": 2, "seconds_2proc_incl_startup": seconds_2,
              "seconds_1proc": seconds_1}
    _store("sharded-calibration", result)
    print(json.dumps(result, indent=1))
    return result


def qat_run(name: str, procs: int, comm: str | None, error_feedback: bool | None, train_size: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        args = ["qat", "fmnist-resnet", "--recipe", RECIPE, "--train-size", str(train_size), "--epochs", str(epochs),
                "--json", str(out)]
        if comm:
            args += ["--comm", comm]
        if error_feedback is not None:
            args += ["--comm-error-feedback" if error_feedback else "--no-comm-error-feedback"]
        cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), "-m", "lowbit"]
               if procs > 1 else [sys.executable, "-m", "lowbit"]) + args
        env = {**os.environ, "LOWBIT_PROGRESS": "0"}
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        wall = time.perf_counter() - t0
        r = json.loads(out.read_text())
    result = {"procs": procs, "comm": comm or "fp32", "error_feedback": error_feedback, "recipe": RECIPE,
              "train_images": r["train_images"], "epochs": epochs, "batch_size": r["config"]["batch_size"],
              "fp32_accuracy": r["fp32_accuracy"], "initial_accuracy": r["initial_accuracy"],
              "quantized_accuracy": r["quantized_accuracy"], "train_seconds": r["train_seconds"], "wall_seconds": wall,
              "step_losses": r["step_losses"], "history": r["history"], "distributed": r.get("distributed"),
              "torch_threads_per_process": 1 if procs > 1 else torch.get_num_threads()}
    _store(name, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("step_losses", "history")}, indent=1))
    return result


def table() -> None:
    data = json.loads(RESULTS.read_text())
    ref = data.get("one-process", {}).get("step_losses")
    base = data.get("ddp-fp32", {}).get("quantized_accuracy")
    print("| run | procs | gradients | accuracy % | vs 1 process pp | vs DDP fp32 pp | bytes sent / rank | x fewer than fp32 "
          "| max loss diff, steps 1-3 / 1-10 | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    one = data.get("one-process", {}).get("quantized_accuracy")
    for name, r in data.items():
        if "procs" not in r:
            continue
        comm = (r.get("distributed") or {}).get("comm") or {}
        sent, ratio = comm.get("bytes_sent"), comm.get("ratio")
        diff = "-"
        if ref and name != "one-process":
            d = [abs(a - b) for a, b in zip(r["step_losses"], ref, strict=False)]
            diff = f"{max(d[:3]):.1e} / {max(d[:10]):.1e}"
        ef = "" if r["comm"] == "fp32" else (" + EF" if (comm.get("error_feedback")) else "")
        print(f"| {name} | {r['procs']} | {r['comm']}{ef} | {r['quantized_accuracy']:.2f} | "
              f"{r['quantized_accuracy'] - one:+.2f} | " + (f"{r['quantized_accuracy'] - base:+.2f}" if base else "-") + " | "
              + (f"{sent / 2**20:.1f} MiB" if sent else "-") + " | " + (f"{ratio:.1f}" if ratio else "-") +
              f" | {diff} | {r['train_seconds']:.0f} |")
    c = data.get("sharded-calibration")
    if c:
        print()
        for ob, row in c["observers"].items():
            print(f"sharded calibration, {ob}: {row['grids']} grids bit-identical = {row['bit_identical']}"
                  + (f", equals plain calibrate = {row['equals_plain_calibrate']}" if "equals_plain_calibrate" in row else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", action="store_true")
    ap.add_argument("--calib-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--run", default=None)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--comm", default=None)
    ap.add_argument("--error-feedback", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--train-size", type=int, default=TRAIN_SIZE)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args()
    if a.calib_worker:
        calib_worker(a.calib_worker)
    elif a.calib:
        calib_bench()
    elif a.run:
        qat_run(a.run, a.procs, a.comm, a.error_feedback, a.train_size, a.epochs)
    if a.table:
        table()


if __name__ == "__main__":
    main()
