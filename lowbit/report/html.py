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
