"""Transformer PTQ on the real all-MiniLM-L6-v2 (F29): embedding fidelity, stored size and quantization time
of every minilm recipe, against torch's and ONNX Runtime's dynamic int8 quantization in the same run, and
the int8 / float latency on ONNX Runtime (batch 32, 2 threads).

    python bench/transformer.py                       # every recipe + peers (fidelity, size, time)
    python bench/transformer.py --latency             # + ORT latency ratios (run alone: 2 cores)
    python bench/transformer.py --table               # print the stored results

Writes bench/results/transformer.json (one record per run name, merged with earlier runs).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lowbit.io import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "transformer.json"
RECIPES = ["minilm-w8a8", "minilm-w8", "minilm-w4-gptq", "minilm-w4-awq", "minilm-w4-rtn", "minilm-w4-gptq-mixed", "minilm-w3-gptq", "minilm-w3-rtn"]


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def _store(name: str, record: dict) -> None:
    data = _load()
    data[name] = record
    atomic_write_text(RESULTS, json.dumps(data, indent=1, default=float) + "\n")


def _encode_ort(session, enc, texts: list[str], batch: int = 32) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch):
        out.append(session(**enc.tokenize(texts[i : i + batch])))
    return torch.cat(out).float()


def _latency_batch(enc, texts: list[str]) -> dict:
    return enc.tokenize(texts[:32])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="*", default=RECIPES)
    ap.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--latency", action="store_true", help="ORT latency ratios (float vs int8, batch 32, 2 threads)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.table:
        _table(_load())
        return
    torch.set_num_threads(2)
    from lowbit.data.text import load_corpus
    from lowbit.recipes import load_recipe
    from lowbit.report.fidelity import embedding_fidelity
    from lowbit.report.transformer import quantize_text_and_measure, split_corpus, state_bytes
    from lowbit.zoo.text import load_text_encoder

    enc = load_text_encoder("minilm")
    texts = load_corpus()
    calib, evaluation = split_corpus(texts)
    ref = enc.encode(evaluation)
    models = {}
    for r in args.recipes:
        q, rec = quantize_text_and_measure(enc, load_recipe(r), texts, model_name="minilm", recipe=r, reference=ref)
        models[r] = q
        rec.pop("layer_bits", None)
        _store(r, rec)
        f = rec["fidelity"]
        print(f"{r:16s} cos {f['cosine_mean']:.5f} min {f['cosine_min']:.5f} top1 {f['top1_agreement']:.3f} "
              f"top5 {f['top5_overlap']:.3f} size {rec['size_bytes']['ratio']:.3f} {rec['quantize_seconds']:.0f} s", flush=True)
    fp32 = state_bytes(enc)
    if args.peers:
        t0 = time.perf_counter()
        tq = torch.ao.quantization.quantize_dynamic(copy.deepcopy(enc), {torch.nn.Linear}, dtype=torch.qint8)
        secs = time.perf_counter() - t0
        _store("peer-torch-dynamic-int8", {"recipe": "torch.ao quantize_dynamic (Linear, qint8)",
                                           "fidelity": embedding_fidelity(ref, tq.encode(evaluation)), "quantize_seconds": secs})
    if not (args.peers or args.latency):
        return
    from lowbit.runtime.encoder_onnx import OrtEncoder, encoder_latency_ratio, export_encoder_onnx

    example = enc.tokenize(evaluation[:32])
    with tempfile.TemporaryDirectory() as d:
        plain = export_encoder_onnx(enc, Path(d) / "float_plain.onnx", example=example, int8=False, optimize=False)
        if args.peers:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            peer = Path(d) / "ort_dynamic.onnx"
            t0 = time.perf_counter()
            quantize_dynamic(str(plain), str(peer), per_channel=True, weight_type=QuantType.QInt8)
            secs = time.perf_counter() - t0
            rec = {"recipe": "onnxruntime quantize_dynamic (per_channel, QInt8)", "quantize_seconds": secs,
                   "fidelity": embedding_fidelity(ref, _encode_ort(OrtEncoder(peer), enc, evaluation)),
                   "size_bytes": {"fp32": fp32, "onnx": peer.stat().st_size, "ratio": peer.stat().st_size / plain.stat().st_size}}
            if args.latency:
                rec["latency"] = encoder_latency_ratio(plain, peer, example, repeats=args.repeats)
            _store("peer-ort-dynamic-int8", rec)
        if args.latency:
            q = models.get("minilm-w8a8")
            if q is None:
                q, _ = quantize_text_and_measure(enc, load_recipe("minilm-w8a8"), texts, reference=ref)
            rec = _load().get("minilm-w8a8", {})
            lat = {}
            for lowering in ("auto", "dynamic_quantize_matmul"):
                p8 = export_encoder_onnx(q, Path(d) / f"int8_{lowering}.onnx", example=example, int8=True, lowering=lowering,
                                         optimize=False)
                lat[lowering] = {"fidelity_ort": embedding_fidelity(ref, _encode_ort(OrtEncoder(p8), enc, evaluation)),
                                 "exact_per_token": lowering == "auto"}
                for spin in (False, None):
                    key = "no_spin" if spin is False else "ort_default_spin"
                    lat[lowering][key] = encoder_latency_ratio(plain, p8, example, repeats=args.repeats, allow_spinning=spin)
            rec["latency"] = lat
            _store("minilm-w8a8", rec)
            if args.peers:
                peer_rec = _load()["peer-ort-dynamic-int8"]
                peer_rec["latency_no_spin"] = encoder_latency_ratio(plain, peer, example, repeats=args.repeats, allow_spinning=False)
                _store("peer-ort-dynamic-int8", peer_rec)
    _table(_load())


def _table(data: dict) -> None:
    print("| run | cos mean | cos min | top-1 | top-5 | spearman | size x fp32 | quantize s | ORT latency x float |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in data.items():
        f = r["fidelity"]
        size = r.get("size_bytes", {}).get("ratio")
        lat = r.get("latency", {})
        if "ratio" in lat:
            lat_s = f"{lat['ratio']:.3f} (spin), {r['latency_no_spin']['ratio']:.3f} (no spin)" if "latency_no_spin" in r else f"{lat['ratio']:.3f}"
        elif lat:
            lat_s = ", ".join(f"{k}: {v['no_spin']['ratio']:.3f} (spin {v['ort_default_spin']['ratio']:.3f})" for k, v in lat.items())
        else:
            lat_s = ""
        print(f"| {name} | {f['cosine_mean']:.5f} | {f['cosine_min']:.5f} | {f['top1_agreement']:.3f} | {f['top5_overlap']:.3f} | "
              f"{f['spearman']:.4f} | {size:.3f} | {r['quantize_seconds']:.0f} | {lat_s} |" if size is not None else
              f"| {name} | {f['cosine_mean']:.5f} | {f['cosine_min']:.5f} | {f['top1_agreement']:.3f} | {f['top5_overlap']:.3f} | "
              f"{f['spearman']:.4f} | | {r['quantize_seconds']:.0f} | {lat_s} |")


if __name__ == "__main__":
    main()
