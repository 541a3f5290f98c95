"""Progress bars (rich) for anything that can take over a second; silent when disabled.

Set ``LOWBIT_PROGRESS=0`` to turn them off (tests do).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def enabled() -> bool:
    """Progress bars are on unless ``LOWBIT_PROGRESS=0`` or stderr is not a terminal."""
    flag = os.environ.get("LOWBIT_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return sys.stderr.isatty()


def track(it: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``it`` with a rich progress bar on stderr when enabled."""
    if not enabled():
        yield from it
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(it, description=description, total=total, console=Console(stderr=True), transient=True)
