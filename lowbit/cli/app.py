"""``lowbit`` CLI: quantize, eval, qat, dynamic train|eval, prune, lowrank, compress, zoo list|train, recipes, demo.

Every lowbit error is printed as one line (``error: ...``) with exit status 2.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import typer

from ..errors import ConfigError, LowbitError, UnsupportedError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="lowbit: quantize PyTorch models and measure what it costs.")
zoo_app = typer.Typer(no_args_is_help=True, help="The reference model zoo.")
app.add_typer(zoo_app, name="zoo")
dynamic_app = typer.Typer(no_args_is_help=True, help="Instance-aware dynamic quantization: per-sample bit widths from a bit controller.")
app.add_typer(dynamic_app, name="dynamic")


def _console():
    from rich.console import Console

    return Console()


def guarded(fn):
    """Turn LowbitError (and bad files) into one line on stderr + exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LowbitError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("error: interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _with_calib_size(config, calib_size: int | None):
    """The recipe's config with ``--calib-size`` applied only when the flag was given (the recipe's
    own ``calib_size`` — e.g. 2048 for the iterative ones — wins otherwise)."""
    return config if calib_size is None else config.replace(calib_size=calib_size)


def _load_data(data_dir: str | None, calib_size: int):
    from ..data import load_fashion_mnist

    if calib_size < 1:
        raise ConfigError(f"--calib-size must be >= 1, got {calib_size}")
    test = load_fashion_mnist("test", data_dir)
    calib = load_fashion_mnist("train", data_dir).subset(calib_size, seed=0)
    return calib, test


def _quantize_recipe(name: str):
    """The recipe ``name`` for the quantize_ commands; a kind: dynamic recipe builds a new model with a bit
    controller and is refused with the command that runs it."""
    from ..algorithms.dynamic import DynamicConfig
    from ..recipes import load_recipe

    config = load_recipe(name)
    if isinstance(config, DynamicConfig):
        raise ConfigError(f"recipe {name!r} is kind dynamic (per-sample widths with a trained bit controller); "
                          f"run it with: lowbit dynamic train MODEL --recipe {name}")
    return config


def _apply_observer(config, observer: str | None):
    if observer is None:
        return config
    act = config.activation.replace(observer=observer) if config.activation is not None else None
    return config.replace(activation=act)


def _print_result(r: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{r['model']} / {r['recipe']}")
    for h in ("fp32 acc %", "quant acc %", "drop pp", "fp32 KiB", "quant KiB", "PTQ s"):
        t.add_column(h, justify="right")
    t.add_row(f"{r['fp32_accuracy']:.2f}", f"{r['quantized_accuracy']:.2f}", f"{r['accuracy_drop_pp']:+.2f}",
              f"{r['size_bytes']['fp32'] / 1024:.1f}", f"{r['size_bytes']['quantized'] / 1024:.1f}", f"{r['quantize_seconds']:.2f}")
    _console().print(t)


def _is_text_spec(model: str) -> bool:
    from ..zoo.text import TEXT_MODELS

    return model in TEXT_MODELS or Path(model).is_dir()


def _quantize_text(model: str, config, recipe: str, corpus: str, json_path: str | None, out: str | None) -> None:
    from ..algorithms.transformer import TransformerPTQConfig
    from ..data.text import load_corpus
    from ..io import atomic_write_text
    from ..report.transformer import quantize_text_and_measure
    from ..zoo.resolve import load_model_spec
    from ..zoo.text import is_text_model

    if not isinstance(config, TransformerPTQConfig):
        raise ConfigError(f"recipe {recipe!r} is kind {config.kind}; a text encoder takes a transformer-ptq recipe "
                          "(minilm-w8a8, minilm-w8, minilm-w4-gptq, minilm-w4-awq, minilm-w3-gptq, ...)")
    float_model = load_model_spec(model)
    if not is_text_model(float_model):
        raise ConfigError(f"recipe {recipe!r} (kind transformer-ptq) quantizes text encoders; {model!r} is not one "
                          "(use minilm or a sentence-transformers folder)")
    texts = load_corpus(corpus)
    _, result = quantize_text_and_measure(float_model, config, texts, model_name=model, recipe=Path(recipe).stem)
    f = result["fidelity"]
    typer.echo(f"{model} / {result['recipe']}: cosine mean {f['cosine_mean']:.5f} min {f['cosine_min']:.5f}, "
               f"top-1 {f['top1_agreement']:.3f}, top-5 {f['top5_overlap']:.3f}, spearman {f['spearman']:.4f} "
               f"on {f['n']} texts; size {result['size_bytes']['ratio']:.3f}x fp32; {result['quantize_seconds']:.1f} s")
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1, default=float) + "\n")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out) / "report.json", json.dumps(result, indent=1, default=float) + "\n")
        typer.echo(f"report: {Path(out) / 'report.json'}")


