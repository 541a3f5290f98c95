"""CLI commands of the compression methods: ``lowbit prune``, ``lowbit lowrank``, ``lowbit compress``.

All three build the config from a recipe + flags, run the verb on the Fashion-MNIST training split, and
print / write the same result record (:func:`lowbit.report.compression.measure_compression`) and the same
report (``compression.html``); ``--out DIR`` also stores the model as ``DIR/model.lbc``
(:func:`lowbit.save_compressed`), which ``lowbit eval DIR/model.lbc`` evaluates.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from .app import _console, app, guarded

PIPELINES = ("deep-compression",)


def _recipe_of(name: str, kinds: tuple[type, ...], command: str) -> Any:
    from ..recipes import load_recipe

    config = load_recipe(name)
    if not isinstance(config, kinds):
        raise ConfigError(f"recipe {name!r} is kind {config.kind}; lowbit {command} takes kind "
                          f"{' or '.join(k.kind for k in kinds)} (see lowbit recipes)")
    return config


def _override(config: Any, flags: dict[str, Any]) -> Any:
    """Apply the flags that were given; a flag the config type does not have is an error naming the right one."""
    given = {k: v for k, v in flags.items() if v is not None}
    from dataclasses import fields

    names = {f.name for f in fields(config)}
    wrong = sorted(k for k in given if k not in names)
    if wrong:
        flags_ = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise ConfigError(f"{flags_} do(es) not apply to a {config.kind} config (its fields: {sorted(names - {'version'})})")
    return config.replace(**given)


def _data(data_dir: str | None, train_size: int | None):
    from ..data import load_fashion_mnist

    if train_size is not None and train_size < 1:
        raise ConfigError(f"--train-size must be >= 1, got {train_size}")
    train = load_fashion_mnist("train", data_dir)
    if train_size is not None:
        train = train.subset(train_size, seed=1)
    return train, load_fashion_mnist("test", data_dir)


def _finish(result: dict, model, model_name: str, out: str | None, json_path: str | None) -> None:
    from rich.table import Table

    from ..export.compressed import save_compressed
    from ..io import atomic_write_text
    from ..report.html import write_compression_report

    t = Table(title=f"{model_name} / {result['name']}")
    for h in ("fp32 acc %", "acc %", "drop pp", "params kept", "MACs", "file KiB", "x smaller", "latency"):
        t.add_column(h, justify="right")
    p, lat = result["parameters"], result.get("latency")
    t.add_row(f"{result['fp32_accuracy']:.2f}", f"{result['accuracy']:.2f}", f"{result['accuracy_drop_pp']:+.2f}",
              f"{p['nonzero_after'] / p['before']:.3f}", f"{result['macs']['ratio']:.3f}", f"{result['size_bytes']['compressed'] / 1024:.1f}",
              f"{result['size_bytes']['ratio']:.1f}", "-" if not lat else f"{lat['ratio']:.3f}x")
    _console().print(t)
    stages = result["details"].get("stages")
    if stages:
        typer.echo("  ".join(f"{s['stage']}: {s['file_bytes']} B ({s['ratio']:.1f}x)" for s in stages))
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1, default=float) + "\n")
    if out:
        paths = write_compression_report([result], out)
        typer.echo(f"report: {paths['html']}")
        path = Path(out) / "model.lbc"
        info = save_compressed(model, path, model_spec=model_name)
        typer.echo(f"compressed model: {path} ({info['file_bytes']} bytes)")


@app.command()
@guarded
def prune(
    model: str = typer.Argument(..., help="zoo name (fmnist-resnet) or path/to/file.py:ClassOrFactory"),
    recipe: str | None = typer.Option(None, "--recipe", "-r", help="kind prune / structured-prune recipe (default: prune-gradual-90, "
                                      "or prune-channels-50 with --structured)"),
    structured: bool = typer.Option(False, "--structured", help="remove whole channels (default recipe prune-channels-50)"),
    sparsity: float | None = typer.Option(None, help="unstructured: fraction of weights removed, [0, 1)"),
    scope: str | None = typer.Option(None, help="unstructured: layer or global"),
    schedule: str | None = typer.Option(None, help="unstructured: oneshot, iterative or gradual"),
    ratio: float | None = typer.Option(None, help="structured: fraction of each group's channels removed, [0, 1)"),
    mac_ratio: float | None = typer.Option(None, help="structured: pruned MACs / original MACs, (0, 1)"),
    criterion: str | None = typer.Option(None, help="structured: l1, apoz, entropy or taylor"),
    epochs: int | None = typer.Option(None, help="fine-tuning epochs (default: the recipe's)"),
    lr: float | None = typer.Option(None, help="fine-tuning learning rate"),
    distill: bool | None = typer.Option(None, "--distill/--no-distill", help="fine-tune against the unpruned model's soft targets too"),
    train_size: int | None = typer.Option(None, help="training images (default: all 60 000)"),
    sensitivity: bool = typer.Option(False, "--sensitivity", help="only scan: accuracy with each layer / group pruned alone "
                                     "at 25/50/75 %% (2000 training images), no pruning"),
    latency: bool = typer.Option(False, "--latency", help="also time float vs pruned on ONNX Runtime (fp32, one run, ratio)"),
    weights: str | None = typer.Option(None, help="state_dict file of the float model"),
    out: str | None = typer.Option(None, help="folder for model.lbc and compression.{html,json}"),
    json_path: str | None = typer.Option(None, "--json", help="write the result JSON here"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
) -> None:
    """Prune MODEL (unstructured masks, or --structured channel removal), fine-tune, evaluate on the 10k test set."""
    from ..algorithms.pruning import PruneConfig, StructuredPruneConfig, pruning_sensitivity
    from ..algorithms.pruning import prune as prune_verb
    from ..io import atomic_write_text
    from ..report.compression import measure_compression
    from ..zoo.resolve import load_model_spec

    name = recipe or ("prune-channels-50" if structured else "prune-gradual-90")
    config = _recipe_of(name, (PruneConfig, StructuredPruneConfig), "prune")
    if structured and not isinstance(config, StructuredPruneConfig):
        raise ConfigError(f"--structured needs a kind structured-prune recipe, {name!r} is kind {config.kind}")
    config = _override(config, {"sparsity": sparsity, "scope": scope, "schedule": schedule, "ratio": ratio, "mac_ratio": mac_ratio,
                                "criterion": criterion, "epochs": epochs, "lr": lr, "distill": distill})
    float_model = load_model_spec(model, weights).eval()
    train, test = _data(data_dir, train_size)
    example = test.images[:1]
    if sensitivity:
        scan = train.subset(2000, seed=2)
        crit = config.criterion if isinstance(config, StructuredPruneConfig) else "l1"
        r = pruning_sensitivity(float_model, scan, structured=isinstance(config, StructuredPruneConfig), criterion=crit, example=example)
        for layer, accs in r["layers"].items():
            typer.echo(f"{layer:28s} " + "  ".join(f"{k:.0%}: {v:6.2f}" for k, v in accs.items()))
        if json_path:
            atomic_write_text(json_path, json.dumps({"model": model, "recipe": name, "sensitivity": r}, indent=1, default=float) + "\n")
        return
    pruned = prune_verb(copy.deepcopy(float_model), config, train, example=example)
    result = measure_compression(float_model, pruned, test, example=example, method=config.kind, model_name=model,
                                 info=pruned.lowbit_info, latency=latency)
    result["name"] = Path(name).stem
    _finish(result, pruned, model, out, json_path)


@app.command()
@guarded
def lowrank(
    model: str = typer.Argument(..., help="zoo name (fmnist-resnet) or path/to/file.py:ClassOrFactory"),
    recipe: str = typer.Option("lowrank-tucker-50", "--recipe", "-r", help="a kind lowrank recipe"),
    method: str | None = typer.Option(None, help="auto, svd, tucker2 or cp (k x k convs; Linear / 1x1 always SVD)"),
    energy: float | None = typer.Option(None, help="keep this fraction of each layer's squared singular values (rank_by energy)"),
    mac_ratio: float | None = typer.Option(None, help="factorized layers' MACs / original (rank_by budget)"),
    epochs: int = typer.Option(3, help="fine-tuning epochs after the factorization (0: none)"),
    lr: float = typer.Option(5e-4, help="fine-tuning learning rate"),
    distill: bool = typer.Option(True, "--distill/--no-distill", help="fine-tune against the float model's soft targets too"),
    train_size: int | None = typer.Option(None, help="training images (default: all 60 000)"),
    latency: bool = typer.Option(False, "--latency", help="also time float vs factorized on ONNX Runtime (fp32, one run, ratio)"),
    weights: str | None = typer.Option(None, help="state_dict file of the float model"),
    out: str | None = typer.Option(None, help="folder for compression.{html,json} (and model.lbc)"),
    json_path: str | None = typer.Option(None, "--json", help="write the result JSON here"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
) -> None:
    """Factorize MODEL's layers (SVD / Tucker-2 / CP), fine-tune, evaluate on the 10k test set."""
    from ..algorithms.lowrank import LowRankConfig, decompose
    from ..algorithms.qat.trainer import train as train_verb
    from ..report.compression import measure_compression
    from ..zoo.resolve import load_model_spec

    config = _recipe_of(recipe, (LowRankConfig,), "lowrank")
    changes = {"method": method, "energy": energy, "mac_ratio": mac_ratio}
    if energy is not None and mac_ratio is not None:
        raise ConfigError("give --energy (rank by energy) or --mac-ratio (rank by budget), not both")
    if energy is not None:
        changes["rank_by"] = "energy"
    if mac_ratio is not None:
        changes["rank_by"] = "budget"
    config = _override(config, changes)
    if epochs < 0:
        raise ConfigError(f"--epochs must be >= 0, got {epochs}")
    float_model = load_model_spec(model, weights).eval()
    train, test = _data(data_dir, train_size)
    factored = decompose(copy.deepcopy(float_model), config, example=test.images[:8])
    info = factored.lowbit_info
    if epochs:
        info["train"] = train_verb(factored, train, epochs=epochs, lr=lr, teacher=copy.deepcopy(float_model) if distill else None,
                                   distill_weight=0.7)
    info["config"] = config.to_dict()
    result = measure_compression(float_model, factored, test, example=test.images[:1], method="lowrank", model_name=model, info=info,
                                 latency=latency)
    result["name"] = Path(recipe).stem
    _finish(result, factored, model, out, json_path)


