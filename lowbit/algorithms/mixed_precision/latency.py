"""Hardware-aware costs: a per-layer latency table measured on the deployment runtime (ONNX Runtime, CPU).

What the runtime can execute decides what is worth measuring. ONNX Runtime's CPU provider runs a
QDQ layer whose weights and input activations are both on grids of at most 8 bits as one int8
kernel (``QLinearConv`` / ``QLinearMatMul``; a 2-, 4- or 6-bit grid is stored in int8 and runs
at int8 speed), a layer with float weights or float activations as a float kernel, and has no
kernel for integer grids wider than 8 bits or for per-group weights (the exporter refuses those). So each candidate ``(b_w, b_a)`` maps to a
*kernel* — ``int8`` or ``float`` — by :func:`kernel_of`, and the table holds one number per
layer and kernel.

Measurement (the model quantized and calibrated once, exported with ``float_layers``): ``T_q``,
the end-to-end latency with every layer int8; ``T_l``, the same with layer ``l`` alone in float;
``T_f``, every layer float. All are timed interleaved in one run (median of ``repeats`` rounds of
``calls`` calls each). The table's additive model is

    T(plan) = T_q + sum_{l float in plan} (T_l - T_q)

i.e. ``cost(l, int8) = T_q / L`` and ``cost(l, float) = T_q / L + (T_l - T_q)``, so the MILP's
summed cost *is* the predicted latency. ``T_f`` is kept to check the model at the far end
(``predict(all float)`` vs ``T_f``).

A table records the machine (CPU model and int8 features, cores), the runtime and its version,
the thread count, the batch size and a fingerprint of the model's layers; :meth:`LatencyTable.check`
refuses a table measured anywhere else (:class:`LatencyTableMismatch`), and
:func:`cached_latency_table` re-measures instead of reusing it.

Example:
    >>> t = LatencyTable(model_key="k", machine=machine_fingerprint(2), batch=1, threads=2,
    ...                  int8_seconds=1.0e-4, float_seconds=3.0e-4, layers={"a": 1.0e-4, "b": 0.5e-4})
    >>> round(t.predict({"a": (32, 32), "b": (4, 8)}) * 1e6, 1)   # T_q + delta_a, in microseconds
    200.0
    >>> kernel_of((4, 8)), kernel_of((32, 32))
    ('int8', 'float')
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ...errors import ConfigError, UnsupportedError
from .search import FLOAT

RUNTIME = "onnxruntime-cpu"
KERNELS = ("int8", "float")


class LatencyTableMismatch(ConfigError):
    """A latency table measured on another machine, runtime, thread count, batch size or model."""


def kernel_of(pair: tuple[int, int], runtime: str = RUNTIME) -> str:
    """The kernel ``runtime`` runs a layer at ``pair = (b_w, b_a)`` with (module docstring).

    Raises:
        UnsupportedError: the runtime has no kernel for this pair (integer grids wider than 8 bits).
    """
    if runtime != RUNTIME:
        raise UnsupportedError(f"no latency model for runtime {runtime!r}; measured runtimes: {RUNTIME}")
    wb, ab = (int(v) for v in pair)
    if wb == FLOAT and ab == FLOAT:
        return "float"
    for kind, b in (("weight", wb), ("activation", ab)):
        if b != FLOAT and not 1 <= b <= 8:
            raise UnsupportedError(f"W{wb}A{ab}: ONNX Runtime (CPU) has no kernel for {b}-bit {kind}s (integer grids run "
                                   "as int8, i.e. 1 to 8 bits, or float = 32); drop this candidate for a latency budget")
    return "float" if FLOAT in (wb, ab) else "int8"  # a float side keeps ORT's float kernel


def unsupported_pairs(pairs, runtime: str = RUNTIME) -> list[tuple[int, int]]:
    """The candidate pairs ``runtime`` cannot execute (empty when all can)."""
    bad = []
    for p in pairs:
        try:
            kernel_of(p, runtime)
        except UnsupportedError:
            bad.append(tuple(p))
    return bad


def machine_fingerprint(threads: int) -> dict:
    """What a latency measurement depends on: CPU model and int8 features, core count, runtime
    version and intra-op threads."""
    from ...runtime import cpu_features

    f = cpu_features()
    try:
        import onnxruntime

        version = onnxruntime.__version__
    except ImportError:
        version = None
    return {"cpu": f.model, "arch": f.machine, "int8_features": sorted(k for k in ("avx2", "avx512f", "avx512_vnni", "avx_vnni",
            "amx_int8", "arm_dotprod", "arm_i8mm") if getattr(f, k)), "cores": os.cpu_count(), "runtime": RUNTIME,
            "runtime_version": version, "threads": int(threads)}


def model_key(model: nn.Module, layers: list[str], input_shape: tuple[int, ...]) -> str:
    """A short hash of the model's quantized layers (names, weight shapes) and the input shape."""
    mods = dict(model.named_modules())
    desc = [(n, tuple(mods[n].weight.shape)) for n in layers] + [tuple(input_shape[1:])]
    return hashlib.sha256(repr(desc).encode()).hexdigest()[:16]


