"""The verbs: ``quantize_``, ``calibrate``, ``evaluate``; config -> handler registry.

Example:
    >>> import torch, lowbit
    >>> from lowbit.zoo.models import FmnistMLP
    >>> torch.manual_seed(0) and None
    >>> model = FmnistMLP().eval()
    >>> data = [torch.randn(32, 1, 28, 28) for _ in range(4)]
    >>> qmodel = lowbit.quantize_(model, lowbit.PTQConfig(), data=data)
    >>> type(qmodel.fc1).__name__, qmodel.fc1.input_quant.calibrated
    ('QuantLinear', True)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ._progress import track
from .algorithms.aciq import ACIQConfig, quantize_aciq
from .algorithms.dfq import DFQConfig, empirical_bias_correction, quantize_dfq
from .algorithms.ptq import PTQConfig, quantize_ptq
from .algorithms.zeroq import ZeroQConfig, quantize_zeroq
from .algorithms.zeroq.distill import finetune_zeroq
from .config import Config
from .errors import CalibrationError, ConfigError, UnsupportedError
from .nn import ActQuant
from .observe import calibrating

_HANDLERS: dict[type[Config], Callable[[nn.Module, Any], tuple[nn.Module, dict]]] = {}


def register_handler(config_cls: type[Config]):
    """Decorator registering ``fn(model, config) -> (model, info)`` as the handler of ``config_cls``."""

    def deco(fn):
        _HANDLERS[config_cls] = fn
        return fn

    return deco


register_handler(PTQConfig)(quantize_ptq)

# Configs applied by their own verb, not by quantize_: their workflow builds a new model rather than
# swapping layers in place (a dynamic model wraps the network with a bit controller). Recipes load
# them like any config; quantize_ names the verb to call.
_OWN_VERBS: dict[type[Config], str] = {}


def register_verb(config_cls: type[Config], verb: str) -> None:
    """Register ``config_cls`` as a config applied by ``verb`` (e.g. ``"lowbit.prepare_dynamic"``),
    so that recipes of its ``kind`` load and :func:`quantize_` says which verb to use.

    Example:
        >>> from lowbit.algorithms.dynamic import DynamicConfig
        >>> _OWN_VERBS[DynamicConfig]
        'lowbit.prepare_dynamic'
    """
    _OWN_VERBS[config_cls] = verb

# Refiners run after calibration on the same calibration inputs: fn(model, config, inputs) -> info dict.
# (AdaRound, bias correction, iterative noise adaptation, ... — algorithms that need data and a
# calibrated model.) A handler may also put a "synthetic_data" tensor in its info: quantize_ then
# calibrates (and refines) on it when the caller passes no data.
_REFINERS: dict[type[Config], tuple[Callable[[nn.Module, Any, list[torch.Tensor]], dict], Callable[[Any], bool] | None]] = {}


def register_refiner(config_cls: type[Config], when: Callable[[Any], bool] | None = None):
    """Decorator registering ``fn(model, config, inputs: list[Tensor]) -> dict`` to run after calibration
    (only for configs where ``when(config)`` is true, if given)."""

    def deco(fn):
        _REFINERS[config_cls] = (fn, when)
        return fn

    return deco


register_handler(DFQConfig)(quantize_dfq)
register_handler(ACIQConfig)(quantize_aciq)
register_handler(ZeroQConfig)(quantize_zeroq)
register_refiner(DFQConfig, when=lambda c: c.bias_correction == "empirical")(empirical_bias_correction)
register_refiner(ZeroQConfig, when=lambda c: c.fine_tune_epochs > 0)(finetune_zeroq)


def _inputs(data: Any, transform_fn: Callable[[Any], torch.Tensor] | None, max_samples: int | None, progress: str | None = None):
    """Yield the model inputs of ``data`` (at most ``max_samples`` samples), checked for NaN/Inf."""
    tf = transform_fn or _default_transform
    seen = 0
    batches = iter_batches(data)
    for i, batch in enumerate(track(batches, progress) if progress else batches):
        x = tf(batch)
        if not isinstance(x, torch.Tensor):
            raise CalibrationError(f"transform_fn returned {type(x).__name__}, expected a tensor")
        if max_samples is not None and seen + x.shape[0] > max_samples:
            x = x[: max_samples - seen]
        if x.numel() == 0:
            continue
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise CalibrationError(f"calibration batch {i} holds NaN/Inf values; clean the data before calibrating")
        yield x
        seen += x.shape[0]
        if max_samples is not None and seen >= max_samples:
            break


def collect_inputs(data: Any, *, transform_fn: Callable[[Any], torch.Tensor] | None = None, max_samples: int | None = None) -> list[torch.Tensor]:
    """The model inputs of ``data`` as a list of batches (at most ``max_samples`` samples), checked for NaN/Inf."""
    if data is None:
        raise CalibrationError("this step needs data: pass data= (an iterable of batches)")
    out = list(_inputs(data, transform_fn, max_samples))
    if not out:
        raise CalibrationError("calibration data is empty; pass at least one non-empty batch")
    return out


def _default_transform(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict) and "input" in batch:
        return batch["input"]
    raise CalibrationError(
        f"cannot find the model input in a batch of type {type(batch).__name__}; pass transform_fn=lambda b: ..."
    )


def iter_batches(data: Any) -> Iterable:
    """Batches of ``data``: any iterable, or an object with ``.batches()`` (lowbit datasets)."""
    if hasattr(data, "batches") and callable(data.batches):
        return data.batches(256)
    if isinstance(data, torch.Tensor):
        return data.split(256)
    try:
        return iter(data)
    except TypeError:
        raise CalibrationError(f"calibration data must be iterable (batches), got {type(data).__name__}") from None


def calibrate(
    model: nn.Module,
    data: Any,
    *,
    transform_fn: Callable[[Any], torch.Tensor] | None = None,
    max_samples: int | None = None,
) -> int:
    """Run ``data`` through ``model`` inside :func:`lowbit.calibrating`; returns samples seen.

    Raises CalibrationError for empty data or NaN/Inf inputs.
    """
    if data is None:
        raise CalibrationError("calibration needs data: pass data= (an iterable of batches), or a dynamic activation spec")
    seen = 0
    with calibrating(model):
        for x in _inputs(data, transform_fn, max_samples, "calibrating"):
            model(x)
            seen += x.shape[0]
        if seen == 0:
            raise CalibrationError("calibration data is empty; pass at least one non-empty batch")
    return seen


_run_calibration = calibrate  # quantize_ has a ``calibrate`` flag that shadows the function name


def activation_quantizers(model: nn.Module) -> list[ActQuant]:
    """All activation quantizers of ``model``."""
    return [m for m in model.modules() if isinstance(m, ActQuant)]


def quantize_(
    model: nn.Module,
    config: Config,
    *,
    data: Any = None,
    transform_fn: Callable[[Any], torch.Tensor] | None = None,
    calibrate: bool = True,
    sharded: bool = False,
) -> nn.Module:
    """Quantize ``model`` according to ``config``, calibrating on ``data`` when the config needs it.

    Layers are swapped in place. Functional ops (residual adds) are captured with torch.fx,
    so the returned model may be a ``GraphModule`` that shares the original's layers:
    always use the return value.

    Args:
        model: any ``nn.Module``.
        config: a registered config (``PTQConfig``, ...).
        data: iterable of batches (tensors, ``(x, y)`` tuples, or a lowbit dataset); at most
            ``config.calib_size`` samples are used.
        transform_fn: extracts the model input from a batch.
        calibrate: set False to calibrate later with ``with lowbit.calibrating(model): ...``
            (only for configs without a refinement step: AdaRound, iterative, DFQ with empirical
            bias correction and ZeroQ with fine-tuning raise ``ConfigError``).
        sharded: in a ``torch.distributed`` run, every rank passes the whole ``data``, observes only its
            share and the observer statistics are all-reduced (:func:`lowbit.distributed.calibrate_sharded`:
            the grids of one process calibrating the whole set — exactly those of :func:`lowbit.calibrate` for
            min-max observers; histogram observers use exact two-pass histograms). Refinements after
            calibration run on every rank's full data.

    Raises:
        ConfigError: unknown config type, a config applied by its own verb (``DynamicConfig``:
            :func:`lowbit.prepare_dynamic`), non-module model, ``calibrate=False`` with a refining config.
        CalibrationError: the config needs data and none was given (or it is empty / NaN).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(sharded, bool):
        raise ConfigError(f"sharded must be True or False, got {sharded!r}")
    if type(config) in _OWN_VERBS:
        raise ConfigError(f"{type(config).__name__} (kind {config.kind}) builds a new model rather than quantizing this one in "
                          f"place, so quantize_ does not apply it; call {_OWN_VERBS[type(config)]}(model, config, data)")
    handler = _HANDLERS.get(type(config))
    if handler is None:
        known = sorted(c.__name__ for c in _HANDLERS)
        raise ConfigError(f"no handler registered for {type(config).__name__}; known configs: {known}")
    t0 = time.perf_counter()
    model, info = handler(model, config)
    if data is None and "synthetic_data" in info:
        data, transform_fn = info.pop("synthetic_data"), None
    refiner, when = _REFINERS.get(type(config), (None, None))
    if refiner is not None and when is not None and not when(config):
        refiner = None
    needs_calib = any(not q.spec.dynamic and not q.calibrated for q in activation_quantizers(model))
    if refiner is not None and not calibrate:
        raise ConfigError(f"{type(config).__name__} (kind {config.kind}) refines the model on the calibration data inside "
                          "quantize_, so calibrate=False would silently skip that step; pass data= and calibrate=True, "
                          "or use kind: ptq to calibrate later")
    if calibrate and (needs_calib or refiner is not None):
        if data is None:
            why = [w for w, on in (("activation ranges", needs_calib), (f"its {config.kind} refinement", refiner is not None)) if on]
            raise CalibrationError(f"{type(config).__name__} (kind {config.kind}) needs calibration data for {' and '.join(why)}: "
                                   "pass data= (an iterable of batches, e.g. lowbit.data.load_fashion_mnist('train').subset(512))")
        inputs = collect_inputs(data, transform_fn=transform_fn, max_samples=getattr(config, "calib_size", None))
        if needs_calib and sharded:
            from .distributed import calibrate_sharded

            info["calibration_samples"] = calibrate_sharded(model, inputs)
        elif needs_calib:
            info["calibration_samples"] = _run_calibration(model, inputs)
        if refiner is not None:
            info.update(refiner(model, config, inputs))
    info["seconds"] = time.perf_counter() - t0
    info["config"] = config.to_dict()
    model.lowbit_info = info
    return model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    *,
    transform_fn: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: str | None = None,
) -> float:
    """Top-1 accuracy (percent) of ``model`` on ``(inputs, labels)`` batches.

    ``accuracy = 100 * #(argmax f(x) == y) / N``.
    """
    was = model.training
    model.eval()
    correct = total = 0
    batches = iter_batches(data)
    if progress:
        batches = track(batches, progress)
    for batch in batches:
        x, y = transform_fn(batch) if transform_fn else batch
        correct += int((model(x).argmax(-1) == y).sum())
        total += int(y.numel())
    model.train(was)
    if total == 0:
        raise UnsupportedError("evaluation data is empty")
    return 100.0 * correct / total
