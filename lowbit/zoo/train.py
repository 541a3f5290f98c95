"""Training of the zoo models on Fashion-MNIST — the only way the shipped weights are made.

Recipe: SGD (momentum 0.9, Nesterov), weight decay 5e-4 on conv/linear weights, one-cycle
learning rate (linear warm-up for 15 % of steps, cosine decay), batch 128, random
translation by up to 2 pixels and horizontal flips. Fully seeded: the same seed, torch
version and thread count give the same weights.

Example:
    >>> from lowbit.zoo.train import train_zoo_model
    >>> card = train_zoo_model("fmnist-mlp", epochs=1)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .._progress import track
from ..data import load_fashion_mnist
from ..errors import ConfigError
from ..io import atomic_write_bytes, atomic_write_text


def augment(x: torch.Tensor, g: torch.Generator, shift: int = 2, flip: bool = True) -> torch.Tensor:
    """Per-sample random translation (zero-padded, up to ``shift`` px) and horizontal flip."""
    b, c, h, w = x.shape
    pad = F.pad(x, (shift, shift, shift, shift), value=float(x.min()))
    oy = torch.randint(0, 2 * shift + 1, (b,), generator=g)
    ox = torch.randint(0, 2 * shift + 1, (b,), generator=g)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    out = pad[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    if flip:
        m = torch.rand(b, generator=g) < 0.5
        out = torch.where(m[:, None, None, None], out.flip(-1), out)
    return out.contiguous()


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch_size):
        correct += (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
    return 100.0 * correct / len(labels)


def train_zoo_model(
    name: str,
    *,
    epochs: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    out_dir: str | os.PathLike | None = None,
) -> dict:
    """Train zoo model ``name`` from scratch and write ``<name>.safetensors`` + ``<name>.json``.

    Returns the model card (accuracy, epochs, seconds, parameters, recipe).
    """
    from safetensors.torch import save

    from . import ZOO, weights_dir

    if name not in ZOO:
        raise ConfigError(f"unknown zoo model {name!r}; known: {sorted(ZOO)}")
    entry = ZOO[name]
    epochs = entry.epochs if epochs is None else epochs
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    train = load_fashion_mnist("train", data_dir)
    test = load_fashion_mnist("test", data_dir)
    model = entry.factory()
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=entry.lr, momentum=0.9, nesterov=True,
    )
    bs = 128
    steps_per_epoch = len(train) // bs
    total = epochs * steps_per_epoch
    warm = max(1, int(0.15 * total))

    def lr_at(step: int) -> float:
        if step < warm:
            return entry.lr * (step + 1) / warm
        return 0.5 * entry.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    t0 = time.perf_counter()
    step = 0
    history = []
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=g)
        for i in track(range(steps_per_epoch), f"{name} epoch {ep + 1}/{epochs}"):
            idx = perm[i * bs : (i + 1) * bs]
            x = augment(train.images[idx], g) if entry.augment else train.images[idx]
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        history.append({"epoch": ep + 1, "loss": round(loss.item(), 4), "test_accuracy": accuracy(model, test.images, test.labels)})
    seconds = time.perf_counter() - t0
    acc = history[-1]["test_accuracy"]
    card = {
        "name": name,
        "description": entry.description,
        "test_accuracy": acc,
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "recipe": f"SGD nesterov m=0.9 lr={entry.lr} one-cycle(15% warm-up, cosine), wd=5e-4, bs={bs}, "
        + ("shift 2px + hflip" if entry.augment else "no augmentation"),
        "history": history,
        "command": f"lowbit zoo train {name}" + (f" --epochs {epochs}" if epochs != entry.epochs else ""),
    }
    out = Path(out_dir) if out_dir is not None else weights_dir()
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / f"{name}.safetensors", save(state, metadata={"name": name}))
    atomic_write_text(out / f"{name}.json", json.dumps(card, indent=2) + "\n")
    return card
