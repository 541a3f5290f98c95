"""``quantize_transformer``: calibration texts -> per-layer specs -> (sensitivity scan) -> layer by layer in
execution order: capture the layer's inputs from the partly quantized model, SmoothQuant / AWQ scaling,
GPTQ or round-to-nearest, swap in a ``QuantLinear`` -> quantized embedding tables.

Layers are processed sequentially (each sees the inputs the already-quantized layers before it produce), as
GPTQ and AWQ do on large models; padding tokens are left out of every statistic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..._progress import track
from ...config import QuantSpec
from ...errors import CalibrationError, ConfigError, DataError
from ...nn.layers import QuantEmbedding, QuantLinear
from ...transform import resolve, select_layers, set_submodule
from ..ptq.handler import _apply_group_policy
from .config import TransformerPTQConfig
from .gptq import gptq_quantize, grid_for, hessian

Batch = dict[str, torch.Tensor] | torch.Tensor


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the wanted layer has seen its input."""


def calibration_batches(model: nn.Module, data: Any, *, limit: int, max_length: int = 128, batch_size: int = 32) -> list[Batch]:
    """The model inputs for calibration: texts are tokenized by ``model.tokenize`` (a ``TextEncoder``), in
    batches of ``batch_size``, truncated to ``max_length`` tokens; dicts of tensors / tensors pass through.

    Example:
        >>> import torch
        >>> len(calibration_batches(torch.nn.Linear(4, 4), [torch.randn(2, 3, 4)], limit=8))
        1
    """
    if data is None:
        raise CalibrationError("transformer quantization needs calibration data: pass data= (a list of texts, e.g. "
                               "lowbit.data.text.load_corpus())")
    if isinstance(data, str):
        raise DataError("calibration data is a single string; pass a list of texts")
    items = list(data) if not isinstance(data, torch.Tensor) else [data]
    if not items:
        raise CalibrationError("calibration data is empty; pass at least one text")
    if all(isinstance(t, str) for t in items):
        if not hasattr(model, "tokenize"):
            raise ConfigError(f"{type(model).__name__} has no tokenizer; pass tokenized batches (dicts of tensors) instead of texts")
        bad = [i for i, t in enumerate(items) if not t.strip()]
        if bad:
            raise DataError(f"calibration texts {bad[:5]} are empty; drop them")
        texts = items[:limit]
        out = []
        for i in range(0, len(texts), batch_size):
            b = model.tokenize(texts[i : i + batch_size])
            if b["input_ids"].shape[1] > max_length:
                b = {k: v[:, :max_length] for k, v in b.items()}
            out.append(dict(b))
        return out
    if all(isinstance(t, dict) or isinstance(t, torch.Tensor) for t in items):
        return items
    kinds = sorted({type(t).__name__ for t in items})
    raise DataError(f"calibration data must be texts, dicts of tensors or tensors, got {kinds}")


def _run(model: nn.Module, batch: Batch) -> Any:
    return model(**batch) if isinstance(batch, dict) else model(batch)


def _as_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ConfigError(f"cannot compare model outputs of type {type(out).__name__}; the model must return a tensor")


def _tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``x`` (``(..., features)``) that are real tokens (``mask`` 1), as a 2-D tensor."""
    if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


@torch.no_grad()
def capture_inputs(model: nn.Module, name: str, batches: Sequence[Batch]) -> list[torch.Tensor]:
    """The inputs (real tokens only, 2-D) that module ``name`` receives on ``batches``; each forward stops
    right after the module has been reached."""
    mod = model.get_submodule(name)
    got: list[torch.Tensor] = []
    mask: list[torch.Tensor | None] = [None]

    def hook(_m, args):
        got.append(_tokens(args[0].detach(), mask[0]).float())
        raise _Stop

    h = mod.register_forward_pre_hook(hook)
    try:
        for b in batches:
            mask[0] = b.get("attention_mask") if isinstance(b, dict) else None
            try:
                _run(model, b)
            except _Stop:
                pass
    finally:
        h.remove()
    return got


@torch.no_grad()
def _reached(model: nn.Module, names: list[str], batch: Batch) -> list[str]:
    """``names`` in the order the forward pass first calls them (modules never called are left out)."""
    order: list[str] = []
    hooks = []
    for n in names:
        def hook(_m, _a, n=n):
            if n not in order:
                order.append(n)
        hooks.append(model.get_submodule(n).register_forward_pre_hook(hook))
    try:
        _run(model, batch)
    finally:
        for h in hooks:
            h.remove()
    return order


def smooth_scales(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel factors ``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)``.

    ``X diag(s)^-1`` and ``diag(s) W^T`` give the same product; with ``alpha = 0.5`` activation outlier
    channels hand half of their range (in log scale) to the weights, which per-channel grids absorb.

    Example:
        >>> import torch
        >>> smooth_scales(torch.tensor([100.0, 1.0]), torch.tensor([1.0, 1.0]), 0.5).tolist()
        [10.0, 1.0]
    """
    s = x_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1.0 - alpha)
    return s.clamp(min=1e-5)


