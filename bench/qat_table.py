"""Benchmark: quantization-aware training recipes on fmnist-resnet vs the best post-training method.

Each row is one ``lowbit qat MODEL --recipe R [--distill] --json ...`` run through the real CLI
(prepare: BN folded, grids calibrated on the recipe's images; train on the 60k training split;
convert; evaluate on the 10 000 test images). The PTQ column is the best cell of
``bench/methods_table.py`` at the same weight / activation widths (AdaRound, iterative noise
adaptation, ...); widths the methods table has no row for (A2, W1) are run here with AdaRound
and iterative adaptation (``--ptq-missing``), or shown as "–" where no PTQ method applies (W1).

Results are cached per run in bench/results/qat_table.json (re-running resumes; ``--fresh``
starts over), so the runs can be spread over sessions; each run's wall time is recorded.

    python bench/qat_table.py                                  # the target rows
    python bench/qat_table.py --runs qat-w4a4-lsq,qat-w2a2-lsq+distill --epochs 2
    python bench/qat_table.py --print-only
    python bench/qat_table.py --runs twn,bnn,xnor:8 --device cuda --jobs 8 --table /tmp/gpu.json --no-models
    python bench/qat_table.py --merge /tmp/gpu.json             # add another machine's runs (kept apart by @device)

A run is ``NAME`` or ``NAME:EPOCHS`` (an epoch override, stored as ``NAME@Eep``); runs on another
device than the CPU are stored as ``NAME@cuda`` (their wall time is that machine's, not the 2-core
CPU's). ``--jobs N`` runs N CLI processes at once (on a GPU machine; never on the 2-core CPU).

Writes bench/results/qat_table.json, docs/img/qat_table.png and the converted models
(bench/results/qat_models/RUN.lowbit, e.g. for ``bench/xnor_kernel.py --network``), prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "qat_table.json"
METHODS_TABLE = ROOT / "bench" / "results" / "methods_table.json"
PLOT = ROOT / "docs" / "img" / "qat_table.png"
MODELS = ROOT / "bench" / "results" / "qat_models"  # the converted models (packed .lowbit; not committed)
MODEL = "fmnist-resnet"
# run name -> (recipe, distill); the issue-5 targets first
RUNS = {
    "qat-w4a4-lsq": ("qat-w4a4-lsq", False),
    "qat-w2a2-lsq": ("qat-w2a2-lsq", False),
    "qat-w2a2-lsq+distill": ("qat-w2a2-lsq", True),
    "ttq": ("ttq", False),
    "bwn": ("bwn", False),
    "xnor": ("xnor", False),
    "qat-w4a4-pact": ("qat-w4a4-pact", False),
    "qat-w2a2-dsq": ("qat-w2a2-dsq", False),
    "qat-w2a2-dorefa": ("qat-w2a2-dorefa", False),
    "twn": ("twn", False),
    "bnn": ("bnn", False),
    "pot-w4": ("pot-w4", False),
    "shiftcnn-n2b4": ("shiftcnn-n2b4", False),
    "kmeans-w3": ("kmeans-w3", False),
}
TARGETS = {"qat-w4a4-lsq": 0.2, "qat-w2a2-lsq": 1.0, "ttq": 0.8, "bwn": 2.0, "xnor": 4.0}


def _bits(recipe: str) -> tuple[int, int]:
    """(weight bits, activation bits) of a recipe's body (its first / last layers are W8A8)."""
    sys.path.insert(0, str(ROOT))
    import lowbit

    cfg = lowbit.load_recipe(recipe)
    return cfg.weight.bits, cfg.activation.bits


def parse_run(spec: str, device: str) -> tuple[str, str, int | None]:
    """``NAME[:EPOCHS]`` -> (table key, run name, epochs override)."""
    name, _, ep = spec.partition(":")
    if name not in RUNS:
        raise SystemExit(f"unknown run {name!r}; use {list(RUNS)}")
    epochs = int(ep) if ep else None
    key = name + (f"@{epochs}ep" if epochs else "") + ("" if device == "cpu" else f"@{device.split(':')[0]}")
    return key, name, epochs


