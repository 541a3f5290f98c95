"""Text corpora: evaluation passages for sentence encoders (:mod:`lowbit.zoo.text`).

The shipped corpus ``en_docs`` holds 520 English passages (single sentences and short paragraphs,
6..80 words, deduplicated) taken from the docstrings of 156 CPython 3.11 standard library modules
(PSF License 2.0) by ``bench/harvest_corpus.py``; passages alternate between modules, so any prefix
is varied in topic. Your own corpus can be a ``.json`` file (the same schema, or a plain list of
strings) or a ``.txt`` file with one passage per non-empty line.

Example:
    >>> texts = load_corpus("en_docs", limit=3)
    >>> len(texts), all(isinstance(t, str) and t for t in texts)
    (3, True)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ConfigError, DataError

CORPUS_DIR = Path(__file__).parent / "corpus"


def list_corpora() -> list[str]:
    """Names of the corpora shipped with lowbit.

    Example:
        >>> "en_docs" in list_corpora()
        True
    """
    return sorted(p.stem for p in CORPUS_DIR.glob("*.json"))


def load_corpus(name_or_path: str | os.PathLike = "en_docs", limit: int | None = None) -> list[str]:
    """Load a text corpus as a list of passages, in file order.

    Args:
        name_or_path: a shipped corpus name (:func:`list_corpora`) or a path to a ``.json`` file
            (``{"passages": [...], ...}`` or a list of strings) or a ``.txt`` file (one passage per
            non-empty line, surrounding whitespace stripped).
        limit: keep only the first ``limit`` passages (``None``: all).

    Raises:
        ConfigError: ``limit`` is not a positive int.
        DataError: the file is missing, not UTF-8 text / valid JSON, has no passages, or holds an
            entry that is not a non-empty string (the message gives its index).

    Example:
        >>> import json, os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "mine.json")
        >>> with open(p, "w") as f:
        ...     json.dump(["One passage.", "Another one."], f)
        >>> load_corpus(p)
        ['One passage.', 'Another one.']
    """
    if limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and limit > 0):
        raise ConfigError(f"limit must be a positive int or None, got {limit!r}")
    path = _resolve(name_or_path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"corpus file {path} cannot be read ({e})") from None
    if b"\x00" in raw:
        raise DataError(f"corpus file {path} is binary, not text; give a UTF-8 .json or .txt file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"corpus file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix.lower() == ".json":
        passages = _from_json(text, path)
    else:
        passages = [line.strip() for line in text.splitlines() if line.strip()]
    if not passages:
        raise DataError(f"corpus {path} holds no passages; add at least one non-empty text")
    return passages[:limit] if limit is not None else passages


def _resolve(name_or_path: str | os.PathLike) -> Path:
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ConfigError(f"corpus must be a name {list_corpora()} or a file path, got {type(name_or_path).__name__}")
    shipped = CORPUS_DIR / f"{name_or_path}.json"
    if isinstance(name_or_path, str) and os.sep not in name_or_path and "/" not in name_or_path and shipped.is_file():
        return shipped
    path = Path(name_or_path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"corpus {str(name_or_path)!r} {what}; use a shipped name {list_corpora()} or a path to a .json / .txt file")
    if path.suffix.lower() not in (".json", ".txt"):
        raise DataError(f"corpus file {path} has suffix {path.suffix!r}; use .json (list of strings or {{'passages': [...]}}) or .txt (one passage per line)")
    return path


def _from_json(text: str, path: Path) -> list[str]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"corpus file {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(obj, dict):
        if "passages" not in obj:
            raise DataError(f"corpus file {path} is a JSON object without a 'passages' list (keys: {sorted(obj)[:8]})")
        obj = obj["passages"]
    if not isinstance(obj, list):
        raise DataError(f"corpus file {path} must hold a list of strings or {{'passages': [...]}}, got a JSON {type(obj).__name__}")
    for i, p in enumerate(obj):
        if not isinstance(p, str) or not p.strip():
            got = repr(p) if isinstance(p, str) else f"a {type(p).__name__}"
            raise DataError(f"corpus file {path}: passage {i} must be a non-empty string, got {got}")
    return list(obj)
