"""Benchmark: int8 latency and accuracy on ONNX Runtime — lowbit's QDQ export vs ONNX Runtime's own
static quantizer, against float ORT, all in one run (2 intra-op threads); when `openvino` is installed
(`pip install 'lowbit[openvino]'`) the same lowbit QDQ file also runs on OpenVINO, against OpenVINO float.

Latency: median over repeats of interleaved runs (float / each int8 model in turn), at batch 1 (20
calls per repeat) and batch 256; reported as int8 latency / float latency on the same runtime.
Accuracy on the 10 000-image test set; "agree" = identical top-1 to lowbit's fake-quant simulation.
"lowbit-kf" is lowbit's export with the layers the ORT profiler finds slower in int8 than in float kept float.

    python bench/ort_latency.py [--models fmnist-resnet,fmnist-mobilenet]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import lowbit
from lowbit.data import load_fashion_mnist
from lowbit.report.bench import interleaved_latency, kernel_profile, layer_aliases, layer_timings, slow_layers
from lowbit.runtime import OpenVINOModel, OrtModel, openvino_available
from lowbit.zoo import load_model

OUT = Path(__file__).parent / "results" / "ort_latency.json"


def ort_own_quantizer(fp32_path: str, out_path: str, calib: np.ndarray, activation: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i : i + 64]} for i in range(0, len(calib), 64)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(fp32_path, out_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8 if activation == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="fmnist-resnet,fmnist-mobilenet")
    ap.add_argument("--recipe", default="w8a8")
    args = ap.parse_args()
    torch.set_num_threads(2)
    test = load_fashion_mnist("test")
    calib = load_fashion_mnist("train").subset(512, seed=0)
    X, y = test.images.numpy(), test.labels.numpy()
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for name in args.models.split(","):
        fp = load_model(name)
        q = lowbit.quantize_(copy.deepcopy(fp), lowbit.load_recipe(args.recipe), data=calib)
        with torch.no_grad():
            fq = torch.cat([q(test.images[i : i + 500]) for i in range(0, 10000, 500)]).numpy().argmax(1)
        x1 = test.images[:1]
        lowbit.export_onnx(fp, x1, tmp / f"{name}-fp32.onnx", precision="fp32")
        lowbit.export_onnx(q, x1, tmp / f"{name}-lowbit.onnx")
        # the safety net: layers whose int8 kernel is not faster than float (ORT profiler, batch 256) stay float
        aliases = layer_aliases(q)
        (t_f, _), (t_q, _) = (layer_timings(kernel_profile(tmp / f"{name}-{k}.onnx", X[:256], runs=20), aliases) for k in ("fp32", "lowbit"))
        slow = [r["layer"] for r in slow_layers(t_f, t_q)]
        lowbit.export_onnx(q, x1, tmp / f"{name}-lowbit-kf.onnx", float_layers=slow)
        print(f"{name}: layers kept float: {slow}", flush=True)
        for act in ("u8", "s8"):
            ort_own_quantizer(str(tmp / f"{name}-fp32.onnx"), str(tmp / f"{name}-ort-{act}.onnx"), calib.images.numpy(), act)
        models = {k: OrtModel(tmp / f"{name}-{k}.onnx") for k in ("fp32", "lowbit", "lowbit-kf", "ort-u8", "ort-s8")}
        files = {k: tmp / f"{name}-{k}.onnx" for k in models}
        baseline = dict.fromkeys(models, "fp32")  # latency ratios are against float on the same runtime
        if openvino_available():
            models["ov-fp32"], files["ov-fp32"] = OpenVINOModel(files["fp32"]), files["fp32"]
            models["ov-lowbit"], files["ov-lowbit"] = OpenVINOModel(files["lowbit"]), files["lowbit"]
            baseline.update({"ov-fp32": "ov-fp32", "ov-lowbit": "ov-fp32"})
        preds = {k: np.concatenate([m.run_numpy(X[i : i + 500]) for i in range(0, 10000, 500)]).argmax(1) for k, m in models.items()}
        # time each runtime's sessions on their own: idle worker threads of one runtime (ORT spinning,
        # OpenVINO's TBB pool) steal the 2 cores from the other when calls are interleaved across runtimes
        lat1: dict[str, float] = {}
        lat256: dict[str, float] = {}
        for group in ({k: m for k, m in models.items() if not k.startswith("ov-")}, {k: m for k, m in models.items() if k.startswith("ov-")}):
            if group:
                time.sleep(1.0)
                lat1.update(interleaved_latency(group, X[:1], repeats=60, calls=20))
                lat256.update(interleaved_latency(group, X[:256], repeats=20, calls=1))
        for k in models:
            row = {"model": name, "variant": k, "float_layers": slow if k == "lowbit-kf" else [],
                   "runtime": "openvino" if k.startswith("ov-") else "onnxruntime",
                   "accuracy": float((preds[k] == y).mean() * 100),
                   "agree_with_lowbit_fakequant_pct": float((preds[k] == fq).mean() * 100),
                   "latency_ratio_b1": lat1[k] / lat1[baseline[k]], "latency_ratio_b256": lat256[k] / lat256[baseline[k]],
                   "onnx_bytes": files[k].stat().st_size}
            rows.append(row)
            print(f"{name:17s} {k:9s} acc {row['accuracy']:6.2f}  agree {row['agree_with_lowbit_fakequant_pct']:6.2f}%  "
                  f"b1 {row['latency_ratio_b1']:.3f}x  b256 {row['latency_ratio_b256']:.3f}x  {row['onnx_bytes']} B", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    OUT.write_text(json.dumps({"onnxruntime": onnxruntime.__version__, "threads": 2, "recipe": args.recipe, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
