"""Typed exceptions for lowbit.

Every user-facing entry point raises a subclass of :class:`LowbitError` whose message
says what was given, what is allowed and how to fix it. The CLI prints that message on
one line and exits with status 2.

Example:
    >>> from lowbit.errors import ConfigError
    >>> try:
    ...     raise ConfigError("bits=17 is outside 1..16; pick a bit width between 1 and 16")
    ... except ValueError as e:  # ConfigError is also a ValueError
    ...     print(type(e).__name__)
    ConfigError
"""

from __future__ import annotations


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose."""


class ConfigError(LowbitError, ValueError):
    """A config, recipe or argument is invalid (unknown key, bits out of range, ...)."""


class SelectorError(ConfigError):
    """A module selector matched no module of the model."""


class UnsupportedError(LowbitError, TypeError):
    """The model or a layer cannot take the requested scheme (e.g. no quantizable layer)."""


class CalibrationError(LowbitError, ValueError):
    """Calibration data is missing, empty or not finite."""


class DataError(LowbitError, FileNotFoundError):
    """A dataset file is missing or malformed."""


class WeightsError(LowbitError, ValueError):
    """A weights file does not match the model (missing / unexpected keys, shapes)."""


class ModelLoadError(LowbitError, ValueError):
    """A model spec (zoo name or ``file.py:Name``) cannot be resolved."""


class DistributedError(LowbitError, RuntimeError):
    """A distributed run cannot go on: ranks disagree (config, data), a peer died, or no process group to join."""