@app.command()
@guarded
def quantize(
    model: str = typer.Argument(..., help="zoo name (fmnist-resnet) or path/to/file.py:ClassOrFactory"),
    recipe: str = typer.Option("w8a8", "--recipe", "-r", help="recipe name (lowbit recipes) or a .yaml path"),
    weights: str | None = typer.Option(None, help="state_dict file (.safetensors or torch file, loaded weights_only)"),
    calib_size: int | None = typer.Option(None, help="calibration images from the training split (default: the recipe's calib_size, usually 512)"),
    observer: str | None = typer.Option(None, help="override the activation observer (minmax, ema, percentile, mse, entropy, aciq)"),
    out: str | None = typer.Option(None, help="folder for report.{json,md,html} and the packed model.lowbit"),
    json_path: str | None = typer.Option(None, "--json", help="write the result JSON here"),
    max_drop: float | None = typer.Option(None, help="accuracy-aware: raise the most sensitive layers until the held-out drop is <= this many pp"),
    tune_method: str = typer.Option("hessian", help="with --max-drop: rank by hessian, loss or mse, or greedy (measure every raise)"),
    raise_to: str = typer.Option("w8a8", help="with --max-drop: what a raised layer becomes, w8a8 or float"),
    tune_split: int = typer.Option(5000, help="with --max-drop: test images (seeded) that drive the tuning; the rest report an unseen drop"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder (default $LOWBIT_DATA or /usr/share/datasets/fashion-mnist)"),
    corpus: str = typer.Option("en_docs", help="text models: corpus name or .json/.txt path (every 4th passage calibrates, the rest evaluate)"),
) -> None:
    """Quantize MODEL with RECIPE, evaluate float and quantized on the 10k test set.

    Text encoders (minilm, or a sentence-transformers folder) take a transformer recipe (minilm-w8a8,
    minilm-w4-gptq, ...) and report embedding fidelity to the float model on the text corpus instead.

    With --max-drop D: accuracy-aware tuning on a held-out split of the test set (--tune-split
    images, seeded); the other images give an independent drop. Exits 1 when D cannot be met
    (after reporting the closest configuration).
    """
    from ..io import atomic_write_text
    from ..report import quantize_and_measure, write_report
    from ..zoo.resolve import load_model_spec

    config = _apply_observer(_quantize_recipe(recipe), observer)
    config = _with_calib_size(config, calib_size)
    from ..algorithms.transformer import TransformerPTQConfig

    if isinstance(config, TransformerPTQConfig) or _is_text_spec(model):
        if max_drop is not None:
            raise ConfigError("--max-drop tunes classifiers on accuracy; text encoders report fidelity (drop the flag)")
        _quantize_text(model, config, recipe, corpus, json_path, out)
        return
    if max_drop is not None:
        from ..algorithms.mixed_precision.tuning import check_tuning_args

        check_tuning_args(config, max_drop, tune_method, raise_to)
        if not 100 <= tune_split <= 9900:
            raise ConfigError(f"--tune-split must be in 100..9900 (test images for tuning; the rest stay unseen), got {tune_split}")
    float_model = load_model_spec(model, weights)
    calib, test = _load_data(data_dir, config.calib_size)
    tuned = None
    if max_drop is not None:
        from ..algorithms.mixed_precision.tuning import accuracy_aware_tune, held_out_split

        val, rest = held_out_split(test, tune_split)
        tuned = accuracy_aware_tune(float_model, config, calib, val, max_drop=max_drop, method=tune_method, raise_to=raise_to,
                                    log=typer.echo)
        typer.echo(tuned.summary())
        config = tuned.config
    qmodel, result = quantize_and_measure(float_model, config, calib, test, recipe=Path(recipe).stem, model_name=model)
    if tuned is not None:
        from ..api import evaluate

        result["tuning"] = tuned.to_dict() | {
            "tune_split": tune_split,
            "unseen_drop": evaluate(float_model, rest) - evaluate(qmodel, rest),
        }
        typer.echo(f"drop on the {len(rest)} test images the tuning did not see: {result['tuning']['unseen_drop']:+.2f} pp")
    _print_result(result)
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1, default=float) + "\n")
    if out:
        from ..export import save

        paths = write_report([result], out)
        packed = Path(out) / "model.lowbit"
        save(qmodel, packed, model_spec=model)
        typer.echo(f"report: {paths['html']}\npacked model: {packed} ({packed.stat().st_size} bytes)")
    if tuned is not None and not tuned.met:
        typer.echo(f"error: --max-drop {max_drop} cannot be met by raising layers to {raise_to}: the closest is a "
                   f"{tuned.drop:+.2f} pp held-out drop (try --raise-to float or a higher-precision recipe)", err=True)
        raise typer.Exit(1)