def start_one(key: str, name: str, epochs: int | None, train_size: int | None, device: str, models: bool, tmp: Path):
    """Start one ``lowbit qat`` CLI run; returns (process, json path, start time)."""
    recipe, distill = RUNS[name]
    out = tmp / f"{key}.json"
    cmd = [sys.executable, "-m", "lowbit.cli", "qat", MODEL, "--recipe", recipe, "--json", str(out),
           "--distill" if distill else "--no-distill", "--device", device]
    if models:
        MODELS.mkdir(parents=True, exist_ok=True)
        cmd += ["--out", str(MODELS / f"{key}.lowbit")]
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    if train_size is not None:
        cmd += ["--train-size", str(train_size)]
    env = {**os.environ, "LOWBIT_PROGRESS": "0", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp / f"{key}.log", "w")  # noqa: SIM115 - closed when the run ends
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), out, time.perf_counter(), log


def finish_one(name: str, out: Path, wall: float) -> dict:
    recipe, distill = RUNS[name]
    r = json.loads(out.read_text())
    w, a = _bits(recipe)
    return {"recipe": recipe, "distill": distill, "weight_bits": w, "activation_bits": a, "fp32": r["fp32_accuracy"],
            "initial": r["initial_accuracy"], "accuracy": r["quantized_accuracy"], "drop_pp": r["accuracy_drop_pp"],
            "epochs": r["epochs"], "train_images": r["train_images"], "train_seconds": r["train_seconds"],
            "wall_seconds": wall, "device": r.get("device", "cpu"), "history": r["history"]}


def run_all(specs: list[str], table: dict, path: Path, device: str, jobs: int, train_size: int | None, models: bool) -> None:
    """Run the specs not yet in ``table`` (``jobs`` at a time), writing ``path`` after each finishes."""
    from lowbit.io import atomic_write_text

    todo = [parse_run(s, device) for s in specs]
    todo = [t for t in todo if t[0] not in table]
    running: list = []
    with tempfile.TemporaryDirectory() as tmp:
        while todo or running:
            while todo and len(running) < jobs:
                key, name, epochs = todo.pop(0)
                running.append((key, name, *start_one(key, name, epochs, train_size, device, models, Path(tmp))))
            time.sleep(1.0)
            for item in [r for r in running if r[2].poll() is not None]:
                running.remove(item)
                key, name, proc, out, t0, log = item
                log.close()
                if proc.returncode != 0:
                    print(f"{key}: FAILED (exit {proc.returncode}); log tail:\n" + Path(log.name).read_text()[-3000:], flush=True)
                    continue
                table[key] = finish_one(name, out, time.perf_counter() - t0)
                r = table[key]
                print(f"{key}: {r['accuracy']:.2f} % ({r['drop_pp']:+.2f} pp), {r['wall_seconds']:.0f} s on {r['device']}", flush=True)
                atomic_write_text(path, json.dumps(table, indent=1) + "\n")


def best_ptq(cells: dict, w: int, a: int) -> tuple[str, float] | None:
    """The best post-training cell of the methods table at W{w}A{a}: (method, accuracy)."""
    found = [(k.split("/")[1], c["accuracy"]) for k, c in cells.items() if k.split("/")[0] == f"W{w}A{a}"]
    return max(found, key=lambda t: t[1]) if found else None


def ptq_missing(widths: list[tuple[int, int]]) -> None:
    """Run AdaRound and iterative adaptation at widths the methods table lacks (e.g. W2A2), cached in its JSON."""
    sys.path.insert(0, str(ROOT / "bench"))
    import copy

    import torch
    from methods_table import make_config

    import lowbit
    from lowbit.data import load_fashion_mnist
    from lowbit.io import atomic_write_text
    from lowbit.zoo import load_model

    table = json.loads(METHODS_TABLE.read_text())
    entry = table[MODEL]
    model, test, train = load_model(MODEL), load_fashion_mnist("test"), load_fashion_mnist("train")
    for w, a in widths:
        for method in ("adaround", "iterative"):
            key = f"W{w}A{a}/{method}"
            if key in entry["cells"]:
                continue
            cfg = make_config(method, w, a)
            torch.manual_seed(0)
            t0 = time.perf_counter()
            q = lowbit.quantize_(copy.deepcopy(model), cfg, data=train.subset(cfg.calib_size, seed=0))
            seconds = time.perf_counter() - t0
            acc = lowbit.evaluate(q, test)
            entry["cells"][key] = {"accuracy": acc, "drop_pp": entry["fp32"] - acc, "seconds": seconds}
            print(f"{MODEL} {key} {acc:.2f} ({seconds:.0f} s)", flush=True)
            atomic_write_text(METHODS_TABLE, json.dumps(table, indent=1) + "\n")


