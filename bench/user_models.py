"""Benchmark: W8A8 PTQ of models lowbit has never seen, through the CLI (user .py file + state_dict).

1. trains each user model briefly on Fashion-MNIST (seeded; the weights go to bench/results/user_weights/),
2. runs `lowbit quantize path/to/file.py:Factory --weights W --recipe w8a8 --json ...`,
3. prints a table and writes bench/results/user_models.json.

Target (issue 2): accuracy drop <= 0.15 pp at W8A8.

    python bench/user_models.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "user_models"))

MODELS = {"vgg-sequential": ("vgg_seq.py", "make_vgg"), "mobilenetv2-user": ("mnv2.py", "MobileNetV2Small")}


def train(model, epochs: int, seed: int = 0) -> float:
    from lowbit.data import load_fashion_mnist
    from lowbit.zoo.train import accuracy, augment

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    tr, te = load_fashion_mnist("train"), load_fashion_mnist("test")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(tr) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(tr), generator=g)
        for i in range(len(tr) // 128):
            idx = perm[i * 128 : (i + 1) * 128]
            loss = F.cross_entropy(model(augment(tr.images[idx], g)), tr.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return accuracy(model, te.images, te.labels)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--recipe", default="w8a8")
    args = ap.parse_args()
    wdir = HERE / "results" / "user_weights"
    wdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (fname, factory) in MODELS.items():
        from safetensors.torch import save_file

        wpath = wdir / f"{name}.safetensors"
        if not wpath.exists():
            mod = __import__(fname[:-3])
            model = getattr(mod, factory)()
            t0 = time.time()
            acc = train(model, args.epochs)
            print(f"trained {name}: {acc:.2f}% in {time.time() - t0:.0f}s", flush=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(wpath))
        out = HERE / "results" / f"user_{name}_{args.recipe}.json"
        rel = lambda p: os.path.relpath(p, HERE.parent)  # noqa: E731 - paths relative to the repo root
        cmd = ["lowbit", "quantize", f"{rel(HERE / 'user_models' / fname)}:{factory}", "--weights", rel(wpath),
               "--recipe", args.recipe, "--json", rel(out)]
        env = {**os.environ, "LOWBIT_PROGRESS": "0"}
        subprocess.run([sys.executable, "-m", "lowbit.cli.__main__", *cmd[1:]], check=True, env=env, stdout=subprocess.DEVNULL,
                       cwd=HERE.parent)
        r = json.loads(out.read_text())
        rows.append({"model": name, "recipe": args.recipe, "fp32": r["fp32_accuracy"], "quantized": r["quantized_accuracy"],
                     "drop_pp": r["accuracy_drop_pp"], "ptq_s": r["quantize_seconds"], "folded_bn": r["folded_batchnorms"],
                     "quant_adds": r["quantized_adds"], "command": " ".join(cmd)})
    print(f"{'model':20s} {'fp32':>7s} {'quant':>7s} {'drop pp':>8s} {'PTQ s':>6s}")
    for r in rows:
        print(f"{r['model']:20s} {r['fp32']:7.2f} {r['quantized']:7.2f} {r['drop_pp']:8.2f} {r['ptq_s']:6.2f}")
    (HERE / "results" / "user_models.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