@app.command()
@guarded
def export(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:ClassOrFactory"),
    recipe: str = typer.Option("w8a8", "--recipe", "-r", help="recipe (for --format onnx / lowbit)"),
    fmt: str = typer.Option("onnx", "--format", help="onnx (int8 QDQ), onnx-fp32, onnx-fp16, onnx-bf16, or lowbit (packed)"),
    out: str = typer.Option(..., "--out", help="output file"),
    weights: str | None = typer.Option(None, help="state_dict file"),
    calib_size: int | None = typer.Option(None, help="calibration images (default: the recipe's calib_size)"),
    opset: int = typer.Option(17, help="ONNX opset"),
    keep_float: list[str] = typer.Option([], "--keep-float", help="quantized layer to export in float (repeatable; see lowbit bench)"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
) -> None:
    """Quantize MODEL with RECIPE and export it (ONNX QDQ for ONNX Runtime, or the packed .lowbit format)."""
    from ..api import quantize_
    from ..export import export_onnx, save
    from ..zoo.resolve import load_model_spec

    formats = ("onnx", "onnx-fp32", "onnx-fp16", "onnx-bf16", "lowbit")
    if fmt not in formats:
        raise ConfigError(f"unknown --format {fmt!r}; use one of {list(formats)}")
    float_model = load_model_spec(model, weights)
    config = _with_calib_size(_quantize_recipe(recipe), calib_size)
    calib, test = _load_data(data_dir, config.calib_size)
    example = test.images[:1]
    if fmt.startswith("onnx-"):
        info = export_onnx(float_model, example, out, opset=opset, precision=fmt.split("-")[1])
    else:
        qmodel = quantize_(float_model, config, data=calib)
        if fmt == "onnx":
            info = export_onnx(qmodel, example, out, opset=opset, float_layers=keep_float)
        else:
            info = save(qmodel, out, model_spec=model)
            info = {"path": out, "bytes": info["payload_bytes"], "format": "lowbit"}
    typer.echo(json.dumps({k: v for k, v in info.items() if k in ("path", "bytes", "precision", "opset", "format", "weight_initializers_int8")}))


@app.command()
@guarded
def bench(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:ClassOrFactory"),
    recipe: str = typer.Option("w8a8", "--recipe", "-r", help="recipe with 8-bit activations"),
    weights: str | None = typer.Option(None, help="state_dict file"),
    repeats: int = typer.Option(20, help="timing rounds (median)"),
    json_path: str | None = typer.Option(None, "--json", help="write the result JSON here"),
    per_layer: bool = typer.Option(True, "--per-layer/--no-per-layer", help="time every layer with ORT's profiler"),
    keep_slow_float: bool = typer.Option(False, "--keep-slow-float", help="also time a model whose slow int8 layers stay float"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
) -> None:
    """Float vs quantized MODEL on ONNX Runtime: latency at batch 1 and 256 (and per layer), size, BitOPs, energy; a verdict."""
    from rich.table import Table

    from ..api import quantize_
    from ..io import atomic_write_text
    from ..report.bench import benchmark
    from ..zoo.resolve import load_model_spec

    if repeats < 3:
        raise ConfigError(f"--repeats must be >= 3 for a meaningful median, got {repeats}")
    import copy

    float_model = load_model_spec(model, weights)
    calib, test = _load_data(data_dir, 512)
    qmodel = quantize_(copy.deepcopy(float_model), _quantize_recipe(recipe), data=calib)
    from ..runtime import ort_available

    if not ort_available():
        raise UnsupportedError("lowbit bench runs on ONNX Runtime, which is not installed; install the extra: pip install 'lowbit[onnx]'")
    r = benchmark(float_model, qmodel, test.images[:256], repeats=repeats, per_layer=per_layer, keep_slow_float=keep_slow_float)
    r.update(model=model, recipe=recipe)
    t = Table(title=f"{model} / {recipe} on ONNX Runtime ({r['threads']} threads)")
    for h in ("int8/fp32 latency b1", "b256", "size ratio", "GBitOPs int8 / fp32", "energy uJ int8 / fp32 (DRAM low)"):
        t.add_column(h, justify="right")
    e = r["energy_uj"]
    t.add_row(f"{r['latency_ratio_b1']:.2f}", f"{r['latency_ratio_b256']:.2f}", f"{r['size_ratio']:.3f}",
              f"{r['bitops'] / 1e9:.2f} / {r['fp32_bitops'] / 1e9:.2f}", f"{e['int8']['total_uj_low']:.2f} / {e['fp32']['total_uj_low']:.2f}")
    _console().print(t)
    plan = r["int8_plan"]
    typer.echo(f"cpu: {r['cpu']['model'] or r['cpu']['machine']} (VNNI: {'yes' if r['cpu']['vnni'] else 'no'}) -> "
               f"{plan['activations']} activations, {plan['weight_bits']}-bit weights: {plan['reason']}")
    for row in r.get("slow_layers", []):
        typer.echo(f"slower in int8: {row['layer']} ({row['int8_op']}) {row['int8_us']:.0f} us vs float {row['float_us']:.0f} us "
                   f"at batch 256 ({row['ratio']:.2f}x); keep it float with: lowbit export {model} --keep-float {row['layer']}")
    if "layers_note" in r:
        typer.echo(r["layers_note"])
    if per_layer:
        o = r["other_kernels_us"]
        typer.echo(f"per layer at batch 256: {len(r['layers'])} conv/linear layers, {len(r['slow_layers'])} not faster in int8; "
                   f"other kernels (quantize, layout, add, pool) {o['int8']:.0f} us int8 vs {o['fp32']:.0f} us float")
    if "latency_ratio_b1_keep_float" in r:
        typer.echo(f"with the slow layers in float: int8/float latency {r['latency_ratio_b1_keep_float']:.2f} at batch 1, "
                   f"{r['latency_ratio_b256_keep_float']:.2f} at batch 256")
    typer.echo(r["verdict"])
    if json_path:
        atomic_write_text(json_path, json.dumps(r, indent=1, default=float) + "\n")


@app.command()
@guarded
def qat(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:ClassOrFactory"),
    recipe: str = typer.Option("qat-w4a4-lsq", "--recipe", "-r", help="a kind: qat recipe (lowbit recipes) or .yaml path"),
    epochs: int | None = typer.Option(None, help="training epochs (default: the recipe's)"),
    lr: float | None = typer.Option(None, help="learning rate (default: the recipe's)"),
    batch_size: int | None = typer.Option(None, help="minibatch size (default: the recipe's)"),
    train_size: int | None = typer.Option(None, help="training images drawn from the training split (default: the recipe's, else all)"),
    distill: bool | None = typer.Option(None, "--distill/--no-distill", help="learn from the float model's soft targets too"),
    checkpoint: str | None = typer.Option(None, help="checkpoint file written after every epoch; an existing one is resumed"),
    weights: str | None = typer.Option(None, help="state_dict file"),
    calib_size: int | None = typer.Option(None, help="calibration images that initialize the grids (default: the recipe's)"),
    out: str | None = typer.Option(None, help="write the converted model here (packed .lowbit)"),
    json_path: str | None = typer.Option(None, "--json", help="write the result JSON here"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
    device: str = typer.Option("cpu", help="where the training loop runs: cpu, cuda, cuda:N, mps or auto (calibration, "
                               "convert and evaluation stay on the CPU)"),
    comm: str | None = typer.Option(None, help="under torchrun: send quantized gradients between the processes (terngrad, ternary, "
                                    "int8, int4, sign; default: DDP's fp32 all-reduce)"),
    comm_error_feedback: bool | None = typer.Option(None, "--comm-error-feedback/--no-comm-error-feedback",
                                                    help="keep the quantization residual locally (default: per method)"),
) -> None:
    """Quantization-aware training: prepare MODEL with a QAT recipe, train, convert, evaluate on the 10k test set.

    Under ``torchrun --nproc-per-node N -m lowbit qat ...`` the N processes calibrate on shards of the calibration
    set, train with DistributedDataParallel on slices of every minibatch, and rank 0 evaluates and writes the
    checkpoint, JSON and model."""
    import copy

    import torch

    from .. import distributed as lbd
    from ..algorithms.qat import QATConfig, train
    from ..algorithms.qat.trainer import resolve_device, use_distributed
    from ..api import evaluate, quantize_
    from ..data import load_fashion_mnist
    from ..io import atomic_write_text
    from ..recipes import load_recipe
    from ..zoo.resolve import load_model_spec

    dev = resolve_device(device)  # refuse a missing accelerator before any work
    multi = lbd.launched() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if multi:
        lbd.init_distributed(backend="gloo" if dev.type == "cpu" else "auto")
        if not lbd.is_main():
            os.environ["LOWBIT_PROGRESS"] = "0"
    if comm_error_feedback is not None and comm is None:
        raise ConfigError("--comm-error-feedback sets the error feedback of a gradient codec; give --comm too")
    use_distributed(None, comm)  # a bad --comm, or --comm without torchrun, fails before any work
    main = lbd.is_main()
    config = load_recipe(recipe)
    if not isinstance(config, QATConfig):
        raise ConfigError(f"recipe {recipe!r} is kind {config.kind}; lowbit qat needs a kind: qat recipe (see lowbit recipes)")
    changes = {k: v for k, v in (("epochs", epochs), ("lr", lr), ("batch_size", batch_size), ("train_size", train_size),
                                 ("distill", distill)) if v is not None}
    config = _with_calib_size(config.replace(**changes), calib_size)
    float_model = load_model_spec(model, weights).eval()
    calib, test = _load_data(data_dir, config.calib_size)
    train_set = load_fashion_mnist("train", data_dir)
    if config.train_size is not None:
        train_set = train_set.subset(config.train_size, seed=config.seed + 1)
    if multi:
        lbd.agree({"model": model, "recipe": config.to_dict(), "train_images": len(train_set), "comm": comm}, "run arguments")
    fp32 = evaluate(float_model, test, progress="evaluating fp32") if main else float("nan")
    prepared = quantize_(copy.deepcopy(float_model), config, data=calib, sharded=multi)
    ptq_acc = evaluate(prepared, test, progress="evaluating the initial grids") if main else float("nan")
    run_info = train(prepared, train_set, epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                     optimizer=config.optimizer, weight_decay=config.weight_decay,
                     teacher=float_model if config.distill else None, temperature=config.temperature,
                     distill_weight=config.distill_weight, checkpoint=checkpoint, seed=config.seed,
                     fingerprint={"model": model, "recipe": config.to_dict()}, device=device,
                     comm=comm, comm_error_feedback=comm_error_feedback)
    if not main:  # the trained model is the same on every rank: rank 0 evaluates and writes
        lbd.shutdown()
        return
    qmodel = quantize_(prepared, config.replace(step="convert"))
    acc = evaluate(qmodel, test, progress="evaluating")
    result = {"model": model, "recipe": Path(recipe).stem, "fp32_accuracy": fp32, "initial_accuracy": ptq_acc,
              "quantized_accuracy": acc, "accuracy_drop_pp": fp32 - acc, "train_images": len(train_set),
              "epochs": config.epochs, "distill": config.distill, "train_seconds": run_info["seconds"],
              "device": run_info["device"] + (f" ({torch.cuda.get_device_name()})" if run_info["device"].startswith("cuda") else ""),
              "resumed_from_epoch": run_info["resumed_from"], "history": run_info["history"], "config": config.to_dict(),
              "qat": qmodel.lowbit_info.get("qat", {}), "step_losses": run_info["step_losses"],
              "distributed": run_info.get("distributed")}
    from rich.table import Table

    procs = f", {lbd.world_size()} processes" if multi else ""
    t = Table(title=f"{model} / {result['recipe']} ({config.epochs} epochs on {len(train_set)} images{procs})")
    for h in ("fp32 acc %", "initial grids %", "QAT acc %", "drop pp", "train s"):
        t.add_column(h, justify="right")
    t.add_row(f"{fp32:.2f}", f"{ptq_acc:.2f}", f"{acc:.2f}", f"{fp32 - acc:+.2f}", f"{run_info['seconds']:.0f}")
    _console().print(t)
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1, default=float) + "\n")
    if out:
        from ..export import save

        save(qmodel, out, model_spec=model)
        typer.echo(f"converted model: {out}")
    lbd.shutdown()


def _int_list(text: str, flag: str) -> list[int]:
    """``"2,3,4"`` -> ``[2, 3, 4]``; an empty string gives ``[]`` (the config says what is wrong with it)."""
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be a comma list of integer widths (e.g. 2,3,4,5,6), got {text!r}") from None


def _dynamic_result(r: dict) -> dict:
    """``evaluate_dynamic``'s result for JSON: the per-sample tensors summarized (share of each width over
    all samples and layers; quantiles of the per-sample BitOPs fraction; accuracy per quartile of it)."""
    import torch

    bits, frac, correct = r["bits"], r["bitops"].double() / r["reference_bitops"], r["correct"]
    q = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    out = {k: v for k, v in r.items() if not isinstance(v, torch.Tensor)}
    out["bits_share"] = {str(b): float((bits == b).double().mean()) for b in bits.unique().tolist()}
    out["fraction_quantiles"] = dict(zip(("min", "p10", "median", "p90", "max"), torch.quantile(frac, q).tolist(), strict=True))
    order = frac.argsort()
    out["accuracy_by_fraction_quartile"] = [100.0 * float(correct[i].double().mean()) for i in order.tensor_split(4) if i.numel()]
    return out


def _print_dynamic(result: dict, title: str) -> None:
    from rich.table import Table

    t = Table(title=title)
    for h in ("fp32 acc %", "dynamic acc %", "drop pp", "avg BitOPs / ref", "controller share", "seconds"):
        t.add_column(h, justify="right")
    fp32, acc = result["fp32_accuracy"], result["dynamic_accuracy"]
    t.add_row("-" if fp32 is None else f"{fp32:.2f}", f"{acc:.2f}", "-" if fp32 is None else f"{fp32 - acc:+.2f}",
              f"{result['mean_fraction']:.3f}", f"{result['controller_share']:.2%}", f"{result['seconds']:.0f}")
    _console().print(t)


@dynamic_app.command("train")
@guarded
def dynamic_train(
    model: str = typer.Argument(..., help="zoo name (fmnist-resnet) or path/to/file.py:ClassOrFactory"),
    recipe: str = typer.Option("dynamic-b23456", "--recipe", "-r", help="a kind: dynamic recipe (lowbit recipes) or .yaml path"),
    bits: str | None = typer.Option(None, help="candidate widths, increasing, e.g. 2,3,4,5,6 (default: the recipe's)"),
    target_bitops: float | None = typer.Option(None, help="average BitOPs budget, fraction of the static model at the largest width (default: the recipe's)"),
    trunk: str | None = typer.Option(None, help="controller trunk: comma list of module names (default: the first conv block)"),
    epochs: int | None = typer.Option(None, help="training epochs (default: the recipe's)"),
    lr: float | None = typer.Option(None, help="learning rate (default: the recipe's)"),
    batch_size: int | None = typer.Option(None, help="minibatch size (default: the recipe's)"),
    train_size: int | None = typer.Option(None, help="training images drawn from the training split (default: all 60 000)"),
    distill: bool | None = typer.Option(None, "--distill/--no-distill", help="learn from the float model's soft targets too"),
    calib_size: int | None = typer.Option(None, help="calibration images that initialize the steps (default: the recipe's)"),
    weights: str | None = typer.Option(None, help="state_dict file of the float model"),
    device: str = typer.Option("cpu", help="where training runs: cpu, cuda, cuda:N, mps or auto (evaluation stays on the CPU)"),
    out: str | None = typer.Option(None, "--out", help="write the trained dynamic model here (safetensors + manifest)"),
    json_path: str | None = typer.Option(None, "--json", help="write the result JSON here"),
    report: str | None = typer.Option(None, "--report", help="write dynamic.html / .json here: bits vs the float model's confidence, per class, per layer"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
) -> None:
    """Dynamic quantization: prepare MODEL (calibrated on training images), train network and bit controller
    jointly on the Fashion-MNIST training split, evaluate on the 10k test set (measured per-sample BitOPs)."""
    import copy
    import time

    from ..algorithms.dynamic import DynamicConfig, evaluate_dynamic, prepare, save_dynamic, train_dynamic
    from ..algorithms.qat.trainer import resolve_device
    from ..api import evaluate
    from ..data import load_fashion_mnist
    from ..io import atomic_write_text
    from ..recipes import load_recipe
    from ..zoo.resolve import load_model_spec

    config = load_recipe(recipe)
    if not isinstance(config, DynamicConfig):
        raise ConfigError(f"recipe {recipe!r} is kind {config.kind}; lowbit dynamic train needs a kind: dynamic recipe (see lowbit recipes)")
    changes = {k: v for k, v in (("target_bitops", target_bitops), ("epochs", epochs), ("lr", lr), ("batch_size", batch_size),
                                 ("distill", distill), ("calib_size", calib_size)) if v is not None}
    if bits is not None:
        changes["bits"] = _int_list(bits, "--bits")
    if trunk is not None:
        changes["trunk"] = [t.strip() for t in trunk.split(",") if t.strip()]
    config = config.replace(**changes)  # validated here: bad widths, a target outside [(b_1/b_K)^2, 1], ...
    if train_size is not None and train_size < 1:
        raise ConfigError(f"--train-size must be >= 1, got {train_size}")
    resolve_device(device)  # refuse a missing accelerator before any work
    float_model = load_model_spec(model, weights).eval()
    calib, test = _load_data(data_dir, config.calib_size)
    train_set = load_fashion_mnist("train", data_dir)
    if train_size is not None:
        train_set = train_set.subset(train_size, seed=config.seed + 1)
    t0 = time.perf_counter()
    dyn = prepare(float_model, config, calib)  # also checks the target against this model's exact reachable range
    t_prep = time.perf_counter() - t0
    fp32 = evaluate(float_model, test, progress="evaluating fp32")
    t1 = time.perf_counter()
    run_info = train_dynamic(dyn, train_set, **config.train_kwargs(), teacher=copy.deepcopy(float_model) if config.distill else None,
                             device=device)
    seconds = t_prep + time.perf_counter() - t1  # prepare + train (the float evaluation in between is not counted)
    raw = evaluate_dynamic(dyn, test)
    r = _dynamic_result(raw)
    result = {"model": model, "recipe": Path(recipe).stem, "fp32_accuracy": fp32, "dynamic_accuracy": r["accuracy"],
              "accuracy_drop_pp": fp32 - r["accuracy"], "mean_fraction": r["mean_fraction"], "controller_share": r["controller_share"],
              "seconds": seconds, "train_seconds": run_info["seconds"], "train_images": len(train_set), "epochs": config.epochs,
              "device": run_info["device"], "history": run_info["history"], "config": config.to_dict(), "structure": dyn.summary(),
              "evaluation": r}
    _print_dynamic(result, f"{model} / {result['recipe']} ({config.epochs} epochs on {len(train_set)} images, bits {list(config.bits)}, "
                           f"target {config.target_bitops:g})")
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1, default=float) + "\n")
    if report:
        _dynamic_report(model, float_model, fp32, raw, test, report)
    if out:
        info = save_dynamic(dyn, out, model_spec=model)
        typer.echo(f"dynamic model: {out} ({info['bytes']} bytes)")


