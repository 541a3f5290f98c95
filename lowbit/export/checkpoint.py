"""Packed checkpoint format (``.lowbit``): bit-packed weights + scales in safetensors, a JSON manifest,
and a SHA-256 over manifest and payload. Never pickles.

File layout: one safetensors file. Its ``__metadata__`` holds

* ``lowbit_format`` — format version (this code writes ``2`` and reads ``1`` and ``2``);
* ``lowbit_manifest_z`` — base64 of the zlib-compressed JSON manifest: lowbit version, model spec,
  the quantization config, a layer map (version 1 stored the JSON as is in ``lowbit_manifest``);
* ``lowbit_sha256`` — SHA-256 of ``manifest || tensor_0 bytes || tensor_1 bytes ...`` (keys sorted).

Tensors: ``codes`` (uint8: every layer's bit-packed codes ``q - qmin``, 1..8 bits, concatenated),
``scales`` (fp32: weight and activation scales), ``zero_points`` (int16; omitted for symmetric
signed weights, whose zero points are all 0), ``L/<layer>/qweight`` for codes above 8 bits, and
``floats`` (every other fp32 tensor — biases, float layers — concatenated; other dtypes as
``F/<key>``); the manifest's maps hold each entry's ``[offset, length]`` into them. Activation
quantizers that share another's grid are not stored (``load`` links them again). A ``b``-bit layer of ``n`` weights takes
``ceil(n b / 8)`` bytes plus its qparams.

Loading rebuilds the model (zoo name / ``file.py:Name`` from the manifest, or the skeleton you pass),
re-applies the config without calibration, writes ``W = S (q - Z)`` and pins the stored qparams, so
the loaded model's outputs are bit-identical to the saved one's.

Example:
    >>> import tempfile, os, torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> torch.manual_seed(0) and None
    >>> m = lowbit.quantize_(FmnistMLP(), lowbit.load_recipe("w4a8"), data=[torch.randn(8, 1, 28, 28)])
    >>> path = os.path.join(tempfile.mkdtemp(), "mlp.lowbit")
    >>> info = lowbit.save(m, path)
    >>> m2 = lowbit.load(path, model=FmnistMLP())
    >>> x = torch.randn(4, 1, 28, 28); torch.equal(m(x), m2(x))
    True
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import zlib
from pathlib import Path

import torch
from torch import nn

from ..config import QuantSpec
from ..errors import CalibrationError, ConfigError, LowbitError, UnsupportedError
from ..io import atomic_write_bytes
from ..nn import ActQuant, WeightQuant
from ..nn.layers import is_quant_module
from ..nn.learned import CodebookQuant
from ..quant import codebook_indices, dequantize, quantize
from .bitpack import pack_bits, unpack_bits

FORMAT_VERSION = 2  # 2: zlib-compressed manifest, float32 tensors concatenated; 1 is still read


class CheckpointError(LowbitError, ValueError):
    """A ``.lowbit`` file is corrupt, truncated, tampered with, or from a newer format."""


def _digest(manifest: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(manifest.encode("utf-8"))
    for k in sorted(tensors):
        h.update(k.encode("utf-8"))
        h.update(tensors[k].contiguous().view(torch.uint8).numpy().tobytes() if tensors[k].numel() else b"")
    return h.hexdigest()


def _config_of(model: nn.Module) -> dict:
    info = getattr(model, "lowbit_info", None)
    if not info or "config" not in info:
        raise UnsupportedError("lowbit.save needs a model quantized by lowbit.quantize_ (no lowbit_info found)")
    return info["config"]


def save(model: nn.Module, path: str | Path, *, model_spec: str | None = None) -> dict:
    """Write ``model`` (quantized by ``quantize_``) as a packed ``.lowbit`` file, atomically.

    Args:
        model: the quantized model.
        path: output file.
        model_spec: zoo name or ``file.py:Name`` that rebuilds the float architecture on load
            (stored in the manifest; without it ``load`` needs ``model=``).

    Returns the manifest (with ``payload_bytes`` and ``weight_bits_total``).
    """
    from safetensors.torch import save as st_save

    from .. import __version__

    config = _config_of(model)
    tensors: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    covered: set[str] = set()
    weight_bits_total = 0
    # one concatenated tensor per kind keeps the safetensors header small; the manifest holds offsets
    codes: list[torch.Tensor] = []
    scales: list[torch.Tensor] = []
    zps: list[torch.Tensor] = []
    sizes = {"codes": 0, "scales": 0, "zps": 0}

    def put(kind: str, store: list[torch.Tensor], t: torch.Tensor) -> list[int]:
        span = [sizes[kind], t.numel()]
        store.append(t.reshape(-1))
        sizes[kind] += t.numel()
        return span

    for name, m in model.named_modules():
        if not is_quant_module(m) or m.weight_quant is None:
            continue
        wq = m.weight_quant
        fmt = wq.spec.format
        if isinstance(wq, CodebookQuant):  # non-uniform values: indices into a float codebook
            idx = codebook_indices(m.weight.detach(), wq.codebook)
            layers[name] = {"shape": list(m.weight.shape), "bits": fmt.bits, "spec": wq.spec.to_dict(), "method": wq.method,
                            "codebook": put("scales", scales, wq.codebook.float()), "codes": put("codes", codes, pack_bits(idx, fmt.bits, 0))}
            weight_bits_total += m.weight.numel() * fmt.bits
            covered.add(f"{name}.weight" if name else "weight")
            continue
        scale, zp = wq.qparams(m.weight)
        q = quantize(m.weight.detach(), scale, zp, fmt, wq.spec.granularity)
        entry: dict = {"shape": list(m.weight.shape), "bits": fmt.bits, "spec": wq.spec.to_dict()}
        if fmt.bits == 2 and fmt.signed and bool(((q == 1) | (q == -1)).all()):  # binary weights: 1 bit each
            entry["binary"] = True
            entry["codes"] = put("codes", codes, pack_bits((q > 0).to(torch.int32), 1, 0))
            weight_bits_total -= m.weight.numel()  # counted at 2 below
        elif fmt.bits <= 8:
            entry["codes"] = put("codes", codes, pack_bits(q, fmt.bits, fmt.qmin))
        else:
            tensors[f"L/{name}/qweight"] = q.reshape(-1).to(torch.int16 if fmt.signed else torch.int32)
        iq = getattr(m, "input_quant", None)
        if iq is not None and iq.spec.dynamic:  # no qparams to store, but load must rebuild the quantizer
            entry["input"] = iq.spec.to_dict()
        entry["scale"] = put("scales", scales, scale.float())
        # symmetric signed grids have Z = 0 everywhere: nothing to store
        entry["zero_point"] = put("zps", zps, zp.to(torch.int16)) if bool((zp != 0).any()) else None
        weight_bits_total += m.weight.numel() * fmt.bits
        layers[name] = entry
        covered.add(f"{name}.weight" if name else "weight")
    activations: dict[str, dict] = {}
    shared = {name for name, m in model.named_modules() if isinstance(m, ActQuant) and m.grid_source is not None}
    for name, m in model.named_modules():
        if isinstance(m, ActQuant) and not m.spec.dynamic and name not in shared:
            if m.scale is None:
                raise CalibrationError(
                    f"activation quantizer {name} is not calibrated; calibrate the model (quantize_(..., data=...)) before saving"
                )
            activations[name] = {"shape": list(m.scale.shape), "scale": put("scales", scales, m.scale.float()),
                                 "zero_point": put("zps", zps, m.zero_point.to(torch.int16))}
    if codes:
        tensors["codes"] = torch.cat(codes)
    if scales:
        tensors["scales"] = torch.cat(scales)
    if zps:
        tensors["zero_points"] = torch.cat(zps)
    floats: list[torch.Tensor] = []
    float_map: dict[str, list] = {}
    sizes["floats"] = 0
    for key, t in model.state_dict().items():
        if key in covered or t is None:
            continue
        owner = key.rpartition(".")[0]
        if owner in activations or owner in shared or owner.endswith("weight_quant"):
            continue  # qparams stored above / recomputed from the packed codes / linked on load
        if t.dtype == torch.float32:
            float_map[key] = [*put("floats", floats, t.detach()), list(t.shape)]
        else:
            tensors[f"F/{key}"] = t.detach().contiguous()
    if floats:
        tensors["floats"] = torch.cat(floats)
    manifest = json.dumps({
        "format": "lowbit-packed", "format_version": FORMAT_VERSION, "lowbit_version": __version__,
        "model": model_spec, "config": config, "layers": layers, "activations": activations, "floats": float_map,
    }, sort_keys=True, separators=(",", ":"))
    packed = base64.b64encode(zlib.compress(manifest.encode("utf-8"), 9)).decode("ascii")
    meta = {"lowbit_format": str(FORMAT_VERSION), "lowbit_manifest_z": packed, "lowbit_sha256": _digest(manifest, tensors)}
    blob = st_save(tensors, metadata=meta)
    atomic_write_bytes(path, blob)
    out = json.loads(manifest)
    out.update(payload_bytes=len(blob), weight_bits_total=weight_bits_total)
    return out


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load as st_load

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    raw = path.read_bytes()
    if len(raw) < 8:
        raise CheckpointError(f"{path} is truncated ({len(raw)} bytes); re-save it with lowbit.save")
    (hlen,) = struct.unpack("<Q", raw[:8])
    if 8 + hlen > len(raw):
        raise CheckpointError(f"{path} is truncated: header says {hlen} bytes, file has {len(raw) - 8}")
    try:
        header = json.loads(raw[8 : 8 + hlen])
        meta = header.get("__metadata__") or {}
    except (ValueError, AttributeError):
        raise CheckpointError(f"{path} is not a lowbit packed checkpoint (unreadable header)") from None
    if "lowbit_dynamic_format" in meta:
        raise CheckpointError(f"{path} holds a dynamic model (per-sample bit widths), not a packed checkpoint; "
                              "load it with lowbit.load_dynamic")
    if "lowbit_format" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a lowbit packed checkpoint (no lowbit_format)")
    try:
        version = int(meta["lowbit_format"])
    except ValueError:
        raise CheckpointError(f"{path}: bad format version {meta['lowbit_format']!r}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses packed format version {version}; this lowbit reads up to {FORMAT_VERSION} — upgrade lowbit to load it"
        )
    try:
        tensors = st_load(raw)
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}: {e})") from None
    manifest_s = meta.get("lowbit_manifest", "")
    if "lowbit_manifest_z" in meta:
        try:
            manifest_s = zlib.decompress(base64.b64decode(meta["lowbit_manifest_z"], validate=True)).decode("utf-8")
        except (ValueError, zlib.error, UnicodeDecodeError):
            raise CheckpointError(f"{path}: the manifest is damaged (cannot decompress it)") from None
    if _digest(manifest_s, tensors) != meta.get("lowbit_sha256"):
        raise CheckpointError(f"{path} failed its SHA-256 check: the file was modified or damaged after saving")
    return json.loads(manifest_s), tensors


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load a ``.lowbit`` file into a quantized model with bit-identical outputs.

    Args:
        path: the file written by :func:`save`.
        model: float skeleton of the architecture; default: rebuilt from the manifest's model spec.
    """
    from ..algorithms.ptq import PTQConfig, quantize_ptq
    from ..api import quantize_
    from ..recipes import _config_classes
    from ..zoo.resolve import load_model_spec

    manifest, tensors = _read(Path(path))
    if model is None:
        if not manifest.get("model"):
            raise ConfigError(f"{path} records no model spec; pass model=<float nn.Module of the same architecture>")
        model = load_model_spec(manifest["model"], pretrained=False)
    kind = manifest["config"].get("kind", "ptq")
    classes = _config_classes()
    if kind == "transformer-ptq":  # sequential, data-driven: rebuild its layers from the manifest instead
        from ..algorithms.transformer.handler import rebuild_quantized

        floats = set(manifest.get("floats", {})) | {k[2:] for k in tensors if k.startswith("F/")}
        model = rebuild_quantized(model, classes[kind].from_dict(manifest["config"]), manifest["layers"], floats)
    elif kind not in classes or not issubclass(classes[kind], PTQConfig):
        raise CheckpointError(f"{path}: config kind {kind!r} is not known to this lowbit (known: {sorted(classes)})")
    elif type(config := classes[kind].from_dict(manifest["config"])) is PTQConfig:
        model = quantize_(model, config, calibrate=False)
    else:  # only the structure of algorithms built on PTQ: weights and qparams come from the file
        if getattr(config, "relu6_to_relu", False):
            from ..algorithms.dfq.handler import _relu6_to_relu

            _relu6_to_relu(model)
        model, info = quantize_ptq(model, config)
        info["config"] = config.to_dict()
        model.lowbit_info = info
    mods = dict(model.named_modules())
    with torch.no_grad():
        float_state = {k[2:]: v for k, v in tensors.items() if k.startswith("F/")}
        for key, (off, n, shape) in manifest.get("floats", {}).items():
            if off < 0 or off + n > tensors["floats"].numel():
                raise CheckpointError(f"{path}: manifest points outside the floats tensor")
            float_state[key] = tensors["floats"][off : off + n].reshape(shape)
        own = model.state_dict()
        missing = [k for k in float_state if k not in own]
        if missing:
            raise CheckpointError(f"{path} does not match the model: unknown tensors {missing[:6]}")
        for k, v in float_state.items():
            target = own[k]
            if target.shape != v.shape:
                raise CheckpointError(f"{path}: tensor {k} has shape {tuple(v.shape)}, model expects {tuple(target.shape)}")
            target.copy_(v)
        def span(kind: str, where: list[int]) -> torch.Tensor:
            off, n = where
            t = tensors[kind]
            if off < 0 or off + n > t.numel():
                raise CheckpointError(f"{path}: manifest points outside the {kind} tensor")
            return t[off : off + n]

        for name, entry in manifest["layers"].items():
            m = mods.get(name)
            if m is None or not is_quant_module(m) or m.weight_quant is None:
                raise CheckpointError(f"{path}: layer {name} is not a quantized layer of this model")
            wq = m.weight_quant
            if "codebook" in entry:
                spec = QuantSpec.from_dict(entry["spec"], f"{path}: layer {name}")
                codebook = span("scales", entry["codebook"])
                cq = CodebookQuant(spec, codebook, str(entry.get("method", "codebook")))
                shape = torch.Size(entry["shape"])
                if shape != m.weight.shape:
                    raise CheckpointError(f"{path}: layer {name} has shape {tuple(shape)}, the model {tuple(m.weight.shape)}")
                idx = unpack_bits(span("codes", entry["codes"]), cq.spec.format.bits, 0, math.prod(shape)).long()
                if int(idx.max()) >= codebook.numel():
                    raise CheckpointError(f"{path}: layer {name} indexes past its {codebook.numel()}-entry codebook")
                m.weight.copy_(codebook[idx].reshape(shape))
                m.weight_quant = cq
                continue
            if "spec" in entry:  # the layer's own grid (e.g. QAT-learned DoReFa: bits + 1, per tensor) wins over the config's
                spec = QuantSpec.from_dict(entry["spec"], f"{path}: layer {name}")
                if spec != wq.spec:
                    wq = m.weight_quant = WeightQuant(spec)
            fmt = wq.spec.format
            shape = torch.Size(entry["shape"])
            if shape != m.weight.shape or entry["bits"] != fmt.bits:
                raise CheckpointError(f"{path}: layer {name} ({entry['bits']}-bit {tuple(shape)}) does not match the model "
                                      f"({fmt.bits}-bit {tuple(m.weight.shape)})")
            if entry.get("binary"):
                q = 2 * unpack_bits(span("codes", entry["codes"]), 1, 0, math.prod(shape)).to(torch.int32) - 1
            elif fmt.bits <= 8:
                q = unpack_bits(span("codes", entry["codes"]), fmt.bits, fmt.qmin, math.prod(shape))
            else:
                q = tensors[f"L/{name}/qweight"].to(torch.int32)
            q = q.reshape(shape)
            pshape = wq.spec.granularity.param_shape(shape)
            scale = span("scales", entry["scale"]).reshape(pshape)
            zp = (span("zero_points", entry["zero_point"]).to(torch.int32) if entry["zero_point"] is not None
                  else torch.zeros(entry["scale"][1], dtype=torch.int32)).reshape(pshape)
            m.weight.copy_(dequantize(q, scale, zp, wq.spec.granularity))
            wq.set_qparams(m.weight, scale, zp)
        for name, entry in manifest["activations"].items():
            aq = mods.get(name)
            if not isinstance(aq, ActQuant):
                raise CheckpointError(f"{path}: activation quantizer {name} not found in the model")
            aq.set_qparams(span("scales", entry["scale"]).reshape(entry["shape"]),
                           span("zero_points", entry["zero_point"]).reshape(entry["shape"]))
        for m in mods.values():
            if isinstance(m, ActQuant) and m.grid_source is not None:
                m.set_qparams(m.grid_source.scale, m.grid_source.zero_point)
    model.eval()
    return model
