"""Benchmark: size of packed `.lowbit` checkpoints on disk vs the fp32 parameter bytes.

For each zoo model and weight width (recipes w8a8, w4a8, w2a8; plus "w2-all": the w2a8 recipe
without its 8-bit first/last-layer overrides), the file written by `lowbit.save` is measured and
compared with the theoretical size: codes at b bits + one fp32 scale per output channel + fp32
biases. Reload is checked bit-exact (torch.equal on logits).

    python bench/packed_size.py
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch

import lowbit
from lowbit.data import load_fashion_mnist
from lowbit.nn.layers import is_quant_module
from lowbit.zoo import load_model

OUT = Path(__file__).parent / "results" / "packed_size.json"


def theoretical_bytes(q) -> int:
    total = 0
    for m in q.modules():
        if is_quant_module(m) and m.weight_quant is not None:
            bits = m.weight_quant.spec.format.bits
            total += (m.weight.numel() * bits + 7) // 8 + 4 * m.weight.shape[0]  # codes + fp32 scale per channel
            total += 4 * (m.bias.numel() if m.bias is not None else 0)
        elif is_quant_module(m):
            total += 4 * sum(p.numel() for p in m.parameters(recurse=False))
    return total


def main() -> None:
    calib = load_fashion_mnist("train").subset(512, seed=0)
    x = load_fashion_mnist("test").images[:64]
    tmp = Path(tempfile.mkdtemp())
    rows = []
    for name in ("fmnist-resnet", "fmnist-mobilenet"):
        fp = load_model(name)
        fp32_bytes = 4 * sum(p.numel() for p in fp.parameters())
        for label, recipe in (("W8", "w8a8"), ("W4", "w4a8"), ("W2", "w2a8"), ("W2-all", "w2a8")):
            cfg = lowbit.load_recipe(recipe)
            if label == "W2-all":
                cfg = cfg.replace(overrides=[])
            q = lowbit.quantize_(copy.deepcopy(fp), cfg, data=calib)
            path = tmp / f"{name}-{label}.lowbit"
            lowbit.save(q, path, model_spec=name)
            back = lowbit.load(path)
            with torch.no_grad():
                exact = bool(torch.equal(q(x), back(x)))
            size = path.stat().st_size
            row = {"model": name, "weights": label, "recipe": recipe, "file_bytes": size, "fp32_param_bytes": fp32_bytes,
                   "ratio": size / fp32_bytes, "theoretical_ratio": theoretical_bytes(q) / fp32_bytes, "reload_bit_exact": exact}
            rows.append(row)
            print(f"{name:17s} {label:7s} file/fp32 {row['ratio']:.4f}  theory {row['theoretical_ratio']:.4f}  bit-exact reload {exact}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