@dynamic_app.command("eval")
@guarded
def dynamic_eval(
    path: str = typer.Argument(..., help="a dynamic model file (lowbit dynamic train --out)"),
    weights: str | None = typer.Option(None, help="state_dict of the float model, for its accuracy (user models)"),
    json_path: str | None = typer.Option(None, "--json", help="write the result JSON here"),
    report: str | None = typer.Option(None, "--report", help="write dynamic.html / .json here (needs the float weights: zoo or --weights)"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
) -> None:
    """Load a saved dynamic model and evaluate it on the 10k test set (accuracy, measured per-sample BitOPs)."""
    import time

    from ..algorithms.dynamic import evaluate_dynamic, load_dynamic, read_manifest
    from ..api import evaluate
    from ..data import load_fashion_mnist
    from ..io import atomic_write_text
    from ..zoo import ZOO
    from ..zoo.resolve import load_model_spec

    manifest = read_manifest(path)
    spec = manifest.get("model")
    if not spec:
        raise ConfigError(f"{path} records no model spec; load it in Python with lowbit.load_dynamic(path, model=...)")
    test = load_fashion_mnist("test", data_dir)
    float_model = load_model_spec(spec, weights)
    t0 = time.perf_counter()
    if report and not (spec in ZOO or weights is not None):
        raise ConfigError(f"--report ranks the images by the float model's confidence: {spec!r} is not a zoo model, pass --weights")
    dyn = load_dynamic(path, model=float_model)
    raw = evaluate_dynamic(dyn, test)
    r = _dynamic_result(raw)
    seconds = time.perf_counter() - t0
    # the float accuracy needs the float weights: shipped with zoo models, given by --weights for a user model
    fp32 = evaluate(float_model, test, progress="evaluating fp32") if (spec in ZOO or weights is not None) else None
    cfg = (dyn.lowbit_info or {}).get("config") or {}
    result = {"model": spec, "file": str(path), "fp32_accuracy": fp32, "dynamic_accuracy": r["accuracy"],
              "accuracy_drop_pp": None if fp32 is None else fp32 - r["accuracy"], "mean_fraction": r["mean_fraction"],
              "controller_share": r["controller_share"], "seconds": seconds, "config": cfg, "structure": dyn.summary(), "evaluation": r}
    _print_dynamic(result, f"{spec} / {Path(path).name} (bits {list(dyn.bits)}, target {cfg.get('target_bitops', '?')})")
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1, default=float) + "\n")
    if report:
        _dynamic_report(spec, float_model, fp32, raw, test, report)


