"""The reference model zoo: Fashion-MNIST models with weights trained by ``lowbit zoo train``.

Example:
    >>> from lowbit.zoo import list_models
    >>> sorted(list_models())
    ['fmnist-mlp', 'fmnist-mobilenet', 'fmnist-resnet']
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import ConfigError, WeightsError
from ..io import load_state_dict, load_weights_into
from .models import FmnistMLP, FmnistMobileNet, FmnistResNet
from .text import TEXT_MODELS as TEXT_MODELS
from .text import TextEncoder as TextEncoder
from .text import is_text_model as is_text_model
from .text import load_text_encoder as load_text_encoder


@dataclass(frozen=True)
class ZooEntry:
    """How to build and train one zoo model."""

    factory: Callable[[], nn.Module]
    description: str
    epochs: int
    lr: float
    augment: bool = True


ZOO: dict[str, ZooEntry] = {
    "fmnist-resnet": ZooEntry(lambda: FmnistResNet(width=32, blocks=1), "small ResNet (3 stages x 1 basic block, 32/64/128 ch)", 12, 0.1),
    "fmnist-mobilenet": ZooEntry(FmnistMobileNet, "MobileNetV2-style (inverted residuals, depthwise 3x3, ReLU6)", 10, 0.1),
    "fmnist-mlp": ZooEntry(FmnistMLP, "784-128-10 perceptron (for tests)", 8, 0.05, augment=False),
}


def weights_dir() -> Path:
    """Folder of the shipped weights and model cards."""
    return Path(__file__).parent / "weights"


def list_models() -> dict[str, dict]:
    """Zoo names -> model card (``{}`` if not trained yet)."""
    out = {}
    for name in ZOO:
        p = weights_dir() / f"{name}.json"
        out[name] = json.loads(p.read_text()) if p.is_file() else {}
    return out


def load_model(name: str, pretrained: bool = True) -> nn.Module:
    """Build zoo model ``name`` in eval mode, with its shipped weights when ``pretrained``.

    Text model names (:data:`TEXT_MODELS`, e.g. ``"minilm"``) load through :func:`load_text_encoder`.
    """
    if name in TEXT_MODELS:
        return load_text_encoder(name, pretrained=pretrained)
    if name not in ZOO:
        raise ConfigError(f"unknown zoo model {name!r}; known: {sorted(ZOO)} and text models {sorted(TEXT_MODELS)}")
    model = ZOO[name].factory()
    if pretrained:
        p = weights_dir() / f"{name}.safetensors"
        if not p.is_file():
            raise WeightsError(f"no shipped weights for {name} at {p}; train them with `lowbit zoo train {name}`")
        load_weights_into(model, load_state_dict(p), source=str(p))
    return model.eval()


def load(name: str, pretrained: bool = True) -> nn.Module:
    """Same as :func:`load_model` (``lowbit.zoo.load("minilm")``, ``lowbit.zoo.load("fmnist-resnet")``).

    >>> type(load("fmnist-mlp", pretrained=False)).__name__
    'FmnistMLP'
    """
    return load_model(name, pretrained=pretrained)


def model_card(name: str) -> dict:
    """The model card JSON of a trained zoo model."""
    if name not in ZOO:
        raise ConfigError(f"unknown zoo model {name!r}; known: {sorted(ZOO)}")
    p = weights_dir() / f"{name}.json"
    if not p.is_file():
        raise WeightsError(f"no model card for {name}; train it with `lowbit zoo train {name}`")
    return json.loads(p.read_text())
