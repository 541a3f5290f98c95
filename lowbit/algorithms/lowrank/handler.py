"""The low-rank verb: ``decompose(model, LowRankConfig, example=x)`` replaces layers by their factorizations.

Order of work (nothing in the model changes until every layer's factorization is built):

1. A name in ``layers`` / ``exclude`` / ``ranks`` that is no Linear / Conv2d of the model is a ``SelectorError``.
2. One forward pass of ``example[:1]`` (eval mode, no grad; training flags restored) records every
   layer's per-sample input shape (so MACs are exact for its spatial size and stride) and the order
   the layers run in. Then the layers: ``layers`` (or the default rule, see :class:`LowRankConfig`)
   plus the keys of ``ranks``, minus ``exclude``.
3. Ranks. Explicit ``ranks`` win. ``energy`` ``e`` means the same for every method: the factorization
   keeps at least ``e`` of ``||W||_F^2``, i.e. ``||W - W~||_F^2 <= (1 - e) ||W||_F^2``. SVD:
   :func:`choose_rank_energy` on the singular values of ``W_(0)`` (exact). Tucker-2: the same on ``W_(0)``
   (``r_out``) and ``W_(1)`` (``r_in``) at ``(1 + e) / 2`` each — each mode discards at most ``(1 - e) / 2``
   and the HOSVD error is at most the sum of the modes' discarded energies (HOOI only lowers it). CP:
   the smallest ``R`` whose ALS fit keeps ``e``. No ``R`` below the largest per-mode energy rank of the
   four unfoldings is fitted (a rank-``R`` CP tensor's unfoldings have rank ``<= R``, so it cannot keep
   ``e``); the search probes ranks 1, 2, 4, ... and bisects between two of them, up to the break-even
   rank when unprofitable layers are skipped (and always in budget mode); each probe is one memoized
   ALS fit. ``budget``: one global threshold ``e*`` — the largest, found by bisection, for which
   ``sum_l cost_l(rank_l(e*)) <= mac_ratio * sum_l MACs_l`` over the selected layers (explicit ranks
   fixed; a layer left as it is costs its original MACs). A single
   threshold keeps the worst layer's energy loss as small as the budget allows.
4. A layer whose rank saves no MACs is left as it is and reported (``skip_unprofitable``).
5. Swap in the factorizations (``nn.Sequential``), measure each weight's reconstruction error, and set
   ``model.lowbit_info``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
    ...                       nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
    >>> model = decompose(model, LowRankConfig(rank_by="budget", mac_ratio=0.5), example=torch.randn(4, 3, 8, 8))
    >>> info = model.lowbit_info
    >>> [(d["name"], d["method"]) for d in info["layers"]], info["macs_after"] <= 0.5 * info["macs_before"]
    ([('2', 'tucker2'), ('5', 'svd')], True)
    >>> [s["name"] for s in info["skipped"]], type(model[2]).__name__, len(model[2])
    (['0'], 'LowRankSequential', 3)
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from ...errors import ConfigError, SelectorError, UnsupportedError
from ...nn.layers import is_quant_module
from ...report.metrics import layer_macs
from .config import LowRankConfig
from .factorize import (
    LowRankSequential,
    _check_conv,
    _check_rank,
    _cp_sequential,
    _describe,
    _energy_rank,
    _few_threads,
    _skeleton,
    _svd_work,
    cp_factors,
    cp_max_rank,
    macs_of,
    mode_singular_values,
    reconstruct_weight,
    svd_conv,
    svd_linear,
    svd_max_rank,
    tucker2_conv,
)

_BISECTION_STEPS = 40  # energy threshold to ~1e-12: far below the spacing of any two layers' rank steps


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for a measuring pass; every module's training flag is restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, t in flags:
            m.training = t


def _method(module: nn.Module, method: str) -> str:
    """SVD for Linear and 1x1 convs; the configured factorization for k x k convs."""
    if isinstance(module, nn.Linear) or tuple(module.kernel_size) == (1, 1):
        return "svd"
    return "tucker2" if method == "auto" else method


def _default_skip(module: nn.Module) -> str | None:
    """Why the default selection leaves ``module`` out (None: it is selected)."""
    if isinstance(module, nn.Linear):
        i, o = module.in_features, module.out_features
        return None if i * o > i + o else f"{_describe(module)}: a rank-1 factorization costs in + out = {i + o} >= in * out = {i * o} MACs"
    if module.groups != 1:
        return f"{_describe(module)} is grouped / depthwise: already cheap, low-rank factors would not save MACs"
    if tuple(module.kernel_size) == (1, 1) and module.in_channels < 16:
        return f"{_describe(module)}: a 1x1 conv with fewer than 16 input channels has little to gain"
    return None


class _Layer:
    """One selected layer: its spectra / CP fits, MAC cost at any rank, and the rank for an energy threshold."""

    def __init__(self, name: str, module: nn.Module, method: str, in_shape: tuple[int, ...], config: LowRankConfig) -> None:
        self.name, self.module, self.method, self.in_shape, self.config = name, module, method, in_shape, config
        self.macs_before = macs_of(module, in_shape)
        w = module.weight.detach()
        if method == "svd":
            self.max_ranks: int | tuple[int, int] = svd_max_rank(module)
            self.spectra = (mode_singular_values(w, 0),)
        elif method == "tucker2":
            self.max_ranks = (module.out_channels, module.in_channels)
            self.spectra = (mode_singular_values(w, 0), mode_singular_values(w, 1))
        else:
            self.max_ranks = cp_max_rank(module)
            self.spectra = tuple(mode_singular_values(w, n) for n in range(4))
            self.fits: dict[int, tuple[list[torch.Tensor], float]] = {}
            per_rank = self.macs(1)  # CP's MACs are linear in R
            self.break_even = min(self.max_ranks, math.ceil(self.macs_before / per_rank) - 1)  # largest R that saves MACs

    def macs(self, ranks: int | tuple[int, int]) -> int:
        return macs_of(_skeleton(self.method, self.module, ranks, device="meta"), self.in_shape)

    def check(self, ranks: int | tuple[int, int]) -> int | tuple[int, int]:
        """Validate explicit ``ranks`` against the layer (ConfigError with the maximum)."""
        where = f"layer {self.name!r} ({_describe(self.module)}, {self.method})"
        if self.method == "tucker2":
            r_out, r_in = ranks if isinstance(ranks, tuple) else (ranks, ranks)
            return (_check_rank("r_out", r_out, self.max_ranks[0], where, "r_out <= C_out"),
                    _check_rank("r_in", r_in, self.max_ranks[1], where, "r_in <= C_in"))
        if isinstance(ranks, tuple):
            raise ConfigError(f"ranks[{self.name!r}]={list(ranks)}: {where} takes one rank, not [r_out, r_in] (pairs are for "
                              "Tucker-2 of k x k convs); give an integer")
        if self.method == "cp":
            why = "CP max rank C_out*C_in*k_h*k_w / max(C_out, C_in, k_h, k_w), where an exact decomposition exists"
        else:
            why = "min(out_features, in_features)" if isinstance(self.module, nn.Linear) else "min(C_out, C_in * k_h * k_w)"
        return _check_rank(f"ranks[{self.name!r}]", ranks, self.max_ranks, where, why)

    def cp_energy(self, r: int) -> float:
        """``1 - ||W - W_R||^2 / ||W||^2`` of the (memoized) rank-``R`` CP fit."""
        if r not in self.fits:
            c = self.config
            factors = cp_factors(self.module.weight, r, n_iter_max=c.cp_iters, tol=c.cp_tol, seed=c.seed)
            w = self.module.weight.detach().double().cpu()
            err = (torch.einsum("or,ir,hr,wr->oihw", *factors) - w).norm() ** 2 / w.norm().clamp_min(1e-300) ** 2
            self.fits[r] = (factors, 1.0 - float(err))
        return self.fits[r][1]

    def rank_for(self, energy: float, cap_at_break_even: bool) -> int | tuple[int, int] | None:
        """The smallest rank keeping ``energy``. CP searches only up to the break-even rank when ``cap_at_break_even``
        and gives None when no rank that far keeps it (a larger one would not save MACs)."""
        if self.method == "svd":
            return _energy_rank(self.spectra[0], energy)
        if self.method == "tucker2":
            per_mode = (1.0 + energy) / 2  # each mode discards <= (1 - e)/2, so ||W - W~||^2 <= (1 - e)||W||^2 (HOSVD bound)
            return (_energy_rank(self.spectra[0], per_mode), _energy_rank(self.spectra[1], per_mode))
        cap = max(1, self.break_even) if cap_at_break_even else self.max_ranks
        # Every unfolding of a rank-R CP tensor has rank <= R, so (Eckart-Young) R keeps at most the top-R energy of
        # each unfolding: no R below the largest per-mode energy rank can reach ``energy`` (no fit needed to know).
        floor = max(_energy_rank(s, energy) for s in self.spectra)
        if floor > cap:
            return None if cap_at_break_even else cap
        # Probe a fixed ladder 1, 2, 4, ..., cap, then bisect between two rungs: the ranks probed do not depend on
        # ``energy``, so the budget search's many thresholds reuse the memoized fits.
        lo, hi = 0, None  # rank lo keeps less than energy
        for r in sorted({min(2**k, cap) for k in range(cap.bit_length() + 1)}):
            if r >= floor and self.cp_energy(r) >= energy:
                hi = r
                break
            lo = r
        if hi is None:
            return None if cap_at_break_even else cap
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if mid >= floor and self.cp_energy(mid) >= energy else (mid, hi)
        return hi

    def build(self, ranks: int | tuple[int, int]) -> nn.Sequential:
        c = self.config
        if self.method == "svd":
            return svd_linear(self.module, ranks) if isinstance(self.module, nn.Linear) else svd_conv(self.module, ranks)
        if self.method == "tucker2":
            return tucker2_conv(self.module, ranks, c.hooi_iters)
        self.cp_energy(ranks)  # memoized: the fit the rank search made, if any
        return _cp_sequential(self.module, self.fits[ranks][0])


def _names_error(field: str, name: str, mods: dict[str, nn.Module], layer_names: list[str]) -> SelectorError:
    what = f"is a {type(mods[name]).__name__}, not a Linear / Conv2d" if name in mods else "matches no module"
    listing = layer_names if len(layer_names) <= 24 else [*layer_names[:24], "..."]
    return SelectorError(f"{field} entry {name!r} {what}; the model's Linear / Conv2d layers are {listing}")


def _select(model: nn.Module, config: LowRankConfig, shapes: dict[str, tuple[int, ...]]) -> tuple[list[str], list[dict]]:
    """(selected names in module order, layers the default rule leaves out with why). ``shapes``: input shape of
    every Linear / Conv2d the example ran, in execution order."""
    mods = dict(model.named_modules())
    explicit = set(config.layers) | set(config.ranks)
    first = next(iter(shapes), None)
    skipped, selected = [], []
    for n, m in mods.items():
        if not isinstance(m, nn.Linear | nn.Conv2d) or n in config.exclude:
            continue
        if n in explicit:
            if n not in shapes:
                raise ConfigError(f"layer {n!r} does not run on the example input, so its input size is unknown; pass an "
                                  "example that reaches it or exclude it")
            if is_quant_module(m):
                raise UnsupportedError(f"layer {n!r} is already quantized ({type(m).__name__}); decompose the float model "
                                       "first, then quantize the decomposed one")
            if isinstance(m, nn.Conv2d):
                _check_conv(m, f"low-rank decomposition of {n!r}")
            selected.append(n)
        elif not config.layers:
            if n not in shapes:
                why = "not run by the example input"
            elif is_quant_module(m):
                why = f"already quantized ({type(m).__name__})"
            elif isinstance(mods.get(n.rpartition(".")[0]), LowRankSequential):
                why = "a factor of an earlier decomposition; name it in layers to decompose it further"
            elif n == first:
                # like the first layer kept at 8 bits in quantization: it sees the raw input and its error reaches every
                # later layer (fmnist-resnet, budget 0.5: 38 % float-argmax agreement with the stem decomposed, 96 % without)
                why = "the first layer the input reaches: its error propagates through the whole model; name it in layers to decompose it"
            else:
                why = _default_skip(m)
            if why is None:
                selected.append(n)
            else:
                skipped.append({"name": n, "why": why})
    return selected, skipped


def _check_names(model: nn.Module, config: LowRankConfig) -> None:
    mods = dict(model.named_modules())
    layer_names = [n for n, m in mods.items() if isinstance(m, nn.Linear | nn.Conv2d)]
    for field, names in (("layers", config.layers), ("exclude", config.exclude), ("ranks", tuple(config.ranks))):
        for n in names:
            if n not in layer_names:
                raise _names_error(field, n, mods, layer_names)


def _input_shapes(model: nn.Module, names: list[str], example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for n in names:
        def hook(mod, inp, out, n=n):
            shapes.setdefault(n, tuple(inp[0].shape[1:]))
        hooks.append(model.get_submodule(n).register_forward_hook(hook))
    try:
        model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _budget_threshold(plans: list[_Layer], ranks: dict[str, int | tuple[int, int]], config: LowRankConfig) -> float:
    """The largest energy threshold whose ranks fit the MAC budget (see the module docstring)."""
    keep = config.skip_unprofitable

    def cost(p: _Layer, r) -> int:
        if r is None:
            return p.macs_before  # CP above the break-even rank: left as it is
        m = p.macs(r)
        return min(m, p.macs_before) if keep else m

    free = [p for p in plans if p.name not in ranks]
    fixed = sum(cost(p, ranks[p.name]) for p in plans if p.name in ranks)
    budget = config.mac_ratio * sum(p.macs_before for p in plans)

    def total(e: float) -> int:
        return fixed + sum(cost(p, p.rank_for(e, True)) for p in free)

    low = total(0.0)
    if low > budget:
        before = sum(p.macs_before for p in plans)
        raise ConfigError(f"mac_ratio={config.mac_ratio} cannot be met: with every free layer at rank 1 and the explicit ranks as "
                          f"given, the {len(plans)} selected layers keep {low / before:.3f} of their {before} MACs; raise mac_ratio "
                          f"to at least {math.ceil(low / before * 1000) / 1000}, lower explicit ranks, or exclude layers that cannot shrink")
    lo, hi = 0.0, 1.0  # no probe at 1.0 itself: full-energy CP fits are the most expensive and a budget < 1 rarely affords them
    for _ in range(_BISECTION_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) <= budget else (lo, mid)
    return lo


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _as_info(r: int | tuple[int, int]) -> int | list[int]:
    return list(r) if isinstance(r, tuple) else r


def decompose(model: nn.Module, config: LowRankConfig, *, example: torch.Tensor) -> nn.Module:
    """Replace Linear / Conv2d layers by low-rank factorizations, in place.

    Linear and 1x1 convs take truncated SVD (:func:`svd_linear`, :func:`svd_conv`), k x k convs Tucker-2
    (:func:`tucker2_conv`), CP (:func:`cp_conv`) or SVD per ``config.method``; ranks come from
    ``config.ranks``, an energy fraction or a global MAC budget (module docstring). Fine-tune afterwards
    with :func:`lowbit.train` — the factors are ordinary trainable layers.

    Args:
        model: the float model (modified in place and returned).
        config: a :class:`LowRankConfig`.
        example: an input batch; its first sample runs once (eval mode, no grad) to measure each layer's
            input size.

    Returns:
        ``model``, with ``model.lowbit_info``: ``layers`` (per decomposed layer: ``name``, ``method``,
        ``ranks`` (int, or ``[r_out, r_in]`` for Tucker-2 — the ``ranks`` config format), ``macs_before``,
        ``macs_after``, ``params_before``, ``params_after``, ``rel_error`` = ``||W - W~||_F / ||W||_F``),
        ``skipped`` (``name``, ``why``), ``macs_before`` / ``macs_after`` (sums over the decomposed layers),
        ``mac_ratio``, ``energy_threshold`` (the energy, or ``e*`` in budget mode), ``model_macs_before`` /
        ``model_macs_after`` (every Linear / Conv of the model), ``seconds``.

    Raises:
        SelectorError: a name in ``layers`` / ``exclude`` / ``ranks`` is no Linear / Conv2d of the model.
        UnsupportedError: a named layer is grouped / depthwise or already quantized.
        ConfigError: an explicit rank out of range; a budget that rank 1 everywhere cannot meet; a named
            layer that the example input does not reach.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> _ = decompose(model, LowRankConfig(ranks={"1": 4}, layers=["1"]), example=torch.randn(2, 8, 8))
        >>> model[1], model.lowbit_info["layers"][0]["macs_after"]
        (LowRankSequential(
          method=svd
          (0): Linear(in_features=64, out_features=4, bias=False)
          (1): Linear(in_features=4, out_features=32, bias=True)
        ), 384)
    """
    t0 = time.perf_counter()
    if not isinstance(config, LowRankConfig):
        raise ConfigError(f"decompose takes a LowRankConfig, got {type(config).__name__}")
    if not isinstance(example, torch.Tensor) or example.ndim < 1 or example.shape[0] < 1:
        raise ConfigError(f"example must be an input batch tensor with at least one sample, got {type(example).__name__}"
                          + (f" of shape {tuple(example.shape)}" if isinstance(example, torch.Tensor) else ""))
    _check_names(model, config)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    with _few_threads(max((_svd_work(m.weight) for m in layers), default=0)):
        return _decompose(model, config, example, t0)


def _decompose(model: nn.Module, config: LowRankConfig, example: torch.Tensor, t0: float) -> nn.Module:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    with _inference(model):
        shapes = _input_shapes(model, names, example)
        model_before = sum(layer_macs(model, example).values())
    selected, skipped = _select(model, config, shapes)
    mods = dict(model.named_modules())
    plans = [_Layer(n, mods[n], _method(mods[n], config.method), shapes[n], config) for n in selected]
    ranks = {p.name: p.check(config.ranks[p.name]) for p in plans if p.name in config.ranks}
    if config.rank_by == "budget":
        threshold = _budget_threshold(plans, ranks, config)
        cap = True
    else:
        threshold = config.energy
        cap = config.skip_unprofitable
    for p in plans:
        if p.name not in ranks:
            ranks[p.name] = p.rank_for(threshold, cap)

    built: list[tuple[_Layer, nn.Sequential, dict]] = []
    for p in plans:
        r = ranks[p.name]
        if r is None:
            skipped.append({"name": p.name, "why": f"CP: no rank up to the break-even rank {p.break_even} keeps {threshold:.4g} of the "
                                                  "energy, so no rank both keeps it and saves MACs"})
            continue
        after = p.macs(r)
        if after >= p.macs_before:
            msg = (f"{p.method} at ranks {_as_info(r)} costs {after} MACs >= {p.macs_before} of the original "
                   f"{_describe(p.module)}")
            if config.skip_unprofitable:
                skipped.append({"name": p.name, "why": msg + ": left as it is"})
                continue
            warnings.warn(f"layer {p.name!r}: {msg}; decomposed anyway (skip_unprofitable is false)", stacklevel=3)
        new = p.build(r)
        w = p.module.weight.detach().double()
        err = float((reconstruct_weight(new).double() - w).norm() / w.norm()) if w.norm() > 0 else 0.0
        built.append((p, new, {"name": p.name, "method": p.method, "ranks": _as_info(r), "macs_before": p.macs_before,
                               "macs_after": after, "params_before": _params(p.module), "params_after": _params(new),
                               "rel_error": err}))

    for p, new, _ in built:  # the model changes only here, after every factorization succeeded
        parent, _, child = p.name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    with _inference(model):
        model_after = sum(layer_macs(model, example).values())
    rows = [row for _, _, row in built]
    before, after = sum(r["macs_before"] for r in rows), sum(r["macs_after"] for r in rows)
    model.lowbit_info = {
        "layers": rows, "skipped": skipped, "rank_by": config.rank_by, "energy_threshold": threshold,
        "macs_before": before, "macs_after": after, "mac_ratio": after / before if before else 1.0,
        "model_macs_before": model_before, "model_macs_after": model_after, "seconds": time.perf_counter() - t0,
    }
    return model