@dataclass
class LatencyTable:
    """Measured latencies (seconds per call) of one model on one machine and runtime (module docstring).

    ``layers[l]`` is ``T_l - T_q``: the extra latency of running layer ``l`` in float.
    """

    model_key: str
    machine: dict
    batch: int
    threads: int
    int8_seconds: float
    float_seconds: float
    layers: dict[str, float]
    runtime: str = RUNTIME
    meta: dict = field(default_factory=dict)

    def cost(self, layer: str, pair: tuple[int, int]) -> float:
        """Seconds attributed to ``layer`` at ``pair`` (the costs of a plan sum to :meth:`predict`)."""
        if layer not in self.layers:
            raise ConfigError(f"the latency table has no layer {layer!r}; measured layers: {list(self.layers)}")
        share = self.int8_seconds / len(self.layers)
        return share + (self.layers[layer] if kernel_of(pair, self.runtime) == "float" else 0.0)

    def predict(self, bits: dict[str, tuple[int, int]]) -> float:
        """Predicted end-to-end seconds per call of a plan (every table layer must be in ``bits``)."""
        missing = sorted(set(self.layers) - set(bits))
        if missing:
            raise ConfigError(f"the plan has no width for layer(s) {missing[:4]} of the latency table")
        return sum(self.cost(n, bits[n]) for n in self.layers)

    def costs(self, pairs) -> dict[str, dict[tuple[int, int], float]]:
        """``{layer: {pair: seconds}}`` for :func:`~.search.search`'s ``latency=`` (raises for pairs the runtime cannot run)."""
        bad = unsupported_pairs(pairs, self.runtime)
        if bad:
            raise UnsupportedError(f"candidates {', '.join(f'W{w}A{a}' for w, a in bad)} cannot run on {self.runtime} "
                                   "(integer grids of 1 to 8 bits run as int8, 32 = float); drop them for a latency budget")
        return {n: {tuple(p): self.cost(n, p) for p in pairs} for n in self.layers}

    def check(self, machine: dict, key: str | None = None, batch: int | None = None) -> None:
        """Raise :class:`LatencyTableMismatch` unless this table was measured on ``machine`` (same
        runtime, version and threads), for the model ``key`` and at ``batch``."""
        diff = {k: (self.machine.get(k), v) for k, v in machine.items() if self.machine.get(k) != v}
        if diff:
            what = "; ".join(f"{k}: table {a!r}, here {b!r}" for k, (a, b) in diff.items())
            raise LatencyTableMismatch(f"the latency table was measured elsewhere ({what}); re-measure it on this machine "
                                       "(lowbit latency MODEL --out table.json, or delete it to let lowbit mixed re-measure)")
        if key is not None and key != self.model_key:
            raise LatencyTableMismatch(f"the latency table is for another model (layers fingerprint {self.model_key}, this model "
                                       f"{key}); re-measure it for this model")
        if batch is not None and batch != self.batch:
            raise LatencyTableMismatch(f"the latency table was measured at batch {self.batch}, not {batch}; re-measure at batch {batch}")

    def to_dict(self) -> dict:
        return {"format": "lowbit-latency-table/1", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> LatencyTable:
        if not isinstance(d, dict) or d.get("format") != "lowbit-latency-table/1":
            raise ConfigError("not a lowbit latency table (expected a JSON object with format lowbit-latency-table/1)")
        try:
            t = cls(model_key=str(d["model_key"]), machine=dict(d["machine"]), batch=int(d["batch"]), threads=int(d["threads"]),
                    int8_seconds=float(d["int8_seconds"]), float_seconds=float(d["float_seconds"]),
                    layers={str(k): float(v) for k, v in d["layers"].items()}, runtime=str(d.get("runtime", RUNTIME)),
                    meta=dict(d.get("meta", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"malformed latency table: {e!r}") from None
        if not t.layers or t.int8_seconds <= 0 or t.float_seconds <= 0:
            raise ConfigError("malformed latency table: no layers or non-positive latencies")
        return t

    def save(self, path: str | Path) -> None:
        from ...io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"latency table {path} does not exist; measure one with lowbit latency MODEL --out {path}") from None
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read latency table {path}: {e}") from None
        return cls.from_dict(d)


def _quantized_layers(qmodel: nn.Module) -> list[str]:
    from ...nn.layers import is_quant_module

    return [n for n, m in qmodel.named_modules() if is_quant_module(m)]


def quantized_model_key(qmodel: nn.Module, example: torch.Tensor) -> str:
    """:func:`model_key` of a quantized model's quantized layers (what a table's ``model_key`` is checked against)."""
    return model_key(qmodel, _quantized_layers(qmodel), tuple(example.shape))


@torch.no_grad()
def measure_latency_table(qmodel: nn.Module, example: torch.Tensor, *, batch: int = 1, threads: int = 2, repeats: int = 15,
                          calls: int | None = None) -> LatencyTable:
    """Measure the table of a quantized, calibrated model with 8-bit-or-narrower activations on this machine.

    Exports ``L + 2`` ONNX models (all int8, each layer alone float, all float) and times them
    interleaved on ONNX Runtime at ``batch`` (median of ``repeats`` rounds of ``calls`` calls).

    Example:
        >>> import lowbit, torch
        >>> from lowbit.zoo.models import FmnistMLP
        >>> q = lowbit.quantize_(FmnistMLP(), lowbit.load_recipe("w8a8"), data=[torch.randn(8, 1, 28, 28)])
        >>> t = measure_latency_table(q, torch.randn(1, 1, 28, 28), repeats=3)
        >>> sorted(t.layers) == ["fc1", "fc2"] and t.int8_seconds > 0
        True
    """
    from ...export import export_onnx
    from ...report.bench import interleaved_latency
    from ...runtime import OrtModel

    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    layers = _quantized_layers(qmodel)
    if not layers:
        raise ConfigError("the model has no quantized layers; quantize it (e.g. recipe w8a8) before measuring a latency table")
    x1 = example[:1]
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-latency-"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 7-bit saturation advice (export_onnx) concerns accuracy, not latency
        export_onnx(qmodel, x1, tmp / "int8.onnx")
        for i, n in enumerate(layers):
            export_onnx(qmodel, x1, tmp / f"float-{i}.onnx", float_layers=[n])
        export_onnx(qmodel, x1, tmp / "float.onnx", float_layers=layers)
    runners = {p.stem: OrtModel(p, threads=threads) for p in sorted(tmp.glob("*.onnx"))}
    x = x1.expand(batch, *x1.shape[1:]).contiguous().numpy()
    calls = calls or max(1, 64 // batch)
    lat = interleaved_latency(runners, x, repeats=repeats, calls=calls)
    for p in tmp.glob("*.onnx"):
        p.unlink()
    tmp.rmdir()
    t_q = lat["int8"]
    return LatencyTable(model_key=model_key(qmodel, layers, tuple(x.shape)), machine=machine_fingerprint(threads), batch=batch,
                        threads=threads, int8_seconds=t_q, float_seconds=lat["float"],
                        layers={n: lat[f"float-{i}"] - t_q for i, n in enumerate(layers)},
                        meta={"repeats": repeats, "calls": calls, "additive_float_prediction": t_q + sum(lat[f"float-{i}"] - t_q
                                                                                                   for i in range(len(layers)))})


def default_cache_dir() -> Path:
    """``$LOWBIT_CACHE/latency`` (default ``~/.cache/lowbit/latency``)."""
    root = os.environ.get("LOWBIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lowbit")
    return Path(root) / "latency"


def cached_latency_table(qmodel: nn.Module, example: torch.Tensor, *, batch: int = 1, threads: int = 2, cache_dir: str | Path | None = None,
                         remeasure: bool = False, **kw) -> tuple[LatencyTable, bool]:
    """The table for this model, machine, runtime, threads and batch from the cache, else measured
    and cached. Returns ``(table, measured_now)``; a cached table from elsewhere is never reused."""
    key = quantized_model_key(qmodel, example)
    machine = machine_fingerprint(threads)
    mhash = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir or default_cache_dir()) / mhash / f"{key}-b{batch}.json"
    if path.exists() and not remeasure:
        try:
            t = LatencyTable.load(path)
            t.check(machine, key, batch)
            return t, False
        except ConfigError:
            pass  # stale or foreign: re-measure below
    t = measure_latency_table(qmodel, example, batch=batch, threads=threads, **kw)
    t.save(path)
    return t, True


@torch.no_grad()
def measure_plan_latency(qmodel: nn.Module, float_model: nn.Module, example: torch.Tensor, *, batch: int = 1, threads: int = 2,
                         repeats: int = 15, calls: int | None = None) -> dict[str, float]:
    """End-to-end seconds per call of a quantized plan (its unquantized layers run float) and of the
    float model, both exported to ONNX and timed interleaved on ONNX Runtime at ``batch``:
    ``{"plan": s, "float": s, "ratio": plan / float}``. The check of :meth:`LatencyTable.predict`.

    Example:
        >>> import lowbit, torch
        >>> from lowbit.zoo.models import FmnistMLP
        >>> f = FmnistMLP()
        >>> q = lowbit.quantize_(FmnistMLP(), lowbit.load_recipe("w8a8"), data=[torch.randn(8, 1, 28, 28)])
        >>> r = measure_plan_latency(q, f, torch.randn(1, 1, 28, 28), repeats=3)
        >>> sorted(r)
        ['float', 'plan', 'ratio']
    """
    from ...export import export_onnx
    from ...report.bench import interleaved_latency
    from ...runtime import OrtModel

    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    x1 = example[:1]
    with tempfile.TemporaryDirectory(prefix="lowbit-latency-") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_onnx(qmodel, x1, Path(tmp) / "plan.onnx")
            export_onnx(float_model, x1, Path(tmp) / "float.onnx", precision="fp32")
        runners = {k: OrtModel(Path(tmp) / f"{k}.onnx", threads=threads) for k in ("plan", "float")}
        x = x1.expand(batch, *x1.shape[1:]).contiguous().numpy()
        lat = interleaved_latency(runners, x, repeats=repeats, calls=calls or max(1, 64 // batch))
    return {**lat, "ratio": lat["plan"] / lat["float"]}
