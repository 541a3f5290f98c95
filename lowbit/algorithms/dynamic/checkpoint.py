"""Save / load a (trained) :class:`~lowbit.algorithms.dynamic.DynamicQuantModel`. Never pickles.

File layout: one safetensors file. Its tensors are the model's ``state_dict`` (float weights and
biases, every candidate's LSQ steps and zero points, the controller's MLP and feature statistics);
its ``__metadata__`` holds

* ``lowbit_dynamic_format`` — format version (this code writes and reads ``1``);
* ``lowbit_manifest`` — JSON: lowbit version, model spec (zoo name / ``file.py:Name``), the
  :class:`~lowbit.algorithms.dynamic.DynamicConfig`, the structure (``bits``, ``fixed_bits``, the
  resolved ``trunk``, controller ``hidden`` width, observer, one sample's ``input_shape``, whether
  BatchNorm was folded), per quantized layer its input grid side (``input_signed``: signed symmetric
  or unsigned with ``Z = 0`` — a grid *format*, so not in the ``state_dict``) and MACs, and the
  model's ``lowbit_info``;
* ``lowbit_sha256`` — SHA-256 of ``manifest || key_0, dtype_0, shape_0 || tensor_0 bytes || ...`` (keys sorted).

Loading rebuilds the model the way :func:`~lowbit.algorithms.dynamic.prepare` built it (copy of the
float model, BatchNorm folded, the same trunk split and layer swap, no calibration), sets every
layer's input grids to the stored side, and loads the ``state_dict`` strictly: the outputs, choices
and measured BitOPs are bit-identical to the saved model's.

Example:
    >>> import os, tempfile, torch
    >>> from lowbit.zoo.models import FmnistResNet
    >>> from lowbit.algorithms.dynamic import DynamicConfig, prepare
    >>> torch.manual_seed(0) and None
    >>> dyn = prepare(FmnistResNet(width=4).eval(), DynamicConfig(bits=(2, 4), hidden=8), [torch.randn(8, 1, 28, 28)])
    >>> path = os.path.join(tempfile.mkdtemp(), "dyn.safetensors")
    >>> save_dynamic(dyn, path)["layers"]
    10
    >>> dyn2 = load_dynamic(path, model=FmnistResNet(width=4))
    >>> x = torch.randn(4, 1, 28, 28); torch.equal(dyn(x), dyn2(x)), torch.equal(dyn.last_bitops, dyn2.last_bitops)
    (True, True)
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import warnings
from pathlib import Path

import torch
from torch import nn

from ...errors import LowbitError, WeightsError
from ...export.checkpoint import CheckpointError
from ...io import atomic_write_bytes, load_weights_into
from ...nn.learned import LSQQuant
from ...transform import FoldBatchNorm
from .config import DynamicConfig
from .layers import DynamicQuantLayer, input_spec
from .model import DynamicQuantModel

FORMAT_VERSION = 1


def _digest(manifest: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the manifest, then every tensor's key, dtype, shape and bytes (keys sorted)."""
    h = hashlib.sha256(manifest.encode("utf-8"))
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"{k}|{t.dtype}|{list(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_dynamic(dyn: DynamicQuantModel, path: str | Path, *, model_spec: str | None = None) -> dict:
    """Write ``dyn`` to ``path`` (safetensors + JSON manifest, module docstring), atomically.

    Args:
        dyn: a calibrated (usually trained) :class:`DynamicQuantModel`.
        path: the file to write.
        model_spec: zoo name or ``file.py:Name`` of the float model, recorded so that
            :func:`load_dynamic` can rebuild it without being given the model.

    Returns:
        ``{"path", "bytes", "tensors", "layers"}`` (``layers``: quantized layers, fixed and dynamic).

    Raises:
        UnsupportedError: ``dyn`` is not a calibrated DynamicQuantModel.

    Example:
        >>> save_dynamic(torch.nn.Linear(2, 2), "x.safetensors")
        Traceback (most recent call last):
        ...
        lowbit.errors.UnsupportedError: save_dynamic needs a DynamicQuantModel (lowbit.prepare_dynamic), got Linear
    """
    from safetensors.torch import save as st_save

    from ... import __version__
    from ...errors import UnsupportedError

    if not isinstance(dyn, DynamicQuantModel):
        raise UnsupportedError(f"save_dynamic needs a DynamicQuantModel (lowbit.prepare_dynamic), got {type(dyn).__name__}")
    layers = {n: m for n, m in dyn.model.named_modules() if isinstance(m, DynamicQuantLayer)}
    raw = [n for n, m in layers.items() if not m.calibrated]
    if raw:
        raise UnsupportedError(f"layer {raw[0]!r} is not calibrated; save a model built by lowbit.prepare_dynamic")
    info = dict(getattr(dyn, "lowbit_info", None) or {})
    observers = {m.observer for m in layers.values()}
    manifest = {
        "format": "lowbit-dynamic",
        "lowbit_version": __version__,
        "model": model_spec,
        "config": info.get("config"),
        "bits": list(dyn.bits),
        "fixed_bits": dyn.fixed_bits,
        "trunk": list(dyn.trunk),
        "hidden": dyn.controller.hidden,
        "grid": dyn.controller.grid,
        "observer": observers.pop() if len(observers) == 1 else "mse",
        "input_shape": list(dyn.input_shape),
        "fold_bn": "bn_folded" in info,
        "detach_trunk": bool(dyn.detach_trunk),
        "tau": float(dyn.tau),
        "input_signed": {n: bool(m.input_signed) for n, m in layers.items()},
        "macs": {n: m.macs for n, m in layers.items()},
        "info": info,
    }
    manifest_s = json.dumps(manifest, sort_keys=True)
    # clones: safetensors refuses tensors that share storage, and every tensor must be contiguous
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in dyn.state_dict().items()}
    meta = {"lowbit_dynamic_format": str(FORMAT_VERSION), "lowbit_manifest": manifest_s,
            "lowbit_sha256": _digest(manifest_s, tensors)}
    blob = st_save(tensors, metadata=meta)
    atomic_write_bytes(path, blob)
    return {"path": str(path), "bytes": len(blob), "tensors": len(tensors), "layers": len(layers)}


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load as st_load

    if not path.is_file():
        raise CheckpointError(f"dynamic model file {path} does not exist")
    raw = path.read_bytes()
    bad = f"{path} is not a lowbit dynamic model (written by lowbit.save_dynamic / lowbit dynamic train --out)"
    if len(raw) < 8:
        raise CheckpointError(f"{bad}: {len(raw)} bytes")
    (hlen,) = struct.unpack("<Q", raw[:8])
    if 8 + hlen > len(raw):
        raise CheckpointError(f"{bad}: no safetensors header (or the file is truncated)")
    try:
        meta = json.loads(raw[8 : 8 + hlen]).get("__metadata__") or {}
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise CheckpointError(f"{bad}: unreadable header") from None
    if "lowbit_dynamic_format" not in meta:
        hint = "; it is a packed static checkpoint: load it with lowbit.load" if "lowbit_format" in meta else ""
        raise CheckpointError(f"{bad}: no lowbit_dynamic_format in its metadata{hint}")
    if meta["lowbit_dynamic_format"] != str(FORMAT_VERSION):
        raise CheckpointError(f"{path} uses dynamic format version {meta['lowbit_dynamic_format']!r}; this lowbit reads "
                              f"version {FORMAT_VERSION} — upgrade lowbit to load it")
    try:
        tensors = st_load(raw)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}: {e})") from None
    manifest_s = meta.get("lowbit_manifest", "")
    if _digest(manifest_s, tensors) != meta.get("lowbit_sha256"):
        raise CheckpointError(f"{path} failed its SHA-256 check: the file was modified or damaged after saving")
    try:
        manifest = json.loads(manifest_s)
    except ValueError:
        raise CheckpointError(f"{path}: the manifest is not valid JSON") from None
    return manifest, tensors


