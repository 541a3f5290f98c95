"""Float vs quantized on a real runtime: latency ratio at batch 1 and 256, size on disk, BitOPs, energy.

Both models are exported to ONNX (float, and int8 QDQ) and timed in ONNX Runtime in one run:
median over ``repeats`` interleaved rounds, ``calls`` calls per round at batch 1. A model is called
*faster* only when its latency ratio is below ``0.95`` at **both** batch sizes; otherwise the verdict
names the batch size where it is not.

Example:
    >>> from lowbit.report.bench import verdict
    >>> verdict({"latency_ratio_b1": 0.6, "latency_ratio_b256": 1.02})
    'not faster: int8/float latency is 1.02 at batch 256'
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..export import export_onnx
from ..nn.layers import is_quant_module
from ..runtime import OrtModel
from .energy import model_energy
from .metrics import bitops

FASTER_BELOW = 0.95


def interleaved_latency(models: dict, x, repeats: int, calls: int) -> dict[str, float]:
    """Median seconds per call of each runner (``run_numpy``), interleaving the runners round by round
    so slow drifts of the machine hit all of them alike; 3 warm-up calls each."""
    for m in models.values():
        for _ in range(3):
            m.run_numpy(x)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                m.run_numpy(x)
            times[k].append((time.perf_counter() - t0) / calls)
    return {k: statistics.median(v) for k, v in times.items()}


COMPUTE_OPS = frozenset({"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcFusedConv", "Gemm", "FusedGemm", "QGemm", "MatMul",
                         "FusedMatMul", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeMatMul"})


def kernel_profile(path: str | Path, x, runs: int = 20, threads: int = 2) -> list[dict]:
    """ONNX Runtime's profiler on ``path``: the kernels of one run in execution order, each
    ``{"node", "op", "us", "weight"}`` with the median microseconds over ``runs`` runs (after 3 warm-up
    runs); ``weight`` is the initializer feeding the kernel's weight input in ORT's optimized graph."""
    import json

    import onnx
    import onnxruntime as ort

    work = Path(tempfile.mkdtemp(prefix="lowbit-prof-"))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.enable_profiling = True
    so.profile_file_prefix = str(work / "p")
    so.optimized_model_filepath = str(work / "optimized.onnx")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(3 + runs):
        sess.run(None, {name: x})
    events = [e for e in json.loads(Path(sess.end_profiling()).read_text())
              if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    weights = _weight_sources(onnx.load(str(work / "optimized.onnx"), load_external_data=False).graph)
    per_run = len(events) // (3 + runs)
    kernels = events[3 * per_run :]
    out = []
    for i in range(per_run):
        evs = kernels[i::per_run]
        node = evs[0]["name"][: -len("_kernel_time")]
        out.append({"node": node, "op": evs[0]["args"].get("op_name", "?"), "us": statistics.median(e["dur"] for e in evs),
                    "weight": weights.get(node)})
    return out


def _weight_sources(graph) -> dict[str, str]:
    """``{compute node: initializer name}`` following the weight input back through DQ / Transpose / Reorder."""
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    out = {}
    for n in graph.node:
        if n.op_type not in COMPUTE_OPS:
            continue
        idx = 3 if n.op_type in ("QLinearConv", "QLinearMatMul", "QGemm") else 1
        if len(n.input) <= idx:
            continue
        t = n.input[idx]
        for _ in range(4):
            if t in inits or t not in producer:
                break
            t = producer[t].input[0]
        if t in inits:
            out[n.name] = t
    return out


def onnx_module_path(node_name: str) -> str:
    """The torch module path in an ONNX node name written by ``torch.onnx.export``, whose scopes
    repeat the parent's prefix (``/layers/layers.0/conv1/Conv`` -> ``layers.0.conv1``).

    Example:
        >>> onnx_module_path("/blocks/blocks.0/block/block.2/Clip_output_0_nchwc")
        'blocks.0.block.2'
    """
    path: list[str] = []
    for seg in [p for p in node_name.removeprefix("fused ").split("/") if p][:-1]:
        if path and seg.startswith(path[-1] + "."):
            path[-1] = seg
        else:
            path.append(seg)
    return ".".join(path)


def layer_aliases(model: nn.Module) -> dict[str, str]:
    """``{module path: quantized layer}``: each quantized layer and the BatchNorm / activation modules
    that follow it alone (ONNX Runtime fuses them into the layer's kernel and names it after either)."""
    from ..nn.layers import is_quant_module
    from ..transform.graph import try_trace

    mods = dict(model.named_modules())
    layers = [n for n, m in mods.items() if is_quant_module(m)]
    aliases = {n: n for n in layers}
    gm = model if isinstance(model, torch.fx.GraphModule) else try_trace(model, "per-layer timing aliases")
    if gm is None:
        return aliases
    fusable = (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.Identity, nn.Hardtanh)
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in layers:
            cur = node
            while len(cur.users) == 1:
                (cur,) = cur.users
                if cur.op != "call_module" or not isinstance(mods.get(cur.target), fusable):
                    break
                aliases[cur.target] = node.target
    return aliases


def layer_timings(kernels: list[dict], aliases: dict[str, str]) -> tuple[dict[str, dict], float]:
    """Attribute compute kernels (conv / GEMM) to quantized layers — by their weight initializer
    (``layers.0.conv1.weight_quantized``) or else by the module path in the node name, through
    ``aliases`` — and sum every other kernel (quantize / dequantize / layout / add / pooling, and
    compute kernels that map to no layer) into the second return value."""
    layers: dict[str, dict] = {}
    other = 0.0
    for k in kernels:
        layer = None
        if k["op"] in COMPUTE_OPS:
            w = k.get("weight") or ""
            stem = w.removesuffix("_quantized").removesuffix(".weight")
            layer = aliases.get(stem) if w.endswith(("weight", "weight_quantized")) else None
            layer = layer or aliases.get(onnx_module_path(k["node"]))
        if layer is None:
            other += k["us"]
            continue
        row = layers.setdefault(layer, {"us": 0.0, "op": k["op"]})
        row["us"] += k["us"]
    return layers, other


def slow_layers(float_t: dict[str, dict], int8_t: dict[str, dict], threshold: float = FASTER_BELOW) -> list[dict]:
    """Layers whose int8 kernel time is not below ``threshold`` x their float kernel time.

    Example:
        >>> slow_layers({"a": {"us": 10, "op": "Conv"}, "b": {"us": 10, "op": "Conv"}}, {"a": {"us": 5, "op": "QLinearConv"}, "b": {"us": 12, "op": "Conv"}})
        [{'layer': 'b', 'ratio': 1.2, 'float_us': 10, 'int8_us': 12, 'int8_op': 'Conv'}]
    """
    rows = []
    for layer, f in float_t.items():
        q = int8_t.get(layer)
        if q is not None and f["us"] > 0 and q["us"] / f["us"] >= threshold:
            rows.append({"layer": layer, "ratio": q["us"] / f["us"], "float_us": f["us"], "int8_us": q["us"], "int8_op": q["op"]})
    return rows


def verdict(r: dict) -> str:
    """One line: ``faster`` only if both latency ratios are below 0.95."""
    slow = [(b, r[f"latency_ratio_b{b}"]) for b in (1, 256) if r[f"latency_ratio_b{b}"] >= FASTER_BELOW]
    if not slow:
        return f"faster: int8/float latency {r['latency_ratio_b1']:.2f} at batch 1, {r['latency_ratio_b256']:.2f} at batch 256"
    return "not faster: " + ", ".join(f"int8/float latency is {v:.2f} at batch {b}" for b, v in slow)


@torch.no_grad()
def benchmark(float_model: nn.Module, qmodel: nn.Module, inputs: torch.Tensor, *, repeats: int = 20, threads: int = 2,
              per_layer: bool = True, keep_slow_float: bool = False) -> dict:
    """Measure ``qmodel`` against ``float_model`` on ONNX Runtime; ``inputs`` needs >= 256 samples.

    With ``per_layer`` the ORT profiler times every layer at batch 256 in both models and
    ``slow_layers`` lists the quantized layers whose int8 kernels are not faster than float. With
    ``keep_slow_float`` those layers are exported in float (``float_layers``) and that model is timed
    too (``latency_ratio_*_keep_float``).
    """
    from ..errors import ConfigError

    if inputs.shape[0] < 256:
        raise ConfigError(f"benchmark needs at least 256 input samples for the batch-256 timing, got {inputs.shape[0]}")
    tmp = Path(tempfile.mkdtemp(prefix="lowbit-bench-"))
    export_onnx(float_model, inputs[:1], tmp / "fp32.onnx", precision="fp32")
    export_onnx(qmodel, inputs[:1], tmp / "int8.onnx")
    x = inputs.numpy()
    r: dict = {"runtime": "onnxruntime", "threads": threads}
    if per_layer:
        aliases = layer_aliases(qmodel)
        prof = {k: kernel_profile(tmp / f"{k}.onnx", x[:256], runs=max(5, repeats // 2), threads=threads) for k in ("fp32", "int8")}
        (t_f, other_f), (t_q, other_q) = (layer_timings(prof[k], aliases) for k in ("fp32", "int8"))
        r["layers"] = [{"layer": n, "float_us": t_f.get(n, {}).get("us"), "int8_us": t_q.get(n, {}).get("us"),
                        "float_op": t_f.get(n, {}).get("op"), "int8_op": t_q.get(n, {}).get("op")}
                       for n in dict.fromkeys(aliases.values())]
        missing = [row["layer"] for row in r["layers"] if row["float_us"] is None or row["int8_us"] is None]
        if missing:
            r["layers_note"] = f"no separate kernel time for {', '.join(missing[:6])} (fused by ONNX Runtime or not found)"
        r["other_kernels_us"] = {"fp32": other_f, "int8": other_q}
        r["slow_layers"] = slow_layers(t_f, t_q)
        if keep_slow_float and r["slow_layers"]:
            export_onnx(qmodel, inputs[:1], tmp / "int8-keep-float.onnx", float_layers=[s["layer"] for s in r["slow_layers"]])
    names = [p.stem for p in sorted(tmp.glob("*.onnx"))]
    models = {k: OrtModel(tmp / f"{k}.onnx", threads=threads) for k in names}
    lat1 = interleaved_latency(models, x[:1], repeats=repeats * 3, calls=10)
    lat256 = interleaved_latency(models, x[:256], repeats=repeats, calls=1)
    ops = bitops(qmodel, inputs[:1])
    r.update({
        "latency_ratio_b1": lat1["int8"] / lat1["fp32"], "latency_ratio_b256": lat256["int8"] / lat256["fp32"],
        "onnx_bytes": {k: (tmp / f"{k}.onnx").stat().st_size for k in models},
        "bitops": ops["bitops"], "fp32_bitops": ops["fp32_bitops"], "macs": ops["macs"],
        "energy_uj": {"fp32": model_energy(float_model, inputs[:1]), "int8": model_energy(qmodel, inputs[:1])},
    })
    if "int8-keep-float" in models:
        r["latency_ratio_b1_keep_float"] = lat1["int8-keep-float"] / lat1["fp32"]
        r["latency_ratio_b256_keep_float"] = lat256["int8-keep-float"] / lat256["fp32"]
    r["size_ratio"] = r["onnx_bytes"]["int8"] / r["onnx_bytes"]["fp32"]
    from ..runtime import cpu_features, int8_plan

    features = cpu_features()
    r["cpu"] = features.to_dict()
    r["int8_plan"] = int8_plan(features)
    r["verdict"] = verdict(r)
    return r


def float_latency_ratio(original: nn.Module, compressed: nn.Module, x: torch.Tensor, *, repeats: int = 20, calls: int = 5,
                        threads: int = 2) -> dict:
    """Latency of two models (e.g. before / after channel pruning or low-rank factorization) on ONNX Runtime,
    measured in one run: both exported to ONNX (fp32; a quantized model as int8 QDQ), timed interleaved
    (:func:`interleaved_latency`, median of ``repeats`` rounds of ``calls`` calls on the batch ``x``).
    ``ratio = compressed / original``.

    Example:
        >>> import torch
        >>> from lowbit.zoo.models import FmnistMLP
        >>> r = float_latency_ratio(FmnistMLP(hidden=64), FmnistMLP(hidden=16), torch.zeros(8, 1, 28, 28), repeats=3, calls=2)
        >>> sorted(r), r["ratio"] > 0
        (['batch', 'compressed_s', 'original_s', 'ratio', 'repeats', 'runtime', 'threads'], True)
    """
    with tempfile.TemporaryDirectory() as d:
        runners = {}
        for key, m in (("original", original), ("compressed", compressed)):
            path = Path(d) / f"{key}.onnx"
            quantized = any(is_quant_module(mod) for mod in m.modules())
            export_onnx(m.eval(), x, path, precision="qdq" if quantized else "fp32")
            runners[key] = OrtModel(path, threads=threads)
        t = interleaved_latency(runners, x.numpy(), repeats, calls)
    return {"original_s": t["original"], "compressed_s": t["compressed"], "ratio": t["compressed"] / t["original"],
            "runtime": "onnxruntime-cpu", "threads": threads, "batch": int(x.shape[0]), "repeats": repeats}