def _dynamic_report(model: str, float_model, fp32: float | None, raw: dict, test, out_dir: str) -> None:
    """dynamic.html / .json: this model's point and the bits-vs-difficulty analysis (float-model confidence)."""
    from ..algorithms.dynamic import dynamic_analysis, model_confidence
    from ..data.fmnist import CLASSES
    from ..report.html import write_dynamic_report

    conf, _ = model_confidence(float_model, test.images)
    a = dynamic_analysis(raw, conf, test.labels, classes=CLASSES)
    point = {"name": "this model", "kind": "dynamic", "mean_bitops": raw["mean_bitops"], "accuracy": raw["accuracy"]}
    paths = write_dynamic_report({"model": model, "float_accuracy": fp32, "curve": [point], "analysis": a}, out_dir)
    typer.echo(f"report: {paths['html']}")


def _sensitivity(model: str, recipe: str, weights: str | None, bits: str, estimators: str, samples: int, data_dir: str | None):
    from ..algorithms.mixed_precision import layer_sensitivity
    from ..data import load_fashion_mnist
    from ..zoo.resolve import load_model_spec

    try:
        widths = [int(b) for b in bits.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--bits must be a comma list of integers such as 2,3,4,6,8, got {bits!r}") from None
    if samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    base = _quantize_recipe(recipe)
    float_model = load_model_spec(model, weights)
    train = load_fashion_mnist("train", data_dir).subset(samples, seed=0)
    data = [(train.images[i:i + 128], train.labels[i:i + 128]) for i in range(0, samples, 128)]
    rep = layer_sensitivity(float_model, base, data, bits=widths, estimators=[e.strip() for e in estimators.split(",") if e.strip()],
                            max_samples=samples)
    return base, float_model, rep


@app.command()
@guarded
def sensitivity(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:ClassOrFactory"),
    recipe: str = typer.Option("w4a8", "--recipe", "-r", help="base PTQ recipe: its weight / activation specs are probed at each width"),
    weights: str | None = typer.Option(None, help="state_dict file for a user model"),
    bits: str = typer.Option("2,3,4,6,8", help="candidate widths"),
    estimators: str = typer.Option("mse,loss,hessian", help="any of mse, loss, hessian"),
    samples: int = typer.Option(512, help="labelled training images used"),
    json_path: str | None = typer.Option(None, "--json", help="write the sensitivity report here (input of lowbit mixed --sensitivity)"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
) -> None:
    """Per-layer sensitivity of MODEL: each layer alone quantized at each width; ranked table."""
    from ..io import atomic_write_text

    _, _, rep = _sensitivity(model, recipe, weights, bits, estimators, samples, data_dir)
    typer.echo(rep.markdown())
    if json_path:
        atomic_write_text(json_path, json.dumps(rep.to_dict(), indent=1) + "\n")


@app.command()
@guarded
def mixed(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:ClassOrFactory"),
    recipe: str = typer.Option("w4a8", "--recipe", "-r", help="base PTQ recipe (specs searched over widths)"),
    average_bits: float | None = typer.Option(None, "--avg-bits", help="size budget: this many bits per weight on average"),
    bitops_ratio: float | None = typer.Option(None, help="BitOPs budget as a fraction of the uniform W8A8 model"),
    latency_ratio: float | None = typer.Option(None, help="latency budget as a fraction of the float model's, on ONNX Runtime (measured table)"),
    latency_table: str | None = typer.Option(None, help="latency table JSON (lowbit latency); default: this machine's cache, measured if absent"),
    batch: int = typer.Option(1, help="batch size of the latency budget"),
    allow_float: bool = typer.Option(False, "--float/--no-float", help="also offer float (W32A32) to every searched layer"),
    estimator: str = typer.Option("hessian", help="sensitivity to minimize: mse, loss or hessian"),
    activation_bits: str = typer.Option("8", help="candidate activation widths, e.g. 8 or 4,8"),
    keep_ends: bool = typer.Option(True, help="pin the first and last layer at W8A8 (as the recipes do)"),
    weights: str | None = typer.Option(None, help="state_dict file for a user model"),
    bits: str = typer.Option("2,3,4,6,8", help="candidate weight widths"),
    samples: int = typer.Option(512, help="labelled training images for the sensitivities"),
    out: str | None = typer.Option(None, help="write the plan as a recipe YAML (use it with lowbit quantize --recipe)"),
    evaluate: bool = typer.Option(True, help="quantize with the plan and evaluate on the 10k test set"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
    method: str = typer.Option("milp", help="milp (exact, on the sensitivity estimates) or dnas (differentiable Gumbel-softmax search)"),
    dnas_steps: int = typer.Option(300, help="dnas: optimisation steps"),
    report: str | None = typer.Option(None, help="folder for an HTML / Markdown / JSON report: the plan's bits per layer, "
                                      "accuracy vs size (and vs latency) of a frontier of plans and of the uniform widths"),
) -> None:
    """Mixed precision: measure sensitivities, solve the budgeted MILP (or run the differentiable
    search), write / evaluate the plan.

    Budgets combine for the MILP: --avg-bits, --bitops-ratio and --latency-ratio (any of them, at
    least one); --method dnas takes exactly one budget and one activation width.
    """
    from ..algorithms.mixed_precision import model_cost, search, size_for_average_bits
    from ..io import atomic_write_text
    from ..report import quantize_and_measure

    if average_bits is None and bitops_ratio is None and latency_ratio is None:
        raise ConfigError("give a budget: --avg-bits B (bits per weight), --bitops-ratio R (of uniform W8A8) and/or "
                          "--latency-ratio R (of float on ONNX Runtime)")
    if method not in ("milp", "dnas"):
        raise ConfigError(f"--method must be milp or dnas, got {method!r}")
    if report is not None and not evaluate:
        raise ConfigError("--report needs the evaluation; drop --no-evaluate")
    if method == "dnas" and sum(b is not None for b in (average_bits, bitops_ratio, latency_ratio)) != 1:
        raise ConfigError("--method dnas takes exactly one budget: --avg-bits, --bitops-ratio or --latency-ratio")
    if latency_ratio is not None and not 0 < latency_ratio <= 1:
        raise ConfigError(f"--latency-ratio must be in (0, 1], got {latency_ratio}")
    if latency_table is not None and latency_ratio is None:
        raise ConfigError("--latency-table is used with a latency budget; add --latency-ratio R")
    if latency_ratio is not None:
        from ..quant import PerChannel, PerTensor

        w = _quantize_recipe(recipe).weight
        if w is not None and not isinstance(w.granularity, PerTensor | PerChannel):
            raise UnsupportedError(f"recipe {recipe}: {w.granularity.name} weights cannot run on ONNX Runtime's int8 kernels "
                                   "(no QDQ form below opset 21), so there is no latency to budget; use a per-channel recipe such as w4a8")
    try:
        abits = [int(a) for a in activation_bits.split(",") if a.strip()]
        wbits = [int(b) for b in bits.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--bits / --activation-bits must be comma lists of integers, got {bits!r} / {activation_bits!r}") from None
    if method == "dnas" and len(abits) != 1:
        raise ConfigError(f"--method dnas searches weight widths at one activation width; give one --activation-bits, got {activation_bits!r}")
    widths = sorted(set(wbits) | set(abits) | ({8} if keep_ends else set()))
    if method == "dnas":  # the layer sizes / MACs only (one cheap pass): dnas measures its own objective
        base, float_model, rep = _sensitivity(model, recipe, weights, "8", "mse", min(samples, 128), data_dir)
    else:
        base, float_model, rep = _sensitivity(model, recipe, weights, ",".join(map(str, widths)), estimator, samples, data_dir)
    pairs = [(w, a) for w in wbits for a in abits] + ([(32, 32)] if allow_float else [])
    fixed = {rep.layers[0]: (8, 8), rep.layers[-1]: (8, 8)} if keep_ends else {}
    budget: dict[str, float] = {}
    if average_bits is not None:
        budget["size"] = size_for_average_bits(rep, average_bits)
    if bitops_ratio is not None:
        if not 0 < bitops_ratio <= 1:
            raise ConfigError(f"--bitops-ratio must be in (0, 1], got {bitops_ratio}")
        budget["bitops"] = bitops_ratio * model_cost(rep, {n: (8, 8) for n in rep.layers}, "bitops")
    table = None
    if latency_ratio is not None:
        table = _latency_table(float_model, base, latency_table, batch, data_dir)
        budget["latency"] = latency_ratio * table.float_seconds
        typer.echo(f"latency table: int8 {table.int8_seconds * 1e3:.3f} ms, float {table.float_seconds * 1e3:.3f} ms per call "
                   f"at batch {batch}; budget {budget['latency'] * 1e3:.3f} ms")
    if method == "dnas":
        from ..algorithms.mixed_precision import dnas_search
        from ..data import load_fashion_mnist

        train = load_fashion_mnist("train", data_dir).subset(samples, seed=0)
        res = dnas_search(float_model, base, [train.images[i:i + 256] for i in range(0, samples, 256)], budget, bits=wbits,
                          allow_float=allow_float, act_bits=abits[0], fixed=fixed, latency=table, steps=dnas_steps, max_samples=samples,
                          log=typer.echo)
        plan = res.plan
        typer.echo(f"dnas: {res.seconds:.1f} s, {res.repaired} repair step(s) after the argmax read-out")
    else:
        plan = search(rep, budget, estimator=estimator, pairs=pairs, fixed=fixed, latency=table)
    typer.echo(f"plan ({plan.estimator}): {plan.average_weight_bits(rep):.2f} bits per weight on average, budget {budget}")
    for layer, (w, a) in plan.bits.items():
        typer.echo(f"  {layer}: W{w}A{a}")
    config = plan.to_config(base)
    if out:
        atomic_write_text(out, config.to_yaml())
        typer.echo(f"plan recipe: {out}")
    if evaluate:
        calib, test = _load_data(data_dir, config.calib_size)
        _, result = quantize_and_measure(float_model, config, calib, test, recipe=f"{Path(recipe).stem}-mixed", model_name=model)
        _print_result(result)
        if report is not None:
            from ..report import write_report

            result["mixed"] = _mixed_report_points(float_model, base, rep, plan, method, estimator, pairs, fixed, wbits, abits, table,
                                                   calib, test)
            paths = write_report([result], report)
            typer.echo(f"report: {paths['html']}")
        if table is not None:
            import copy

            from ..algorithms.mixed_precision.latency import measure_plan_latency
            from ..api import quantize_

            timed = quantize_(copy.deepcopy(float_model), config, data=calib)  # a clean copy (no diagnostics hooks) for export
            m = measure_plan_latency(timed, float_model, test.images[:1], batch=batch, threads=table.threads)
            pred = table.predict(plan.bits)
            typer.echo(f"latency: measured {m['plan'] * 1e3:.3f} ms ({m['ratio']:.2f}x float), predicted {pred * 1e3:.3f} ms "
                       f"({(pred - m['plan']) / m['plan']:+.1%})")


def _mixed_report_points(float_model, base, rep, plan, method, estimator, pairs, fixed, wbits, abits, table, calib, test) -> dict:
    """Accuracy (10k test), average weight bits and predicted latency / float of the uniform widths and,
    for the MILP, of a frontier of plans at evenly spaced average widths (for the report's plots; the
    differentiable search is not re-run per budget, so its report shows the chosen plan and the uniform widths)."""
    import copy

    from ..algorithms.mixed_precision import Plan, search, size_for_average_bits
    from ..api import evaluate as evaluate_model
    from ..api import quantize_

    def point(p: Plan, **extra) -> dict:
        acc = evaluate_model(quantize_(copy.deepcopy(float_model), p.to_config(base), data=calib), test)
        lat = table.predict(p.bits) / table.float_seconds if table is not None else None
        return {"average_bits": p.average_weight_bits(rep), "accuracy": acc, "latency_ratio": lat, **extra}

    a = max(abits)
    uniform = [point(Plan(bits={n: fixed.get(n, (w, a)) for n in rep.layers}), name=f"W{w}A{a}") for w in sorted(wbits)]
    chosen = {"average_bits": plan.average_weight_bits(rep), "latency_ratio": table.predict(plan.bits) / table.float_seconds if table else None}
    frontier = []
    if method == "milp":
        lo, hi = min(wbits), max(wbits)
        for i in range(7):
            avg = lo + (hi - lo) * i / 6
            try:
                p = search(rep, {"size": size_for_average_bits(rep, avg)}, estimator=estimator, pairs=pairs, fixed=fixed, latency=table)
            except ConfigError:  # below what the pinned layers allow
                continue
            frontier.append(point(p, budget_average_bits=avg))
    return {"method": method, "estimator": estimator if method == "milp" else "dnas", "frontier": frontier, "uniform": uniform,
            "chosen": chosen}


def _latency_table(float_model, base, path: str | None, batch: int, data_dir: str | None, threads: int = 2):
    """The latency table of ``path`` (checked against this machine and model), else this machine's cached / measured one."""
    import copy

    from ..algorithms.mixed_precision.latency import LatencyTable, cached_latency_table, machine_fingerprint, quantized_model_key
    from ..api import quantize_
    from ..data import load_fashion_mnist

    calib = load_fashion_mnist("train", data_dir).subset(min(base.calib_size, 256), seed=0)
    q = quantize_(copy.deepcopy(float_model), base.replace(weight=base.weight.replace(bits=8)), data=calib)
    if path is not None:
        t = LatencyTable.load(path)
        t.check(machine_fingerprint(threads), quantized_model_key(q, calib.images[:1]), batch)
        return t
    t, fresh = cached_latency_table(q, calib.images[:1], batch=batch, threads=threads)
    typer.echo(f"latency table: {'measured now and cached' if fresh else 'cached, measured on this machine'}")
    return t


@app.command()
@guarded
def latency(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:ClassOrFactory"),
    recipe: str = typer.Option("w8a8", "--recipe", "-r", help="PTQ recipe the table is measured with (int8 kernels)"),
    weights: str | None = typer.Option(None, help="state_dict file for a user model"),
    batch: int = typer.Option(1, help="batch size"),
    threads: int = typer.Option(2, help="ONNX Runtime intra-op threads"),
    repeats: int = typer.Option(15, help="timing rounds (median)"),
    out: str = typer.Option(..., "--out", help="write the latency table JSON here"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
) -> None:
    """Measure MODEL's per-layer latency table (int8 vs float per layer) on ONNX Runtime on this machine."""
    import copy

    from ..algorithms.mixed_precision.latency import measure_latency_table
    from ..api import quantize_
    from ..data import load_fashion_mnist
    from ..zoo.resolve import load_model_spec

    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    config = _quantize_recipe(recipe)
    float_model = load_model_spec(model, weights)
    calib = load_fashion_mnist("train", data_dir).subset(min(config.calib_size, 256), seed=0)
    q = quantize_(copy.deepcopy(float_model), config, data=calib)
    t = measure_latency_table(q, calib.images[:1], batch=batch, threads=threads, repeats=repeats)
    t.save(out)
    typer.echo(f"all int8 {t.int8_seconds * 1e3:.3f} ms, all float {t.float_seconds * 1e3:.3f} ms per call at batch {batch}")
    for n, d in sorted(t.layers.items(), key=lambda kv: -kv[1]):
        typer.echo(f"  {n}: float costs {d * 1e3:+.3f} ms")
    typer.echo(f"latency table: {out}")


@app.command("eval")
@guarded
def eval_cmd(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:ClassOrFactory"),
    weights: str | None = typer.Option(None, help="state_dict file"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
) -> None:
    """Top-1 accuracy of MODEL on the Fashion-MNIST test set (a dynamic model file from ``lowbit dynamic
    train --out`` also gives its measured average BitOPs; a compressed ``.lbc`` file from ``lowbit prune`` /
    ``lowbit compress --out`` its size and nonzero parameters)."""
    from ..api import evaluate
    from ..data import load_fashion_mnist
    from ..zoo.resolve import load_model_spec

    if model.endswith(".lbc"):
        from ..export.compressed import load_compressed

        m = load_compressed(model)  # the architecture from the recorded spec and module shapes, every weight from the file
        acc = evaluate(m, load_fashion_mnist("test", data_dir), progress="evaluating")
        typer.echo(json.dumps({"model": model, "accuracy": round(acc, 4), "parameters": sum(p.numel() for p in m.parameters()),
                               "nonzero": sum(int((p != 0).sum()) for p in m.parameters()), "file_bytes": Path(model).stat().st_size}))
        return
    if model.endswith(".safetensors") and Path(model).is_file():
        from ..algorithms.dynamic import evaluate_dynamic, load_dynamic

        dyn = load_dynamic(model)  # the architecture from the recorded spec, every value from the file; clear errors otherwise
        r = evaluate_dynamic(dyn, load_fashion_mnist("test", data_dir))
        typer.echo(json.dumps({"model": model, "accuracy": round(r["accuracy"], 4), "mean_bitops": r["mean_bitops"],
                               "mean_fraction": round(r["mean_fraction"], 6), "controller_share": round(r["controller_share"], 6)}))
        return
    m = load_model_spec(model, weights)
    acc = evaluate(m, load_fashion_mnist("test", data_dir), progress="evaluating")
    typer.echo(json.dumps({"model": model, "accuracy": round(acc, 4)}))


@app.command()
@guarded
def recipes() -> None:
    """List the shipped recipes, one line each."""
    from ..recipes import list_recipes

    for name, desc in list_recipes().items():
        typer.echo(f"{name:18s} {desc}")


@zoo_app.command("list")
@guarded
def zoo_list() -> None:
    """List zoo models with their accuracy and size."""
    from ..zoo import list_models

    for name, card in list_models().items():
        acc = f"{card['test_accuracy']:.2f}%" if card else "not trained"
        params = f"{card['parameters']:,} params" if card else ""
        typer.echo(f"{name:18s} {acc:>9s}  {params}")


@zoo_app.command("train")
@guarded
def zoo_train(
    name: str = typer.Argument(..., help="zoo model name"),
    epochs: int | None = typer.Option(None, help="override the epoch count"),
    seed: int = typer.Option(0),
    out_dir: str | None = typer.Option(None, help="where to write weights + card (default: the package's zoo/weights)"),
    data_dir: str | None = typer.Option(None, help="Fashion-MNIST folder"),
) -> None:
    """Train zoo model NAME on Fashion-MNIST (seeded) and write weights + model card."""
    from ..zoo.train import train_zoo_model

    card = train_zoo_model(name, epochs=epochs, seed=seed, data_dir=data_dir, out_dir=out_dir)
    typer.echo(json.dumps({k: card[k] for k in ("name", "test_accuracy", "epochs", "train_seconds", "parameters")}))


@app.command()
@guarded
def demo(
    model: str = typer.Option("fmnist-resnet", help="zoo name or path/to/file.py:ClassOrFactory"),
    recipes_: str = typer.Option("w8a8,w8a8-per-tensor,w4a8,w4-weight-only,w4a4", "--recipes", help="comma-separated recipes"),
    out: str = typer.Option("demo-report", help="output folder"),
    calib_size: int | None = typer.Option(None, help="calibration images (default: each recipe's calib_size)"),
    data_dir: str | None = typer.Option(None),
) -> None:
    """Quantize MODEL with several recipes, print float vs each, write an HTML report."""
    from rich.table import Table

    from ..api import evaluate
    from ..report import quantize_and_measure, write_report
    from ..zoo.resolve import load_model_spec

    names = [r.strip() for r in recipes_.split(",") if r.strip()]
    configs = {n: _with_calib_size(_quantize_recipe(n), calib_size) for n in names}  # validate all first
    float_model = load_model_spec(model)
    calib, test = _load_data(data_dir, max(c.calib_size for c in configs.values()))  # each config takes its first calib_size
    fp32 = evaluate(float_model, test, progress="evaluating fp32")
    results = []
    for n, cfg in configs.items():
        _, r = quantize_and_measure(float_model, cfg, calib, test, recipe=n, model_name=model, fp32_accuracy=fp32)
        results.append(r)
    t = Table(title=f"{model}: float vs quantized (Fashion-MNIST test, 10 000 images)")
    t.add_column("recipe", no_wrap=True)
    for h in ("accuracy %", "drop pp", "size KiB", "x smaller", "GBitOPs", "PTQ s"):
        t.add_column(h, justify="right")
    t.add_row("fp32", f"{fp32:.2f}", "-", f"{results[0]['size_bytes']['fp32'] / 1024:.1f}", "1.00",
              f"{results[0]['bitops']['fp32_bitops'] / 1e9:.3f}", "-")
    for r in results:
        t.add_row(r["recipe"], f"{r['quantized_accuracy']:.2f}", f"{r['accuracy_drop_pp']:+.2f}",
                  f"{r['size_bytes']['quantized'] / 1024:.1f}", f"{r['size_bytes']['fp32'] / r['size_bytes']['quantized']:.2f}",
                  f"{r['bitops']['bitops'] / 1e9:.3f}", f"{r['quantize_seconds']:.2f}")
    _console().print(t)
    paths = write_report(results, out)
    typer.echo(f"report: {paths['html']}")


# the compression commands (prune, lowrank, compress) live in their own module and register on this app
from . import compress as _compress_commands  # noqa: E402,F401


def run() -> None:
    """Run the app; usage errors exit 2 (typer/click), lowbit errors exit 2 with one line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        app(standalone_mode=True)
    except SystemExit as e:
        sys.exit(e.code)