def _ordered(table: dict) -> list[str]:
    """Run names in RUNS order, each followed by its superseded variants (``NAME@variant``, kept for the record)."""
    return [n for base in RUNS for n in ([base] if base in table else []) + sorted(k for k in table if k.startswith(base + "@"))]



def print_table(table: dict) -> None:
    cells = json.loads(METHODS_TABLE.read_text())[MODEL]["cells"] if METHODS_TABLE.exists() else {}
    print(f"\n### {MODEL}: QAT vs the best post-training method at the same widths (accuracy %, drop pp)\n")
    print("| run | body W/A bits | epochs | initial grids | **QAT** | drop pp | target | best PTQ (method) | QAT − PTQ pp | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in _ordered(table):
        r = table[name]
        ptq = best_ptq(cells, r["weight_bits"], r["activation_bits"])
        target = TARGETS.get(name)
        met = "" if target is None else f"≤ {target} {'met' if r['drop_pp'] <= target else '**missed**'}"
        ptq_s = "–" if ptq is None else f"{ptq[1]:.2f} ({ptq[0]})"
        gain = "–" if ptq is None else f"{r['accuracy'] - ptq[1]:+.2f}"
        print(f"| {name} | W{r['weight_bits']}A{r['activation_bits']} | {r['epochs']} | {r['initial']:.2f} | **{r['accuracy']:.2f}** | "
              f"{r['drop_pp']:+.2f} | {met} | {ptq_s} | {gain} | {r['train_seconds']:.0f} |")
    for plain in [k for k in table if k.split("@")[0] == "qat-w2a2-lsq"]:  # each pair with the same schedule / machine
        twin = plain.replace("qat-w2a2-lsq", "qat-w2a2-lsq+distill", 1)
        if twin in table:
            d = table[twin]["accuracy"] - table[plain]["accuracy"]
            print(f"\ndistillation at W2A2 ({plain} vs {twin}): {d:+.2f} pp (target ≥ +0.3: {'met' if d >= 0.3 else 'not met'})")


def plot(table: dict, out: Path = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowbit.io import save_figure

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    names = _ordered(table)
    ax.barh(range(len(names)), [table[n]["drop_pp"] for n in names], color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set(xlabel="accuracy drop vs float, pp (10k test images)", title=f"{MODEL}: QAT recipes")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, out)
    print(f"\nplot: {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default=",".join(list(RUNS)[:6]), help=f"comma list of NAME[:EPOCHS], NAME from {list(RUNS)}")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipes' epochs")
    ap.add_argument("--train-size", type=int, default=None, help="training images (default: the recipe's, else all 60k)")
    ap.add_argument("--fresh", action="store_true", help="ignore cached runs")
    ap.add_argument("--ptq-missing", action="store_true", help="run AdaRound / iterative at widths the methods table lacks")
    ap.add_argument("--print-only", action="store_true")
    ap.add_argument("--device", default="cpu", help="training device of the runs (cpu, cuda, ...)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (only on a machine with cores to spare)")
    ap.add_argument("--table", default=str(OUT), help="the JSON the runs are cached in")
    ap.add_argument("--no-models", action="store_true", help="do not keep the converted models")
    ap.add_argument("--merge", default=None, help="add the runs of another table JSON (e.g. from a GPU machine) and stop")
    ap.add_argument("--plot-file", default=str(PLOT))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from lowbit.io import atomic_write_text

    path = Path(args.table)
    table = {} if args.fresh or not path.exists() else json.loads(path.read_text())
    if args.merge:
        other = json.loads(Path(args.merge).read_text())
        table.update({k: v for k, v in other.items() if k not in table})
        atomic_write_text(path, json.dumps(table, indent=1) + "\n")
    elif not args.print_only:
        specs = [s for s in args.runs.split(",") if s]
        if args.epochs is not None:
            specs = [s if ":" in s else f"{s}:{args.epochs}" for s in specs]
        run_all(specs, table, path, args.device, max(1, args.jobs), args.train_size, not args.no_models)
        if args.ptq_missing:
            ptq_missing(sorted({(r["weight_bits"], r["activation_bits"]) for r in table.values() if r["weight_bits"] >= 2}))
    print_table(table)
    plot(table, Path(args.plot_file))


if __name__ == "__main__":
    main()