def _rtn(weight: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ...quant import dequantize, quantize

    scale, zp = grid_for(weight, spec)
    return dequantize(quantize(weight, scale, zp, spec.format, spec.granularity), scale, zp, spec.granularity), scale, zp


@torch.no_grad()
def awq_scales(weight: torch.Tensor, x: torch.Tensor, spec: QuantSpec, act: Callable[[torch.Tensor], torch.Tensor] | None,
               grid: int = 20) -> tuple[torch.Tensor, dict]:
    """AWQ (Lin et al. 2024): per-input-channel scale ``s = mean|X|^alpha`` (normalised to geometric mean 1),
    ``alpha`` chosen on a grid to minimise ``||Q(W diag(s)) act(X / s)^T - W X^T||^2`` on the calibration
    tokens. Salient input channels (large activations) get larger weights, so less relative rounding error.

    Returns ``(s, info)``; ``alpha = 0`` (``s = 1``) is plain rounding, so the result is never worse on ``X``.
    """
    xs = x[:: max(1, x.shape[0] // 4096)] if x.shape[0] > 4096 else x
    ref = xs @ weight.T
    mean = xs.abs().mean(0).clamp(min=1e-6)
    best = (float("inf"), 0.0, torch.ones_like(mean))
    errors = []
    for k in range(grid):
        alpha = k / grid
        s = mean.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        wq, _, _ = _rtn(weight * s, spec)
        xi = xs / s
        if act is not None:
            xi = act(xi)
        err = float(((xi @ wq.T - ref) ** 2).mean())
        errors.append(err)
        if err < best[0]:
            best = (err, alpha, s)
    return best[2], {"alpha": best[1], "mse": best[0], "mse_rtn": errors[0]}


def _layer_specs(model: nn.Module, config: TransformerPTQConfig, candidates: list[str], info: dict) -> dict[str, tuple]:
    chosen = select_layers(model, candidates, config.layers, config.exclude)
    specs: dict[str, list] = {n: [config.weight, config.activation] for n in chosen}
    for ov in config.overrides:
        for n in resolve(ov.select, model, candidates):
            if n in specs:
                if ov.weight != "inherit":
                    specs[n][0] = ov.weight
                if ov.activation != "inherit":
                    specs[n][1] = ov.activation
    out = {}
    for n, (w, a) in specs.items():
        if w is None:
            info["skipped"].append({"layer": n, "reason": "override keeps it float"})
            continue
        w = _apply_group_policy(n, model.get_submodule(n), w, config.group_policy, info)
        if w == "skip":
            continue
        if a is not None and not a.dynamic:
            raise ConfigError(f"layer {n}: transformer activations are quantized dynamically; set dynamic: true in its override")
        out[n] = (w, a)
    return out


def _quant_linear(lin: nn.Linear, w: QuantSpec, a: QuantSpec | None, weight: torch.Tensor | None = None,
                  smooth: torch.Tensor | None = None, grid: tuple[torch.Tensor, torch.Tensor] | None = None) -> QuantLinear:
    q = QuantLinear.from_float(lin, w, a)
    with torch.no_grad():
        if weight is not None:
            q.weight.copy_(weight)
        if smooth is not None:
            q.register_buffer("smooth", smooth.to(q.weight.dtype).clone())
        if grid is not None:
            q.weight_quant.set_qparams(q.weight, *grid)
    return q


def rebuild_quantized(model: nn.Module, config: TransformerPTQConfig, layers: dict[str, dict], floats: set[str]) -> nn.Module:
    """The structure :func:`quantize_transformer` gave ``model`` (float skeleton), rebuilt from a packed file's
    manifest without data: each listed ``nn.Linear`` becomes a ``QuantLinear`` with the file's weight spec and
    dynamic input spec (``entry["input"]``) and a ``smooth`` buffer where the file stores one; each listed
    ``nn.Embedding`` a ``QuantEmbedding``. :func:`lowbit.load` then fills in the weights and grids.

    Raises:
        CheckpointError: a listed layer is missing from the model or is not a Linear / Embedding.
    """
    from ...export.checkpoint import CheckpointError

    mods = dict(model.named_modules())
    for name, entry in layers.items():
        m = mods.get(name)
        try:
            w = QuantSpec.from_dict(entry["spec"], f"layer {name}")
            a = QuantSpec.from_dict(entry["input"], f"layer {name} input") if "input" in entry else None
        except (KeyError, ConfigError) as e:
            raise CheckpointError(f"layer {name}: bad spec in the file ({e})") from None
        if type(m) is nn.Linear:
            q = QuantLinear.from_float(m, w, a)
            if f"{name}.smooth" in floats:
                q.register_buffer("smooth", torch.ones(m.in_features, dtype=m.weight.dtype))
        elif type(m) is nn.Embedding:
            q = QuantEmbedding.from_float(m, w)
        else:
            raise CheckpointError(f"layer {name} of the file is {type(m).__name__ if m is not None else 'missing'} in this model, "
                                  "expected nn.Linear or nn.Embedding: the file belongs to another architecture")
        set_submodule(model, name, q)
    model.lowbit_info = {"config": config.to_dict(), "kind": config.kind, "loaded": True}
    return model


@torch.no_grad()
def layer_sensitivity(model: nn.Module, specs: dict[str, tuple], batches: Sequence[Batch], *, progress: bool = False) -> dict[str, float]:
    """Relative output error ``||f_l(x) - f(x)||^2 / ||f(x)||^2`` when layer ``l`` alone is quantized (round to
    nearest with its spec), summed over ``batches`` — the ranking ``keep_sensitive`` uses."""
    ref = [_as_tensor(_run(model, b)).float() for b in batches]
    norm = sum(float((r**2).sum()) for r in ref)
    out = {}
    items = track(list(specs.items()), "sensitivity") if progress else specs.items()
    for n, (w, a) in items:
        lin = model.get_submodule(n)
        set_submodule(model, n, _quant_linear(lin, w, a))
        try:
            err = sum(float(((_as_tensor(_run(model, b)).float() - r) ** 2).sum()) for b, r in zip(batches, ref, strict=True))
        finally:
            set_submodule(model, n, lin)
        out[n] = err / max(norm, 1e-30)
    return out


@torch.no_grad()
def quantize_transformer(model: nn.Module, config: TransformerPTQConfig, data: Any, *, progress: bool = True) -> nn.Module:
    """Quantize a transformer (any ``nn.Module`` whose compute is ``nn.Linear`` layers; a ``TextEncoder`` takes
    a list of texts) in place with ``config`` and return it; ``model.lowbit_info`` says what was done.

    Per layer, in execution order (inputs captured from the partly quantized model, padding tokens dropped):
    ``smooth_alpha`` -> ``s = max|X|^a / max|W|^(1-a)``, ``W <- W diag(s)``, input ``x / s``; ``awq`` ->
    ``s = mean|X|^alpha`` searched; ``gptq`` -> ``H = 2 X^T X / n`` and column-wise error compensation
    (:func:`lowbit.algorithms.transformer.gptq.gptq_quantize`); ``rtn`` -> the observer's grid. Activations:
    the config's dynamic spec (per token). Embedding tables: ``config.embedding``.

    Example:
        >>> import torch
        >>> from lowbit.algorithms.transformer import TransformerPTQConfig
        >>> m = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
        >>> q = quantize_transformer(m, TransformerPTQConfig(method="gptq"), [torch.randn(4, 5, 16)], progress=False)
        >>> type(q[0]).__name__, q.lowbit_info["method"]
        ('QuantLinear', 'gptq')
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, TransformerPTQConfig):
        raise ConfigError(f"config must be a TransformerPTQConfig, got {type(config).__name__}")
    t0 = time.perf_counter()
    model.eval()
    batches = calibration_batches(model, data, limit=config.calib_size, max_length=config.max_length)
    info: dict = {"method": config.method, "skipped": [], "adjusted": [], "layers": {}, "embeddings": {},
                  "calibration_sequences": sum(int(b["input_ids"].shape[0]) if isinstance(b, dict) else int(b.shape[0])
                                               for b in batches)}
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no nn.Linear layer to quantize")
    reached = _reached(model, linears, batches[0])
    for n in linears:
        if n not in reached:
            info["skipped"].append({"layer": n, "reason": "not reached by the calibration inputs (unused in forward)"})
    specs = _layer_specs(model, config, reached, info)
    order = [n for n in reached if n in specs]
    if config.keep_sensitive:
        sens = layer_sensitivity(model, specs, batches[:1], progress=progress)
        keep = sorted(sens, key=sens.get, reverse=True)[: config.keep_sensitive]
        info["sensitivity"] = sens
        info["sensitive"] = keep
        for n in keep:
            if config.sensitive_weight is None:
                del specs[n]
                info["skipped"].append({"layer": n, "reason": "among the most sensitive layers (kept float)"})
            else:
                specs[n] = (config.sensitive_weight, specs[n][1])
        order = [n for n in order if n in specs]
    needs_inputs = config.method in ("gptq", "awq") or config.smooth_alpha is not None
    for n in track(order, f"{config.method} layers") if progress else order:
        w, a = specs[n]
        lin = model.get_submodule(n)
        W = lin.weight.detach().float()
        entry: dict = {"weight": w.describe(), "activation": a.describe() if a is not None else "float", "weight_bits": w.bits}
        smooth = None
        grid = None
        new_w = None
        if needs_inputs:
            xs = capture_inputs(model, n, batches)
            if not xs:
                raise CalibrationError(f"layer {n} saw no calibration tokens")
            x = torch.cat(xs)
            entry["tokens"] = int(x.shape[0])
            if config.smooth_alpha is not None:
                smooth = smooth_scales(x.abs().amax(0), W.abs().amax(0), float(config.smooth_alpha))
            if config.method == "awq":
                act = None
                if a is not None:
                    probe = QuantLinear.from_float(lin, w, a).input_quant
                    act = probe
                x_in = x / smooth if smooth is not None else x
                w_in = W * smooth if smooth is not None else W
                s, awq_info = awq_scales(w_in, x_in, w, act, grid=config.awq_grid)
                smooth = s if smooth is None else smooth * s
                entry["awq"] = awq_info
            if smooth is not None:
                W = W * smooth
                x = x / smooth
            if config.method == "gptq":
                H, _ = hessian([x])
                new_w, scale, zp, g_info = gptq_quantize(W, H, w, block=config.gptq_block, damp=config.gptq_damp,
                                                         act_order=config.act_order)
                grid = (scale, zp)
                entry["gptq"] = {k: float(v) for k, v in g_info.items()}
            elif smooth is not None:
                new_w = W
        set_submodule(model, n, _quant_linear(lin, w, a, weight=new_w, smooth=smooth, grid=grid))
        info["layers"][n] = entry
    if config.embedding is not None:
        for n, m in list(model.named_modules()):
            if type(m) is nn.Embedding:
                spec = _apply_group_policy(n, m, config.embedding, config.group_policy, info)
                if spec == "skip":
                    continue
                set_submodule(model, n, QuantEmbedding.from_float(m, spec))
                info["embeddings"][n] = {"weight": spec.describe(), "weight_bits": spec.bits, "rows": m.num_embeddings}
    info["seconds"] = time.perf_counter() - t0
    info["config"] = config.to_dict()
    model.lowbit_info = info
    return model