def read_manifest(path: str | Path) -> dict:
    """The JSON manifest of a dynamic model file (checked like :func:`load_dynamic` checks it).

    Example:
        >>> read_manifest("/nonexistent.safetensors")
        Traceback (most recent call last):
        ...
        lowbit.export.checkpoint.CheckpointError: dynamic model file /nonexistent.safetensors does not exist
    """
    return _read(Path(path))[0]


def load_dynamic(path: str | Path, model: nn.Module | None = None) -> DynamicQuantModel:
    """Load a file written by :func:`save_dynamic` as a :class:`DynamicQuantModel` in eval mode,
    bit-identical to the saved one (module docstring).

    Args:
        path: the file.
        model: the float model (architecture only: every weight comes from the file); default:
            rebuilt from the manifest's model spec.

    Raises:
        CheckpointError: a missing, foreign, corrupt or tampered-with file, or a model it does not fit.

    Example:
        >>> load_dynamic("/nonexistent.safetensors")
        Traceback (most recent call last):
        ...
        lowbit.export.checkpoint.CheckpointError: dynamic model file /nonexistent.safetensors does not exist
    """
    from ...zoo.resolve import load_model_spec

    path = Path(path)
    m, state = _read(path)
    try:
        bits, fixed_bits, trunk, hidden = m["bits"], m["fixed_bits"], m["trunk"], m["hidden"]
        observer, shape, signed, macs = m["observer"], m["input_shape"], m["input_signed"], m["macs"]
        grid = int(m.get("grid", 1))
        fold, detach, tau, info = bool(m["fold_bn"]), bool(m["detach_trunk"]), float(m["tau"]), dict(m["info"])
        config = DynamicConfig.from_dict(m["config"]) if m.get("config") is not None else None
        example = torch.zeros(1, *(int(d) for d in shape))
    except (KeyError, TypeError, ValueError, LowbitError) as e:
        raise CheckpointError(f"{path}: the manifest is incomplete or invalid ({type(e).__name__}: {e})") from None
    if model is None:
        if not m.get("model"):
            raise CheckpointError(f"{path} records no model spec; pass model=<the float nn.Module it was built from>")
        model = load_model_spec(m["model"], pretrained=False)
    float_model = copy.deepcopy(model).eval()
    try:
        if fold:  # the same structure prepare built (its values are overwritten by the file's)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # prepare already warned when folding had to be skipped
                float_model = FoldBatchNorm().apply(float_model)
        dyn = DynamicQuantModel(float_model, example, bits=bits, trunk=trunk, hidden=hidden, fixed_bits=fixed_bits, observer=observer,
                                 grid=grid)
    except LowbitError as e:
        raise CheckpointError(f"{path} does not fit this model: {e}") from None
    layers = {n: mod for n, mod in dyn.model.named_modules() if isinstance(mod, DynamicQuantLayer)}
    if set(layers) != set(signed) or set(layers) != set(macs):
        raise CheckpointError(f"{path} does not fit this model: its quantized layers {sorted(signed)} vs the model's {sorted(layers)}")
    for name, layer in layers.items():
        grids = []
        for k, b in enumerate(layer.bits):
            key = f"model.{name}.input_quants.{k}"
            if f"{key}.scale" not in state or f"{key}.zero_point" not in state:
                raise CheckpointError(f"{path} does not fit this model: no input grid {key}")
            grids.append(LSQQuant(input_spec(b, bool(signed[name]), observer), state[f"{key}.scale"], state[f"{key}.zero_point"]))
        layer.input_quants = nn.ModuleList(grids)
        layer.input_signed, layer.calibrated, layer.macs = bool(signed[name]), True, macs[name]
    try:
        load_weights_into(dyn, state, source=str(path))
    except WeightsError as e:
        raise CheckpointError(str(e)) from None
    dyn.tau, dyn.detach_trunk = tau, detach
    dyn.lowbit_info = {**info, "config": config.to_dict() if config is not None else None, "model": m.get("model")}
    return dyn.eval()

