"""Resolve :class:`lowbit.config.Select` selectors to module names. Matching nothing is an error.

Example:
    >>> import torch
    >>> from lowbit.config import Select
    >>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> candidates = quantizable_layers(m)
    >>> resolve(Select(type="Linear"), m, candidates), resolve(Select(position="first"), m, candidates)
    (['2'], ['0'])
"""

from __future__ import annotations

import re

from torch import nn

from ..config import Select
from ..errors import SelectorError
from ..nn import QUANT_MODULES


def quantizable_layers(model: nn.Module) -> list[str]:
    """Qualified names of the layers lowbit can quantize (Linear, Conv1d, Conv2d), in module order."""
    return [n for n, m in model.named_modules() if type(m) in QUANT_MODULES or _is_quant(m)]


def _is_quant(m: nn.Module) -> bool:
    from ..nn.layers import is_quant_module

    return is_quant_module(m)


def resolve(sel: Select, model: nn.Module, candidates: list[str]) -> list[str]:
    """Names among ``candidates`` that ``sel`` matches; raises SelectorError when none do (an
    ``optional`` selector returns ``[]`` instead)."""
    mods = dict(model.named_modules())
    if sel.name is not None:
        if sel.name not in mods:
            if sel.optional:
                return []
            raise SelectorError(
                f"selector name={sel.name!r} matches no module; quantizable layers are {candidates[:12]}"
                + (" ..." if len(candidates) > 12 else "")
            )
        # a container name selects the quantizable layers inside it
        out = [c for c in candidates if c == sel.name or c.startswith(sel.name + ".")]
    elif sel.regex is not None:
        rx = re.compile(sel.regex)
        out = [c for c in candidates if rx.search(c)]
    elif sel.type is not None:
        out = [c for c in candidates if type(mods[c]).__name__ == sel.type
               or any(b.__name__ == sel.type for b in type(mods[c]).__mro__)]
    else:
        out = candidates[:1] if sel.position == "first" else candidates[-1:]
    if not out and not sel.optional:
        raise SelectorError(
            f"selector {sel.to_dict()} matches no quantizable layer; the model's quantizable layers are "
            f"{candidates[:12]}{' ...' if len(candidates) > 12 else ''}"
        )
    return out


def select_layers(model: nn.Module, candidates: list[str], layers: tuple[Select, ...] = (), exclude: tuple[Select, ...] = ()) -> list[str]:
    """``candidates`` (in their order) kept by the ``layers`` selectors (all when empty) minus the ``exclude``
    ones; every selector must match something unless it is ``optional``.

    Example:
        >>> import torch
        >>> m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> select_layers(m, ["0", "2"], exclude=(Select(type="Linear"),))
        ['0']
    """
    chosen = list(candidates)
    if layers:
        picked: set[str] = set()
        for sel in layers:
            picked.update(resolve(sel, model, candidates))
        chosen = [c for c in candidates if c in picked]
    for sel in exclude:
        dropped = set(resolve(sel, model, candidates))
        chosen = [c for c in chosen if c not in dropped]
    return chosen
