"""Compressed model file (``.lbc``): sparse, weight-shared and Huffman-coded weights (Deep Compression's
storage, Han et al. 2016 §4) that load back to the identical float model. Never pickles.

Per Conv / Linear weight ``W`` (flattened row-major):

* **values** — ``codebook`` when ``W`` takes at most 256 distinct values (k-means sharing, or any
  quantized weight): the sorted distinct values ``C`` (fp32) and one symbol ``s_i`` with ``W_i = C[s_i]``;
  otherwise ``float32`` values;
* **layout** — ``dense`` (every entry) or ``relative`` (only the nonzeros, each with the gap to the previous
  one in ``b`` bits, a filler zero inserted when a gap exceeds ``2^b - 1``: Han's relative index; ``b`` is
  chosen per layer to minimize the stored bytes);
* **coding** — ``huffman`` (canonical Huffman code per stream, lowbit.export.huffman) or ``fixed``
  (``ceil(log2 K)``-bit symbols, ``b``-bit gaps, bit-packed).

Every other tensor (biases, BatchNorm) is stored as raw fp32. ``auto`` picks, per layer, the smallest of the
allowed choices. The file: ``b"LBDC"``, version byte, manifest length (u32), the zlib-compressed JSON
manifest, payload length (u64), the payload, and the SHA-256 of everything before it.

Example:
    >>> import tempfile, os, torch
    >>> from lowbit.zoo.models import FmnistMLP
    >>> torch.manual_seed(0) and None
    >>> m = FmnistMLP()
    >>> with torch.no_grad():
    ...     _ = m.fc1.weight.mul_(torch.rand_like(m.fc1.weight) > 0.9)      # 90 % zeros
    >>> path = os.path.join(tempfile.mkdtemp(), "mlp.lbc")
    >>> info = save_compressed(m, path)
    >>> info["layers"]["fc1"]["layout"], info["file_bytes"] < 0.25 * 4 * sum(p.numel() for p in m.parameters())
    ('relative', True)
    >>> m2 = load_compressed(path, model=FmnistMLP())
    >>> x = torch.randn(2, 1, 28, 28); torch.equal(m(x), m2(x))
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_write_bytes
from .checkpoint import CheckpointError
from .huffman import HuffmanStream, huffman_decode, huffman_encode
from .sparse import relative_index_decode, relative_index_encode

MAGIC = b"LBDC"
FORMAT_VERSION = 1
LAYOUTS = ("auto", "dense", "relative")
CODINGS = ("huffman", "fixed")
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


class _Payload:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def put(self, data: bytes) -> list[int]:
        span = [self.size, len(data)]
        self.parts.append(data)
        self.size += len(data)
        return span


def _pack_fixed(symbols: np.ndarray, bits: int) -> bytes:
    if symbols.size == 0:
        return b""
    bitarr = ((symbols[:, None].astype(np.uint64) >> np.arange(bits - 1, -1, -1, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(bitarr.reshape(-1)).tobytes()


def _unpack_fixed(data: bytes, bits: int, count: int) -> np.ndarray:
    need = math.ceil(count * bits / 8)
    if len(data) < need:
        raise CheckpointError(f"a fixed-width stream is truncated ({len(data)} of {need} bytes); re-save the file")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: count * bits].reshape(count, bits).astype(np.int64)
    return (flat << np.arange(bits - 1, -1, -1, dtype=np.int64)).sum(1)


def _code(symbols: np.ndarray, alphabet: int, coding: str) -> tuple[bytes, dict]:
    """One integer stream, coded: ``(bytes, manifest entry)``."""
    if coding == "huffman":
        return huffman_encode(symbols, alphabet).to_bytes(), {"coding": "huffman"}
    bits = max(1, math.ceil(math.log2(max(2, alphabet))))
    return _pack_fixed(symbols, bits), {"coding": "fixed", "bits": bits, "count": int(symbols.size)}


def _decode(data: bytes, entry: dict) -> np.ndarray:
    if entry["coding"] == "huffman":
        return huffman_decode(HuffmanStream.from_bytes(data))
    return _unpack_fixed(data, int(entry["bits"]), int(entry["count"]))


def _encode_weight(w: torch.Tensor, *, layout: str, coding: str, codebook: bool, index_bits: int | None) -> tuple[dict, list[bytes]]:
    """Every allowed encoding of one weight, the smallest kept: ``(entry, chunks)`` (the entry's spans are
    filled in by the caller; ``chunks`` are in the order of ``entry['streams']``)."""
    flat = w.detach().reshape(-1).float().contiguous()
    uniq = torch.unique(flat)
    zeros = int((flat == 0).sum())
    # without zeros a relative index has nothing to skip: dense is the only layout
    layouts = ("dense",) if not zeros else ("dense", "relative") if layout == "auto" else (layout,)
    gap_bits = [index_bits] if index_bits else range(1, 9)
    candidates: list[tuple[dict, list[bytes]]] = []
    if codebook and uniq.numel() <= 256:
        symbols = torch.searchsorted(uniq, flat).numpy().astype(np.int64)
        k = uniq.numel()
        cb_bytes = uniq.numpy().astype("<f4").tobytes()
        if "dense" in layouts:
            data, ent = _code(symbols, k, coding)
            candidates.append(({"values": "codebook", "layout": "dense", "k": k, "streams": ["codebook", "symbols"], "symbols": ent},
                               [cb_bytes, data]))
        if "relative" in layouts:
            zero_sym = int(torch.searchsorted(uniq, torch.tensor(0.0)))
            for b in gap_bits:
                gaps, vals = relative_index_encode(symbols, b, zero=zero_sym)
                gdata, gent = _code(gaps, 2**b, coding)
                vdata, vent = _code(vals, k, coding)
                candidates.append(({"values": "codebook", "layout": "relative", "k": k, "zero": zero_sym, "index_bits": b,
                                    "streams": ["codebook", "symbols", "gaps"], "symbols": vent, "gaps": gent}, [cb_bytes, vdata, gdata]))
    if not candidates:  # fp32 values: too many distinct values, or the codebook is off
        arr = flat.numpy().astype("<f4")
        if "dense" in layouts:
            candidates.append(({"values": "float32", "layout": "dense", "streams": ["floats"]}, [arr.tobytes()]))
        if "relative" in layouts:
            nz = arr[arr != 0].tobytes()
            for b in gap_bits:
                gaps, kind = relative_index_encode((arr != 0).astype(np.int64), b, zero=0)  # kind 1 = a stored float, 0 = filler
                gdata, gent = _code(gaps, 2**b, coding)
                vdata, vent = _code(kind, 2, coding)
                candidates.append(({"values": "float32", "layout": "relative", "index_bits": b, "streams": ["floats", "kind", "gaps"],
                                    "kind": vent, "gaps": gent}, [nz, vdata, gdata]))
    entry, chunks = min(candidates, key=lambda c: sum(map(len, c[1])))
    entry.update(shape=list(w.shape), zeros=zeros)
    return entry, chunks


def _module_record(m: nn.Module) -> dict | None:
    if isinstance(m, nn.Conv1d | nn.Conv2d):
        return {"type": type(m).__name__, "in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size),
                "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
                "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None}
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        return {"type": type(m).__name__, "features": m.num_features}
    if isinstance(m, nn.Identity):
        return {"type": "Identity"}
    from ..algorithms.lowrank.factorize import LowRankSequential

    if isinstance(m, LowRankSequential):  # a factorized layer: its factors are recorded as its children
        return {"type": "LowRankSequential", "method": m.method, "size": len(m)}
    return None


def _build_module(rec: dict) -> nn.Module:
    t = rec["type"]
    if t in ("Conv1d", "Conv2d"):
        cls = nn.Conv1d if t == "Conv1d" else nn.Conv2d
        return cls(rec["in"], rec["out"], tuple(rec["kernel"]), tuple(rec["stride"]),
                   tuple(rec["padding"]) if isinstance(rec["padding"], list) else rec["padding"], tuple(rec["dilation"]),
                   rec["groups"], rec["bias"])
    if t == "Linear":
        return nn.Linear(rec["in"], rec["out"], rec["bias"])
    if t in ("BatchNorm1d", "BatchNorm2d"):
        return (nn.BatchNorm1d if t == "BatchNorm1d" else nn.BatchNorm2d)(rec["features"])
    if t == "Identity":
        return nn.Identity()
    if t == "LowRankSequential":  # placeholders, replaced by the recorded children (their names sort after it)
        from ..algorithms.lowrank.factorize import LowRankSequential

        return LowRankSequential(*(nn.Identity() for _ in range(int(rec["size"]))), method=str(rec["method"]))
    raise CheckpointError(f"the file records a module of unknown type {t!r}; it was written by a newer lowbit")


def encode_compressed(model: nn.Module, *, model_spec: str | None = None, layout: str = "auto", coding: str = "huffman",
                      codebook: bool = True, index_bits: int | None = None) -> tuple[bytes, dict]:
    """The ``.lbc`` bytes of ``model`` and the size report (see :func:`save_compressed`)."""
    from .. import __version__

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if coding not in CODINGS:
        raise ConfigError(f"coding must be one of {list(CODINGS)}, got {coding!r}")
    if index_bits is not None and (isinstance(index_bits, bool) or not isinstance(index_bits, int) or not 1 <= index_bits <= 8):
        raise ConfigError(f"index_bits must be an integer in 1..8 or None (chosen per layer), got {index_bits!r}")
    if any(hasattr(m, "weight_mask") or hasattr(m, "weight_centroids") for m in model.modules()):
        raise ConfigError("the model still carries pruning masks or shared-weight hooks; finish the job first "
                          "(lowbit.prune / lowbit.compress return plain models, or call remove_masks / unshare)")
    payload = _Payload()
    layers, floats, ints = {}, {}, {}
    covered = set()
    report = {}
    for name, m in model.named_modules():
        if not isinstance(m, _WEIGHTED) or not isinstance(getattr(m, "weight", None), torch.Tensor):
            continue
        entry, chunks = _encode_weight(m.weight, layout=layout, coding=coding, codebook=codebook, index_bits=index_bits)
        spans = {}
        for key, chunk in zip(entry["streams"], chunks, strict=True):
            spans[key] = payload.put(chunk)
        entry["spans"] = spans
        layers[name] = entry
        covered.add(f"{name}.weight" if name else "weight")
        report[name] = {"layout": entry["layout"], "values": entry["values"], "bytes": sum(len(c) for c in chunks),
                        "streams": {k: len(c) for k, c in zip(entry["streams"], chunks, strict=True)},
                        "weights": m.weight.numel(), "zeros": entry["zeros"], "index_bits": entry.get("index_bits")}
    other = 0
    for key, t in model.state_dict().items():
        if key in covered or t is None:
            continue
        if t.is_floating_point():
            data = t.detach().float().contiguous().numpy().astype("<f4").tobytes()
            floats[key] = [*payload.put(data), list(t.shape), str(t.dtype).replace("torch.", "")]
            other += len(data)
        else:
            ints[key] = [t.reshape(-1).tolist(), list(t.shape), str(t.dtype).replace("torch.", "")]
    modules = {n: r for n, m in model.named_modules() if n and (r := _module_record(m)) is not None}
    manifest = json.dumps({"format": "lowbit-compressed", "format_version": FORMAT_VERSION, "lowbit_version": __version__,
                           "model": model_spec, "modules": modules, "layers": layers, "floats": floats, "ints": ints},
                          sort_keys=True, separators=(",", ":"))
    mz = zlib.compress(manifest.encode("utf-8"), 9)
    body = MAGIC + bytes([FORMAT_VERSION]) + struct.pack("<I", len(mz)) + mz + struct.pack("<Q", payload.size) + b"".join(payload.parts)
    blob = body + hashlib.sha256(body).digest()
    dense = sum(t.numel() * 4 for t in model.state_dict().values() if t is not None and t.is_floating_point())
    info = {"file_bytes": len(blob), "fp32_bytes": dense, "ratio_vs_fp32": dense / len(blob), "layers": report,
            "weight_bytes": sum(r["bytes"] for r in report.values()), "other_bytes": other, "manifest_bytes": len(mz),
            "layout": layout, "coding": coding, "codebook": codebook}
    return blob, info


def save_compressed(model: nn.Module, path: str | Path, *, model_spec: str | None = None, layout: str = "auto",
                    coding: str = "huffman", codebook: bool = True, index_bits: int | None = None) -> dict:
    """Write ``model`` (any float model: pruned, weight-shared, channel-pruned, BN-folded) as a compressed
    ``.lbc`` file, atomically.

    Args:
        model: a plain model (no pruning masks / sharing hooks left).
        path: output file.
        model_spec: zoo name or ``file.py:Name`` that rebuilds the architecture on load (recorded module
            shapes adapt it to pruned channel counts and folded BatchNorms).
        layout: ``auto`` (per layer, the smaller of ``dense`` / ``relative``), ``dense`` or ``relative``.
        coding: ``huffman`` or ``fixed``.
        codebook: store weights with <= 256 distinct values as codebook symbols (False: raw fp32 values).
        index_bits: relative-index gap width 1..8 (None: the best per layer).

    Returns:
        the size report: ``file_bytes``, ``fp32_bytes`` (the same tensors as dense fp32), ``ratio_vs_fp32``,
        ``weight_bytes``, ``other_bytes``, ``manifest_bytes`` and per layer its layout, values, bytes per stream.
    """
    blob, info = encode_compressed(model, model_spec=model_spec, layout=layout, coding=coding, codebook=codebook,
                                   index_bits=index_bits)
    atomic_write_bytes(path, blob)
    info["path"] = str(path)
    return info


def read_compressed(path: str | Path) -> tuple[dict, bytes]:
    """Verify and parse an ``.lbc`` file: ``(manifest, payload)``. Raises CheckpointError when damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    raw = path.read_bytes()
    if raw[:4] != MAGIC:
        raise CheckpointError(f"{path} is not a lowbit compressed file (.lbc written by lowbit.save_compressed)")
    if len(raw) < 4 + 1 + 4 + 8 + 32:
        raise CheckpointError(f"{path} is truncated ({len(raw)} bytes); re-save it")
    body, digest = raw[:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path} failed its SHA-256 check: the file was modified, truncated or damaged after saving; re-save it")
    version = body[4]
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} uses compressed format version {version}; this lowbit reads up to {FORMAT_VERSION}")
    (mlen,) = struct.unpack("<I", body[5:9])
    try:
        manifest = json.loads(zlib.decompress(body[9:9 + mlen]).decode("utf-8"))
        (plen,) = struct.unpack("<Q", body[9 + mlen:17 + mlen])
    except (ValueError, zlib.error, struct.error):
        raise CheckpointError(f"{path}: the manifest is damaged; re-save the file") from None
    payload = body[17 + mlen:]
    if len(payload) != plen:
        raise CheckpointError(f"{path}: payload is {len(payload)} bytes, the header says {plen}; re-save the file")
    return manifest, payload


