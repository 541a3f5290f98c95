"""Benchmark: integer-only reference engine vs integer-exact simulation vs fake-quant vs ONNX Runtime int8.

For each model (W8A8, 512 calibration images, the 10 000-image Fashion-MNIST test set):

* ``bit_identical``: engine logits == integer-exact simulation logits, every image (torch.equal);
* top-1 agreement of each pair among fake-quant (float simulation), integer-exact, engine and
  ONNX Runtime running lowbit's QDQ export;
* accuracy of each, and the engine's wall time relative to the float model in torch (same run).

    python bench/integer_engine.py [--models fmnist-resnet,fmnist-mobilenet,vgg,mnv2]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lowbit
from lowbit.data import load_fashion_mnist
from lowbit.runtime import IntegerEngine, OrtModel, integer_exact
from lowbit.zoo.resolve import load_model_spec

HERE = Path(__file__).parent
OUT = HERE / "results" / "integer_engine.json"
USER = {
    "vgg": (f"{HERE}/user_models/vgg_seq.py:make_vgg", HERE / "results/user_weights/vgg-sequential.safetensors"),
    "mnv2": (f"{HERE}/user_models/mnv2.py:MobileNetV2Small", HERE / "results/user_weights/mobilenetv2-user.safetensors"),
}


def batched(fn, x: torch.Tensor, bs: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i : i + bs]) for i in range(0, len(x), bs)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="fmnist-resnet,fmnist-mobilenet,vgg,mnv2")
    ap.add_argument("--recipe", default="w8a8")
    args = ap.parse_args()
    torch.set_num_threads(2)
    test, calib = load_fashion_mnist("test"), load_fashion_mnist("train").subset(512, seed=0)
    X, y = test.images, test.labels
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for name in args.models.split(","):
        if name in USER:
            spec, weights = USER[name]
            if not weights.exists():
                print(f"skip {name}: run bench/user_models.py first to train its weights", file=sys.stderr)
                continue
            fp = load_model_spec(spec, str(weights))
        else:
            fp = load_model_spec(name)
        q = lowbit.quantize_(copy.deepcopy(fp), lowbit.load_recipe(args.recipe), data=calib)
        t0 = time.perf_counter()
        f_logits = batched(fp, X)
        t_float = time.perf_counter() - t0
        fq = batched(q, X)
        sim = batched(integer_exact(q), X)
        t0 = time.perf_counter()
        eng = batched(IntegerEngine(q), X)
        t_eng = time.perf_counter() - t0
        lowbit.export_onnx(q, X[:1], tmp / f"{name}.onnx")
        ort = torch.from_numpy(np.concatenate([OrtModel(tmp / f"{name}.onnx").run_numpy(X[i : i + 500].numpy()) for i in range(0, len(X), 500)]))
        top = {k: v.argmax(1) for k, v in {"float": f_logits, "fakequant": fq, "integer_exact": sim, "engine": eng, "ort_int8": ort}.items()}

        def agree(a, b, top=top):
            return float((top[a] == top[b]).float().mean() * 100)

        row = {
            "model": name, "recipe": args.recipe, "images": len(X),
            "bit_identical_engine_vs_integer_exact": bool(torch.equal(eng, sim)),
            "accuracy": {k: float((v == y).float().mean() * 100) for k, v in top.items()},
            "agree_pct": {
                "engine_vs_integer_exact": agree("engine", "integer_exact"),
                "fakequant_vs_integer_exact": agree("fakequant", "integer_exact"),
                "fakequant_vs_ort": agree("fakequant", "ort_int8"),
                "integer_exact_vs_ort": agree("integer_exact", "ort_int8"),
            },
            "max_abs_logit_diff_fakequant_vs_engine": float((fq - eng).abs().max()),
            "engine_time_over_float_torch": t_eng / t_float,
        }
        rows.append(row)
        print(f"{name:16s} bit-identical {row['bit_identical_engine_vs_integer_exact']}  acc " +
              " ".join(f"{k} {v:.2f}" for k, v in row["accuracy"].items()) + "  agree " +
              " ".join(f"{k} {v:.2f}" for k, v in row["agree_pct"].items()) +
              f"  engine/float-torch time {row['engine_time_over_float_torch']:.1f}x", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
