"""Benchmark: W8A8 PTQ wall time and accuracy drop on fmnist-resnet / fmnist-mobilenet (512 calibration
images), lowbit vs torch.ao FX PTQ (x86 default qconfig) measured in the same run.

Wall time = median of --repeats runs of the whole PTQ call (BN folding, calibration, qparams),
accuracy on the full 10 000-image test set. Writes bench/results/ptq_speed.json.

    python bench/ptq_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

import lowbit
from lowbit.data import load_fashion_mnist
from lowbit.zoo import load_model

OUT = Path(__file__).parent / "results" / "ptq_speed.json"


def torch_ao_ptq(model, calib_batches):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), example_inputs=(calib_batches[0][:1],))
        with torch.no_grad():
            for x in calib_batches:
                m(x)
        return convert_fx(m)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="fmnist-resnet,fmnist-mobilenet")
    args = ap.parse_args()
    torch.set_num_threads(2)
    test = load_fashion_mnist("test")
    calib = load_fashion_mnist("train").subset(512, seed=0)
    calib_batches = [x for x, _ in calib.batches(256)]
    rows = []
    for name in args.models.split(","):
        model = load_model(name)
        fp32 = lowbit.evaluate(model, test)
        for tool in ("lowbit", "torch.ao-fx"):
            times, q = [], None
            for _ in range(args.repeats):
                m = copy.deepcopy(model)
                t0 = time.perf_counter()
                if tool == "lowbit":
                    q = lowbit.quantize_(m, lowbit.load_recipe("w8a8"), data=calib)
                else:
                    q = torch_ao_ptq(m, calib_batches)
                times.append(time.perf_counter() - t0)
            acc = lowbit.evaluate(q, test)
            rows.append({"model": name, "tool": tool, "fp32_accuracy": fp32, "int8_accuracy": acc,
                         "drop_pp": round(fp32 - acc, 3), "ptq_seconds_median": round(statistics.median(times), 3),
                         "ptq_seconds_all": [round(t, 3) for t in times]})
            print(f"{name:18s} {tool:12s} fp32 {fp32:6.2f}  int8 {acc:6.2f}  drop {fp32 - acc:+.2f} pp  "
                  f"PTQ {statistics.median(times):.2f} s (median of {args.repeats})", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
