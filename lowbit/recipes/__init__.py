"""Recipes: YAML files in this folder that load as the same config objects the API takes.

Example:
    >>> cfg = load_recipe("w4a8")
    >>> type(cfg).__name__, cfg.weight.bits, cfg.activation.bits
    ('PTQConfig', 4, 8)
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..config import Config
from ..errors import ConfigError

_DIR = Path(__file__).parent


def _config_classes() -> dict[str, type[Config]]:
    """Every config class with a registered handler or verb, by its ``kind``."""
    import lowbit  # noqa: F401 - importing the package registers every algorithm

    from ..api import _HANDLERS, _OWN_VERBS

    return {c.kind: c for c in (*_HANDLERS, *_OWN_VERBS)}


def list_recipes() -> dict[str, str]:
    """Recipe name -> its one-line description."""
    out = {}
    for p in sorted(_DIR.glob("*.yaml")):
        d = yaml.safe_load(p.read_text()) or {}
        out[p.stem] = d.get("description", "")
    return out


def load_recipe(name_or_path: str) -> Config:
    """Load a shipped recipe by name, or a YAML file by path, as its config object."""
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") and p.is_file()):
        p = _DIR / f"{name_or_path}.yaml"
        if not p.is_file():
            raise ConfigError(f"unknown recipe {name_or_path!r}; known recipes: {sorted(list_recipes())} (or a path to a .yaml file)")
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {p} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"recipe {p} must be a YAML mapping")
    kind = d.get("kind", "ptq")
    classes = _config_classes()
    if kind not in classes:
        raise ConfigError(f"recipe {p.name}: unknown kind {kind!r}; known kinds: {sorted(classes)}")
    try:
        return classes[kind].from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"recipe {p.stem}: {e}") from None