def _decode_weight(entry: dict, payload: bytes) -> torch.Tensor:
    def chunk(key: str) -> bytes:
        off, n = entry["spans"][key]
        if off + n > len(payload):
            raise CheckpointError("a stream points past the end of the payload; re-save the file")
        return payload[off:off + n]

    shape = entry["shape"]
    numel = int(np.prod(shape)) if shape else 1
    if entry["values"] == "codebook":
        cb = np.frombuffer(chunk("codebook"), dtype="<f4")
        if cb.size != entry["k"]:
            raise CheckpointError(f"codebook holds {cb.size} values, the manifest says {entry['k']}; re-save the file")
        syms = _decode(chunk("symbols"), entry["symbols"])
        if entry["layout"] == "relative":
            gaps = _decode(chunk("gaps"), entry["gaps"])
            syms = relative_index_decode(gaps, syms, numel, zero=entry["zero"])
        if syms.size != numel or (syms.size and (syms.min() < 0 or syms.max() >= cb.size)):
            raise CheckpointError("decoded symbols do not fit the layer or its codebook; re-save the file")
        out = cb[syms]
    else:
        vals = np.frombuffer(chunk("floats"), dtype="<f4")
        if entry["layout"] == "dense":
            out = vals
        else:
            kind = _decode(chunk("kind"), entry["kind"])
            gaps = _decode(chunk("gaps"), entry["gaps"])
            mask = relative_index_decode(gaps, kind, numel, zero=0)
            if int(mask.sum()) != vals.size:
                raise CheckpointError("the sparse index and the stored values disagree; re-save the file")
            out = np.zeros(numel, dtype="<f4")
            out[mask.astype(bool)] = vals
    if out.size != numel:
        raise CheckpointError(f"a weight decodes to {out.size} values, its shape {shape} needs {numel}; re-save the file")
    return torch.from_numpy(np.array(out, dtype=np.float32)).reshape(shape)


