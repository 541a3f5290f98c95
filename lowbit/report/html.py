"""Report writer: JSON + Markdown + one self-contained HTML file (matplotlib plots inlined as PNG).

Example:
    >>> import tempfile, json, pathlib
    >>> res = {"model": "m", "recipe": "w8a8", "fp32_accuracy": 90.0, "quantized_accuracy": 89.9,
    ...        "accuracy_drop_pp": 0.1, "quantize_seconds": 1.0, "size_bytes": {"fp32": 400, "quantized": 100}}
    >>> paths = write_report([res], tempfile.mkdtemp())
    >>> sorted(p.suffix for p in paths.values())
    ['.html', '.json', '.md']
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from ..io import atomic_write_text


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sqnr_plot(result: dict) -> str | None:
    """Bar chart of per-layer weight and output SQNR (dB)."""
    layers = result.get("layers")
    if not layers:
        return None
    plt = _plt()
    names = [r["name"] for r in layers]
    ws = [r["weight_sqnr_db"] if r["weight_sqnr_db"] is not None and math.isfinite(r["weight_sqnr_db"]) else 0 for r in layers]
    os_ = [r["output_sqnr_db"] if r.get("output_sqnr_db") is not None and math.isfinite(r["output_sqnr_db"]) else 0 for r in layers]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 3.2))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], ws, width=0.4, label="weight SQNR")
    ax.bar([i + 0.2 for i in x], os_, width=0.4, label="layer-output SQNR (vs float)")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=70, fontsize=7)
    ax.set_ylabel("dB")
    ax.set_title(f"{result['model']} / {result['recipe']}: per-layer SQNR")
    ax.legend(fontsize=7)
    return _png(fig)


def histogram_grid(result: dict, max_layers: int = 40) -> str | None:
    """Weight and input-activation histograms per layer with the chosen clipping range as red lines."""
    layers = (result.get("layers") or [])[:max_layers]
    if not layers:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(layers), 2, figsize=(8, 1.35 * len(layers)), squeeze=False)
    for row, r in zip(axes, layers, strict=True):
        for ax, key, clip, title in (
            (row[0], "weight_hist", r.get("weight_clip"), f"{r['name']} weights ({r.get('weight_spec')})"),
            (row[1], "activation_hist", r.get("activation_clip"), f"{r['name']} input ({r.get('activation_spec')})"),
        ):
            h = r.get(key)
            if not h:
                ax.axis("off")
                continue
            edges, counts = h["edges"], h["counts"]
            ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:], strict=True)], align="edge", color="#4477aa")
            ax.set_yscale("symlog")
            if clip:
                for c in clip:
                    ax.axvline(c, color="red", lw=1)
            ax.set_title(title, fontsize=7)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    return _png(fig)


def pareto_plot(results: list[dict]) -> str | None:
    """Accuracy vs stored size for every recipe (and the float model)."""
    if len(results) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    fp = results[0]
    ax.scatter([fp["size_bytes"]["fp32"] / 1024], [fp["fp32_accuracy"]], marker="*", s=120, color="black", label="fp32")
    for r in results:
        ax.scatter([r["size_bytes"]["quantized"] / 1024], [r["quantized_accuracy"]])
        ax.annotate(r["recipe"], (r["size_bytes"]["quantized"] / 1024, r["quantized_accuracy"]), fontsize=7)
    ax.set_xlabel("stored size (KiB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs size")
    ax.legend(fontsize=7)
    return _png(fig)


def bits_plot(result: dict) -> str | None:
    """The chosen bits of every layer drawn over the network, in execution order: weight and input
    widths as bars (float = 32 drawn as "fp"), each layer's share of the weights as a line. Drawn
    only when the widths differ between layers (a mixed-precision plan)."""
    layers = result.get("layers")
    if not layers or len({(r.get("weight_bits"), r.get("activation_bits")) for r in layers}) < 2:
        return None
    plt = _plt()
    names = [r["name"] for r in layers]
    wb = [r.get("weight_bits") or 32 for r in layers]
    ab = [r.get("activation_bits") or 32 for r in layers]
    params = [max(1, int(r.get("params") or sum((r.get("weight_hist") or {}).get("counts", [])))) for r in layers]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 3.4))
    x = list(range(len(names)))
    ax.bar([i - 0.2 for i in x], [min(b, 10) for b in wb], width=0.4, label="weight bits", color="tab:blue")
    ax.bar([i + 0.2 for i in x], [min(b, 10) for b in ab], width=0.4, label="input bits", color="tab:orange")
    for i, (w, a) in enumerate(zip(wb, ab, strict=True)):
        ax.annotate("fp" if w >= 16 else str(w), (i - 0.2, min(w, 10)), ha="center", va="bottom", fontsize=7)
        ax.annotate("fp" if a >= 16 else str(a), (i + 0.2, min(a, 10)), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=70, fontsize=7)
    ax.set_ylabel("bits")
    ax.set_ylim(0, 11.5)
    if sum(params) > len(params):
        ax2 = ax.twinx()
        ax2.plot(x, [100 * p / sum(params) for p in params], "k.--", lw=0.8, label="share of weights %")
        ax2.set_ylabel("share of weights %", fontsize=8)
        ax2.legend(fontsize=7, loc="upper right")
    ax.set_title(f"{result['model']} / {result['recipe']}: bits per layer (network order)")
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def mixed_plots(result: dict) -> list[tuple[str, str]]:
    """For a result with a ``mixed`` section (``lowbit mixed --report``): accuracy vs weight size and,
    when the plans have latencies, accuracy vs latency (fraction of float) — the mixed-precision
    frontier as a line, the uniform configurations as squares, the chosen plan as a star."""
    mixed = result.get("mixed")
    if not mixed or not (mixed.get("frontier") or mixed.get("uniform")):
        return []
    plt = _plt()
    out = []
    axes = [("average_bits", "bits per weight (average)", "accuracy vs size")]
    if any(p.get("latency_ratio") is not None for p in mixed.get("frontier", []) + mixed.get("uniform", [])):
        axes.append(("latency_ratio", "latency / float (predicted by the measured table)", "accuracy vs latency"))
    for key, xlabel, title in axes:
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        fr = sorted((p for p in mixed.get("frontier", []) if p.get(key) is not None), key=lambda p: p[key])
        if fr:
            ax.plot([p[key] for p in fr], [p["accuracy"] for p in fr], "o-", label=f"mixed-precision frontier ({mixed.get('method', 'milp')})")
        for u in mixed.get("uniform", []):
            if u.get(key) is not None:
                ax.plot(u[key], u["accuracy"], "s", color="grey")
                ax.annotate(u["name"], (u[key], u["accuracy"]), fontsize=7)
        chosen = mixed.get("chosen", {})
        if chosen.get(key) is not None:
            ax.plot(chosen[key], result["quantized_accuracy"], "*", ms=14, color="tab:red", label="chosen plan")
        ax.axhline(result["fp32_accuracy"], ls="--", color="black", lw=0.8, label="float")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{result['model']}: {title}")
        ax.legend(fontsize=7)
        out.append((title, _png(fig)))
    return out


def _summary_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for r in results:
        rows.append([
            r["model"], r["recipe"], f"{r['fp32_accuracy']:.2f}", f"{r['quantized_accuracy']:.2f}",
            f"{r['accuracy_drop_pp']:+.2f}", f"{r['size_bytes']['fp32'] / 1024:.1f}", f"{r['size_bytes']['quantized'] / 1024:.1f}",
            f"{r['size_bytes']['fp32'] / max(1, r['size_bytes']['quantized']):.2f}x",
            f"{r['bitops']['bitops'] / 1e9:.3f}" if "bitops" in r else "-", f"{r['quantize_seconds']:.2f}",
        ])
    return rows


HEADER = ["model", "recipe", "fp32 acc %", "quant acc %", "drop pp", "fp32 KiB", "quant KiB", "ratio", "GBitOPs", "PTQ s"]


def to_markdown(results: list[dict]) -> str:
    """Markdown summary table plus per-layer tables."""
    lines = ["# lowbit quantization report", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _summary_rows(results)]
    for r in results:
        if not r.get("layers"):
            continue
        lines += ["", f"## {r['model']} / {r['recipe']}", "", "| layer | weight | input | weight SQNR dB | output SQNR dB |", "|---|---|---|---|---|"]
        for layer in r["layers"]:
            lines.append(f"| {layer['name']} | {layer['weight_spec']} | {layer['activation_spec']} | "
                         f"{layer['weight_sqnr_db']} | {layer.get('output_sqnr_db')} |")
        for s in r.get("skipped_layers", []):
            lines.append(f"- skipped {s['layer']}: {s['reason']}")
        for a in r.get("adjusted_layers", []):
            lines.append(f"- adjusted {a['layer']}: group_size {a['requested']} -> {a['group_size']}")
    return "\n".join(lines) + "\n"


def to_html(results: list[dict]) -> str:
    """Self-contained HTML (inline CSS and base64 PNG plots)."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>lowbit report</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;font-size:13px}",
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#eee}td:first-child,td:nth-child(2){text-align:left}",
        "</style></head><body><h1>lowbit quantization report</h1><table><tr>",
        "".join(f"<th>{esc(h)}</th>" for h in HEADER), "</tr>",
    ]
    for row in _summary_rows(results):
        parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    parts.append("</table>")
    p = pareto_plot(results)
    if p:
        parts.append(f"<h2>Accuracy vs size</h2><img src='{p}'>")
    for r in results:
        parts.append(f"<h2>{esc(r['model'])} / {esc(r['recipe'])}</h2>")
        if r.get("layers"):
            parts.append("<table><tr><th>layer</th><th>weight</th><th>input</th><th>weight SQNR dB</th><th>output SQNR dB</th></tr>")
            for layer in r["layers"]:
                parts.append(
                    f"<tr><td>{esc(layer['name'])}</td><td>{esc(str(layer['weight_spec']))}</td><td>{esc(str(layer['activation_spec']))}</td>"
                    f"<td>{layer['weight_sqnr_db']}</td><td>{layer.get('output_sqnr_db')}</td></tr>"
                )
            parts.append("</table>")
        for s in r.get("skipped_layers", []):
            parts.append(f"<p>skipped {esc(s['layer'])}: {esc(s['reason'])}</p>")
        for title, img in mixed_plots(r):
            parts.append(f"<h3>Mixed precision: {esc(title)}</h3><img src='{img}'><br>")
        for img in (bits_plot(r), sqnr_plot(r), histogram_grid(r)):
            if img:
                parts.append(f"<img src='{img}'><br>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(results: list[dict], out_dir: str | Path, stem: str = "report") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.html`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "html": out / f"{stem}.html"}
    atomic_write_text(paths["json"], json.dumps(results, indent=1, default=float) + "\n")
    atomic_write_text(paths["md"], to_markdown(results))
    atomic_write_text(paths["html"], to_html(results))
    return paths


_KIND_STYLE = {"dynamic": ("o-", "tab:red"), "static-mixed": ("s--", "tab:blue"), "static-uniform": ("^", "grey")}


def _page_start(out_dir: str | Path, stem: str, title: str, heading: str) -> tuple[dict[str, Path], list[str]]:
    """``(paths, parts)`` of a self-contained report page: ``<stem>.json`` / ``<stem>.html`` in ``out_dir`` (created) and
    the page's head with the shared table style and the escaped ``heading``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "html": out / f"{stem}.html"}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:1300px}table{border-collapse:collapse;font-size:13px}",
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#eee}td:first-child{text-align:left}",
             f"</style></head><body><h1>{html.escape(heading)}</h1>"]
    return paths, parts


def _page_finish(paths: dict[str, Path], parts: list[str], data) -> dict[str, Path]:
    """Close the page and write it and ``data`` (as JSON), atomically."""
    parts.append("</body></html>")
    atomic_write_text(paths["json"], json.dumps(data, indent=1, default=float) + "\n")
    atomic_write_text(paths["html"], "".join(parts))
    return paths


def dynamic_plots(dyn: dict) -> list[tuple[str, str]]:
    """Plots of a dynamic-quantization result (``lowbit dynamic train|eval --report``, bench/dynamic_quant.py).

    ``dyn`` holds ``model``, optional ``float_accuracy``, optional ``curve`` (rows with ``name``, ``kind``
    in {dynamic, static-mixed, static-uniform}, ``mean_bitops``, ``accuracy``) and optional ``analysis``
    (:func:`lowbit.algorithms.dynamic.dynamic_analysis`). Gives: accuracy vs average BitOPs (one line
    per kind); average bits per float-confidence group (hardest first); per class; and per layer for
    the hardest vs the easiest group.
    """
    plt = _plt()
    out = []
    curve = dyn.get("curve") or []
    if curve:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for kind, (style, color) in _KIND_STYLE.items():
            pts = sorted((r for r in curve if r.get("kind") == kind), key=lambda r: r["mean_bitops"])
            if not pts:
                continue
            ax.plot([r["mean_bitops"] / 1e6 for r in pts], [r["accuracy"] for r in pts], style, color=color, label=kind)
            for r in pts:
                ax.annotate(r["name"], (r["mean_bitops"] / 1e6, r["accuracy"]), fontsize=6)
        if dyn.get("float_accuracy") is not None:
            ax.axhline(dyn["float_accuracy"], ls="--", color="black", lw=0.8, label="float")
        ax.set_xscale("log")
        ax.set_xlabel("average BitOPs per image (millions, log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dyn.get('model', '')}: accuracy vs average BitOPs")
        ax.legend(fontsize=7)
        out.append(("accuracy vs average BitOPs", _png(fig)))
    a = dyn.get("analysis")
    if a:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
        q = a["confidence_quintiles"]
        axes[0].bar(range(len(q)), [g["avg_bits"] for g in q], color="tab:red")
        axes[0].set_xticks(range(len(q)), [f"{g['confidence_min']:.2f}-\n{g['confidence_max']:.2f}" for g in q], fontsize=7)
        axes[0].set_xlabel("float-model confidence (hardest fifth first)")
        axes[0].set_ylabel("average chosen bits")
        lo = min(g["avg_bits"] for g in q + a["per_class"])
        hi = max(g["avg_bits"] for g in q + a["per_class"])
        pad = max(0.05, 0.1 * (hi - lo))
        axes[0].set_ylim(lo - pad, hi + pad)
        c = a["per_class"]
        axes[1].bar(range(len(c)), [g["avg_bits"] for g in c], color="tab:blue")
        axes[1].set_xticks(range(len(c)), [str(g["class"]) for g in c], fontsize=7, rotation=45)
        axes[1].set_ylim(lo - pad, hi + pad)
        axes[1].set_xlabel("class")
        names = list(a["hard_layer_bits"])
        xs = range(len(names))
        axes[2].bar([x - 0.2 for x in xs], list(a["hard_layer_bits"].values()), 0.4, label="hardest fifth", color="tab:red")
        axes[2].bar([x + 0.2 for x in xs], list(a["easy_layer_bits"].values()), 0.4, label="easiest fifth", color="tab:green")
        axes[2].set_xticks(list(xs), names, fontsize=6, rotation=60, ha="right")
        axes[2].set_ylabel("average bits")
        axes[2].legend(fontsize=7)
        fig.suptitle(f"chosen bits vs input difficulty (corr(bits, confidence) = {a['corr_bits_vs_confidence']:+.2f}, "
                     f"{a['distinct_configs']} distinct configurations)", fontsize=9)
        out.append(("bits vs input difficulty", _png(fig)))
    return out


def write_dynamic_report(dyn: dict, out_dir: str | Path, stem: str = "dynamic") -> dict[str, Path]:
    """Write ``<stem>.json`` and a self-contained ``<stem>.html`` (table + :func:`dynamic_plots`) into ``out_dir``.

    Example:
        >>> import tempfile
        >>> rows = [{"name": "W2A2", "kind": "static-uniform", "mean_bitops": 1.6e8, "accuracy": 93.2},
        ...         {"name": "dyn", "kind": "dynamic", "mean_bitops": 1.1e8, "accuracy": 93.3}]
        >>> paths = write_dynamic_report({"model": "m", "float_accuracy": 93.6, "curve": rows}, tempfile.mkdtemp())
        >>> sorted(paths), "accuracy vs average BitOPs" in paths["html"].read_text()
        (['html', 'json'], True)
    """
    esc = html.escape
    paths, parts = _page_start(out_dir, stem, "lowbit dynamic quantization", f"{dyn.get('model', '')}: instance-aware dynamic quantization")
    fa = dyn.get("float_accuracy")
    if dyn.get("curve"):
        parts.append("<table><tr><th>configuration</th><th>kind</th><th>accuracy %</th><th>vs float pp</th><th>avg MBitOPs</th></tr>")
        for r in sorted(dyn["curve"], key=lambda r: r["mean_bitops"]):
            d = "-" if fa is None else f"{r['accuracy'] - fa:+.2f}"
            parts.append(f"<tr><td>{esc(r['name'])}</td><td>{esc(r['kind'])}</td><td>{r['accuracy']:.2f}</td><td>{d}</td>"
                         f"<td>{r['mean_bitops'] / 1e6:.1f}</td></tr>")
        parts.append("</table>")
    a = dyn.get("analysis")
    if a:
        parts.append("<h2>Bits vs difficulty</h2><table><tr><th>float confidence</th><th>images</th><th>avg bits</th>"
                     "<th>BitOPs / mean</th><th>accuracy %</th></tr>")
        for g in a["confidence_quintiles"]:
            parts.append(f"<tr><td>{g['confidence_min']:.3f} - {g['confidence_max']:.3f}</td><td>{g['n']}</td><td>{g['avg_bits']:.3f}</td>"
                         f"<td>{g['bitops_rel']:.3f}</td><td>{g['accuracy']:.2f}</td></tr>")
        parts.append("</table>")
    for title, img in dynamic_plots(dyn):
        parts.append(f"<h2>{esc(title)}</h2><img src='{img}'><br>")
    return _page_finish(paths, parts, dyn)


def _layer_keep(result: dict) -> list[tuple[str, float]]:
    """Per layer / group the fraction kept (weights for unstructured, channels for structured, MACs for low-rank)."""
    d = result.get("details") or {}
    if "groups" in d:
        return [(g["root"], g["kept"] / g["channels"]) for g in d["groups"]]
    sp = d.get("sparsity") or {}
    if "layers" in sp:
        return [(n, 1 - s) for n, s in sp["layers"].items()]
    if d.get("layers") and isinstance(d["layers"], list) and "macs_after" in d["layers"][0]:
        return [(r["name"], r["macs_after"] / max(1, r["macs_before"])) for r in d["layers"]]
    return []


def compression_plots(results: list[dict]) -> list[tuple[str, str]]:
    """Accuracy vs stored size (every result), Deep Compression's size per stage, the fraction kept per layer."""
    plt = _plt()
    out = []
    if results:
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        r0 = results[0]
        ax.scatter([r0["size_bytes"]["fp32"] / 1024], [r0["fp32_accuracy"]], marker="*", s=120, color="black", label="fp32")
        for r in results:
            ax.scatter([r["size_bytes"]["compressed"] / 1024], [r["accuracy"]])
            ax.annotate(r.get("name", r["method"]), (r["size_bytes"]["compressed"] / 1024, r["accuracy"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("stored size, KiB (log)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7)
        out.append(("accuracy vs stored size", _png(fig)))
    for r in results:
        stages = (r.get("details") or {}).get("stages")
        if stages:
            fig, ax = plt.subplots(figsize=(5, 3))
            ax.bar([s["stage"] for s in stages], [s["file_bytes"] / 1024 for s in stages], color="#4a7")
            for i, s in enumerate(stages):
                ax.annotate(f"{s['ratio']:.1f}x", (i, s["file_bytes"] / 1024), ha="center", fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("file size, KiB (log)")
            out.append((f"{r.get('name', r['method'])}: size after each stage", _png(fig)))
        keep = _layer_keep(r)
        if keep:
            fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(keep)), 3))
            ax.bar(range(len(keep)), [k for _, k in keep])
            ax.set_xticks(range(len(keep)))
            ax.set_xticklabels([n for n, _ in keep], rotation=70, fontsize=7)
            ax.set_ylim(0, 1)
            ax.set_ylabel("fraction kept")
            out.append((f"{r.get('name', r['method'])}: kept per layer", _png(fig)))
    return out


def write_compression_report(results: list[dict], out_dir: str | Path, stem: str = "compression") -> dict[str, Path]:
    """Write ``<stem>.json`` and a self-contained ``<stem>.html`` for compression results
    (:func:`lowbit.report.compression.measure_compression` records): summary table, per-stage sizes,
    :func:`compression_plots`.

    Example:
        >>> import tempfile
        >>> r = {"model": "m", "method": "prune", "fp32_accuracy": 93.6, "accuracy": 93.1, "accuracy_drop_pp": 0.5,
        ...      "parameters": {"before": 100, "after": 100, "nonzero_after": 10}, "macs": {"before": 10, "after": 10, "ratio": 1.0},
        ...      "size_bytes": {"fp32": 400, "compressed": 60, "ratio": 6.7}, "details": {}}
        >>> paths = write_compression_report([r], tempfile.mkdtemp())
        >>> sorted(paths), "accuracy vs stored size" in paths["html"].read_text()
        (['html', 'json'], True)
    """
    esc = html.escape
    paths, parts = _page_start(out_dir, stem, "lowbit compression", f"{results[0]['model'] if results else ''}: compression")
    parts += ["<table><tr><th>result</th><th>accuracy %</th><th>vs float pp</th><th>params kept</th><th>MACs</th><th>file KiB</th>"
             "<th>x smaller</th><th>latency ratio</th></tr>"]
    for r in results:
        p = r["parameters"]
        lat = r.get("latency")
        parts.append(f"<tr><td>{esc(str(r.get('name', r['method'])))}</td><td>{r['accuracy']:.2f}</td><td>{-r['accuracy_drop_pp']:+.2f}</td>"
                     f"<td>{p['nonzero_after'] / p['before']:.3f}</td><td>{r['macs']['ratio']:.3f}</td>"
                     f"<td>{r['size_bytes']['compressed'] / 1024:.1f}</td><td>{r['size_bytes']['ratio']:.1f}</td>"
                     f"<td>{'-' if not lat else format(lat['ratio'], '.3f')}</td></tr>")
    parts.append("</table>")
    for r in results:
        stages = (r.get("details") or {}).get("stages")
        if stages:
            parts.append(f"<h2>{esc(str(r.get('name', r['method'])))}: stages</h2><table><tr><th>stage</th><th>file bytes</th>"
                         "<th>x smaller</th><th>accuracy %</th></tr>")
            for s in stages:
                acc = s.get("accuracy")
                parts.append(f"<tr><td>{esc(s['stage'])}</td><td>{s['file_bytes']}</td><td>{s['ratio']:.1f}</td>"
                             f"<td>{'-' if acc is None else format(acc, '.2f')}</td></tr>")
            parts.append("</table>")
    for title, img in compression_plots(results):
        parts.append(f"<h2>{esc(title)}</h2><img src='{img}'><br>")
    return _page_finish(paths, parts, results)
