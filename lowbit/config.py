"""Config dataclasses: keyword-only, validated in ``__post_init__``, versioned, YAML/JSON round-trip.

``QuantSpec`` composes the orthogonal axes of one quantizer (format, mapping, granularity,
observer, rounding, static/dynamic). Workflow configs (``PTQConfig``, ...) subclass
:class:`Config` and hold specs, selectors and overrides.

YAML form of a spec (every key optional)::

    weight: {bits: 4, signed: true, mapping: symmetric, granularity: per_group, group_size: 32,
             observer: mse}
    activation: {bits: 8, signed: false, mapping: affine, granularity: per_tensor,
                 observer: entropy, dynamic: false}

Example:
    >>> spec = QuantSpec(format=IntFormat(bits=4), granularity=PerGroup(32))
    >>> QuantSpec.from_dict(spec.to_dict()) == spec
    True
    >>> spec.to_dict()["group_size"]
    32
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .errors import ConfigError
from .observe import OBSERVERS
from .quant import Affine, IntFormat, PerChannel, PerGroup, PerTensor, PerToken, Symmetric, mapping_from_name
from .quant.formats import Mapping
from .quant.granularity import Granularity
from .quant.rounding import check_rounding

GROUP_POLICIES = ("error", "ignore", "adjust")


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; known keys: {sorted(allowed)}")


@dataclass(frozen=True, kw_only=True)
class QuantSpec:
    """One quantizer: ``format`` x ``mapping`` x ``granularity`` x ``observer`` x ``rounding`` (x ``dynamic``)."""

    format: IntFormat = IntFormat(bits=8, signed=True)
    mapping: Mapping = Symmetric()
    granularity: Granularity = PerTensor()
    observer: str = "minmax"
    observer_args: dict = field(default_factory=dict)
    rounding: str = "nearest_even"
    dynamic: bool = False

    KEYS: ClassVar[set[str]] = {
        "bits", "signed", "narrow_range", "mapping", "granularity", "axis", "group_size",
        "observer", "observer_args", "rounding", "dynamic",
    }

    def __post_init__(self) -> None:
        if not isinstance(self.format, IntFormat):
            raise ConfigError(f"format must be an IntFormat, got {self.format!r}")
        if not isinstance(self.mapping, Symmetric | Affine):
            raise ConfigError(f"mapping must be Symmetric() or Affine(), got {self.mapping!r}")
        if not isinstance(self.granularity, PerTensor | PerChannel | PerGroup | PerToken):
            raise ConfigError("granularity must be PerTensor(), PerChannel(axis), PerGroup(size) or PerToken(), "
                              f"got {self.granularity!r}")
        if self.observer not in OBSERVERS:
            raise ConfigError(f"unknown observer {self.observer!r}; known: {sorted(OBSERVERS)}")
        check_rounding(self.rounding)
        if self.dynamic and self.observer not in ("minmax",):
            raise ConfigError("dynamic quantization computes min-max ranges per input; use observer='minmax'")
        if isinstance(self.granularity, PerToken) and not self.dynamic:
            raise ConfigError("per_token granularity is for dynamic activation quantization (a scale per token at run time); "
                              "set dynamic: true")

    @property
    def bits(self) -> int:
        return self.format.bits

    def describe(self) -> str:
        """Short human form, e.g. ``int4 sym per_group(32) mse``."""
        g = self.granularity
        gs = {"per_tensor": "per_tensor", "per_channel": f"per_channel({getattr(g, 'axis', 0)})",
              "per_group": f"per_group({getattr(g, 'size', 0)})", "per_token": "per_token"}[g.name]
        kind = ("int" if self.format.signed else "uint") + str(self.format.bits)
        return f"{kind} {self.mapping.name} {gs} {'dynamic' if self.dynamic else self.observer}"

    def replace(self, **changes: Any) -> QuantSpec:
        """A copy with dict-style changes (``bits=``, ``granularity=``...) applied."""
        d = self.to_dict()
        d.update(changes)
        return QuantSpec.from_dict(d)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "bits": self.format.bits,
            "signed": self.format.signed,
            "narrow_range": self.format.narrow_range,
            "mapping": self.mapping.name,
            "granularity": self.granularity.name,
        }
        if isinstance(self.granularity, PerChannel):
            d["axis"] = self.granularity.axis
        if isinstance(self.granularity, PerGroup):
            d["group_size"] = self.granularity.size
        d.update(observer=self.observer, observer_args=dict(self.observer_args), rounding=self.rounding, dynamic=self.dynamic)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "quant spec") -> QuantSpec:
        _check_keys(d, cls.KEYS, where)
        fmt = IntFormat(bits=d.get("bits", 8), signed=bool(d.get("signed", True)), narrow_range=bool(d.get("narrow_range", False)))
        g = d.get("granularity", "per_tensor")
        if g == "per_tensor":
            gran: Granularity = PerTensor()
        elif g == "per_channel":
            gran = PerChannel(axis=int(d.get("axis", 0)))
        elif g == "per_group":
            if "group_size" not in d:
                raise ConfigError(f"{where}: granularity per_group needs group_size")
            gran = PerGroup(size=d["group_size"])
        elif g == "per_token":
            gran = PerToken()
        else:
            raise ConfigError(f"{where}: unknown granularity {g!r}; use per_tensor, per_channel, per_group or per_token")
        return cls(
            format=fmt,
            mapping=mapping_from_name(d.get("mapping", "symmetric")),
            granularity=gran,
            observer=d.get("observer", "minmax"),
            observer_args=dict(d.get("observer_args") or {}),
            rounding=d.get("rounding", "nearest_even"),
            dynamic=bool(d.get("dynamic", False)),
        )


@dataclass(frozen=True, kw_only=True)
class Select:
    """A module selector: exact ``name``, ``regex`` over qualified names, layer ``type`` name, or
    ``position`` (``first`` / ``last`` quantizable layer). Matching nothing is an error, unless
    ``optional`` is true: then a selector that matches nothing selects nothing (for shipped recipes
    that name layers only some models have, e.g. ``{regex: shortcut, optional: true}``)."""

    name: str | None = None
    regex: str | None = None
    type: str | None = None
    position: str | None = None
    optional: bool = False

    KEYS: ClassVar[set[str]] = {"name", "regex", "type", "position", "optional"}

    def __post_init__(self) -> None:
        given = [k for k in ("name", "regex", "type", "position") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"a selector takes exactly one of name / regex / type / position, got {given or 'none'}")
        if self.position is not None and self.position not in ("first", "last"):
            raise ConfigError(f"selector position must be 'first' or 'last', got {self.position!r}")
        if not isinstance(self.optional, bool):
            raise ConfigError(f"selector 'optional' must be true or false, got {self.optional!r}")
        if self.regex is not None:
            import re

            try:
                re.compile(self.regex)
            except re.error as e:
                raise ConfigError(f"selector regex {self.regex!r} is invalid: {e}") from None

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "regex", "type", "position") if getattr(self, k) is not None}
        if self.optional:
            d["optional"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict | str) -> Select:
        if isinstance(d, str):  # shorthand: a plain string is an exact name
            return cls(name=d)
        _check_keys(d, cls.KEYS, "selector")
        return cls(**d)


@dataclass(frozen=True, kw_only=True)
class Override:
    """Per-layer override: the layers matched by ``select`` use these specs (``None`` = keep float)."""

    select: Select
    weight: QuantSpec | None | str = "inherit"
    activation: QuantSpec | None | str = "inherit"

    KEYS: ClassVar[set[str]] = {"select", "weight", "activation"}

    def to_dict(self) -> dict:
        def enc(v):
            return v if isinstance(v, str) or v is None else v.to_dict()

        return {"select": self.select.to_dict(), "weight": enc(self.weight), "activation": enc(self.activation)}

    @classmethod
    def from_dict(cls, d: dict, base: Config | None = None) -> Override:
        _check_keys(d, cls.KEYS, "override")
        if "select" not in d:
            raise ConfigError("an override needs a 'select' entry (name / regex / type / position)")

        def dec(v, base_spec: QuantSpec | None, where: str):
            if v is None or v == "inherit":
                return v
            if v == "float":
                return None
            if not isinstance(v, dict):
                raise ConfigError(f"override {where} must be a mapping, 'inherit' or 'float', got {v!r}")
            if base_spec is not None:  # partial overrides patch the base spec
                merged = base_spec.to_dict()
                if "granularity" in v and v["granularity"] != merged["granularity"]:
                    merged.pop("axis", None)
                    merged.pop("group_size", None)
                merged.update(v)
                return QuantSpec.from_dict(merged, f"override {where}")
            return QuantSpec.from_dict(v, f"override {where}")

        bw = getattr(base, "weight", None) if base is not None else None
        ba = getattr(base, "activation", None) if base is not None else None
        return cls(
            select=Select.from_dict(d["select"]),
            weight=dec(d.get("weight", "inherit"), bw, "weight"),
            activation=dec(d.get("activation", "inherit"), ba, "activation"),
        )


@dataclass(frozen=True, kw_only=True)
class Config:
    """Base of workflow configs: versioned; ``to_dict`` / ``from_dict`` / YAML round-trip."""

    version: int = 1
    kind: ClassVar[str] = "config"

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = _encode(v)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        d = dict(d)
        kind = d.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ConfigError(f"config kind {kind!r} does not match {cls.__name__} (kind {cls.kind!r})")
        _check_keys(d, {f.name for f in fields(cls)}, f"{cls.__name__}")
        version = d.get("version", 1)
        if version != 1:
            raise ConfigError(f"{cls.__name__} version {version} is not supported by this lowbit (supports 1)")
        return cls._decode(d)

    @classmethod
    def _decode(cls, d: dict) -> Config:  # subclasses decode nested fields
        return cls(**d)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Config:
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML: {e}") from None
        return cls.from_dict(d or {})

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(path, self.to_yaml() if str(path).endswith((".yaml", ".yml")) else json.dumps(self.to_dict(), indent=2))

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def _encode(v: Any) -> Any:
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, list | tuple):
        return [_encode(x) for x in v]
    return v
