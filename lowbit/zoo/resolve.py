"""Resolve a model spec: a zoo name (``fmnist-resnet``), a text model (``minilm`` or a local
sentence-transformers / Hugging Face folder, see :mod:`lowbit.zoo.text`) or user code
(``path/to/file.py:ClassOrFactory``).

Example:
    >>> type(load_model_spec("fmnist-mlp", pretrained=False)).__name__
    'FmnistMLP'
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

from torch import nn

from ..errors import ModelLoadError
from ..io import load_state_dict, load_weights_into


def _load_from_file(spec: str) -> nn.Module:
    path_s, _, name = spec.rpartition(":")
    path = Path(path_s)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist (spec {spec!r}; expected path/to/file.py:ClassOrFactory)")
    mod_name = f"lowbit_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    try:
        ispec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(ispec)
        sys.modules[mod_name] = module
        ispec.loader.exec_module(module)
    except Exception as e:
        raise ModelLoadError(f"importing {path} failed: {type(e).__name__}: {e}") from None
    if not hasattr(module, name):
        avail = sorted(
            n for n, v in vars(module).items()
            if not n.startswith("_") and (inspect.isfunction(v) or (inspect.isclass(v) and issubclass(v, nn.Module)))
            and getattr(v, "__module__", None) == mod_name
        )
        raise ModelLoadError(f"{path} defines no {name!r}; model classes / factories found there: {avail}")
    obj = getattr(module, name)
    try:
        model = obj() if callable(obj) else obj
    except Exception as e:
        raise ModelLoadError(f"calling {name}() from {path} failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec} gave a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_model_spec(spec: str, weights: str | None = None, pretrained: bool = True) -> nn.Module:
    """Build the model named by ``spec`` (zoo name, text model or ``file.py:Name``) in eval mode.

    Zoo models get their shipped weights unless ``weights`` is given; user models get
    ``weights`` (a state_dict as ``.safetensors`` or a torch file loaded with ``weights_only=True``).
    Text models (a name of :data:`~lowbit.zoo.text.TEXT_MODELS` or any existing folder) load as a
    :class:`~lowbit.zoo.text.TextEncoder` with their pretrained weights unless ``pretrained=False``.
    """
    from . import ZOO, load_model
    from .text import TEXT_MODELS, load_text_encoder

    if ":" in spec and spec.rpartition(":")[0].endswith(".py"):
        model = _load_from_file(spec)
    elif spec in ZOO:
        model = load_model(spec, pretrained=pretrained and weights is None)
    elif spec in TEXT_MODELS or Path(spec).is_dir():
        model = load_text_encoder(spec, pretrained=pretrained and weights is None)
    else:
        raise ModelLoadError(
            f"unknown model {spec!r}; use a zoo name {sorted(ZOO)}, a text model {sorted(TEXT_MODELS)} or a folder "
            "holding a Hugging Face / sentence-transformers model, or path/to/file.py:ClassOrFactory"
        )
    if weights is not None:
        load_weights_into(model, load_state_dict(weights), source=str(weights))
    return model.eval()