def load_compressed(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Load an ``.lbc`` file into a float model identical to the one saved (same outputs, bit for bit).

    Args:
        path: the file written by :func:`save_compressed`.
        model: skeleton of the architecture (default: rebuilt from the recorded model spec); Conv / Linear /
            BatchNorm modules whose recorded shape differs (channel-pruned, BN folded) are rebuilt to match, and
            layers the file holds factorized (low-rank chains) become those chains.
    """
    from ..transform import set_submodule
    from ..zoo.resolve import load_model_spec

    manifest, payload = read_compressed(path)
    if model is None:
        if not manifest.get("model"):
            raise ConfigError(f"{path} records no model spec; pass model=<float nn.Module of the same architecture>")
        model = load_model_spec(manifest["model"], pretrained=False)
    for name, rec in sorted(manifest["modules"].items()):  # parents before children ("a.conv" < "a.conv.0")
        try:
            cur = model.get_submodule(name)
        except AttributeError:
            cur = None
        if cur is None:
            raise CheckpointError(f"{path}: module {name} is not in the given model; pass the architecture it was saved from")
        if _module_record(cur) != rec:
            set_submodule(model, name, _build_module(rec))
    state = {}
    for name, entry in manifest["layers"].items():
        state[f"{name}.weight" if name else "weight"] = _decode_weight(entry, payload)
    for key, (off, n, shape, dtype) in manifest["floats"].items():
        if off + n > len(payload):
            raise CheckpointError(f"{path}: tensor {key} points past the payload; re-save the file")
        t = torch.from_numpy(np.frombuffer(payload[off:off + n], dtype="<f4").copy()).reshape(shape)
        state[key] = t.to(getattr(torch, dtype))
    for key, (values, shape, dtype) in manifest["ints"].items():
        state[key] = torch.tensor(values, dtype=getattr(torch, dtype)).reshape(shape)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the model: {str(e).splitlines()[0]}; pass the architecture it was saved from") from None
    model.eval()
    return model