@app.command()
@guarded
def compress(
    model: str = typer.Argument(..., help="zoo name (fmnist-resnet) or path/to/file.py:ClassOrFactory"),
    pipeline: str = typer.Option("deep-compression", help=f"the pipeline: {', '.join(PIPELINES)}"),
    recipe: str | None = typer.Option(None, "--recipe", "-r", help="a kind deep-compression recipe (default: deep-compression)"),
    sparsity: float | None = typer.Option(None, help="fraction of weights pruned, [0, 1)"),
    bits: int | None = typer.Option(None, help="weight-sharing index bits (2^bits values with the zero), 1..8"),
    epochs: int | None = typer.Option(None, help="pruning fine-tuning epochs"),
    share_epochs: int | None = typer.Option(None, help="centroid fine-tuning epochs"),
    lr: float | None = typer.Option(None, help="pruning fine-tuning learning rate"),
    distill: bool | None = typer.Option(None, "--distill/--no-distill", help="fine-tune against the float model's soft targets too"),
    train_size: int | None = typer.Option(None, help="training images (default: all 60 000)"),
    weights: str | None = typer.Option(None, help="state_dict file of the float model"),
    out: str | None = typer.Option(None, help="folder for model.lbc and compression.{html,json}"),
    json_path: str | None = typer.Option(None, "--json", help="write the result JSON here"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
) -> None:
    """Run a compression pipeline on MODEL (Deep Compression: prune -> share -> Huffman) and report the size of
    the stored file after every stage, with the test accuracy."""
    from ..algorithms.deep_compression import DeepCompressionConfig
    from ..algorithms.deep_compression import compress as compress_verb
    from ..report.compression import measure_compression
    from ..zoo.resolve import load_model_spec

    if pipeline not in PIPELINES:
        raise ConfigError(f"--pipeline must be one of {list(PIPELINES)}, got {pipeline!r}")
    name = recipe or "deep-compression"
    config = _recipe_of(name, (DeepCompressionConfig,), "compress")
    config = _override(config, {"sparsity": sparsity, "bits": bits, "epochs": epochs, "share_epochs": share_epochs, "lr": lr,
                                "distill": distill})
    float_model = load_model_spec(model, weights).eval()
    train, test = _data(data_dir, train_size)
    compressed = compress_verb(copy.deepcopy(float_model), config, train, val_data=test, model_spec=model)
    result = measure_compression(float_model, compressed, test, example=test.images[:1], method=pipeline, model_name=model,
                                 info=compressed.lowbit_info, fp32_accuracy=compressed.lowbit_info["stages"][0]["accuracy"])
    result["name"] = Path(name).stem
    _finish(result, compressed, model, out, json_path)
