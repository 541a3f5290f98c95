"""Harvest the ``en_docs`` evaluation corpus: English prose from the docstrings of the Python standard library.

The passages measure how faithfully a quantized sentence encoder (``lowbit.zoo.text``) embeds real
English text. The text comes from the docstrings (module, class and function) of the pure-Python
standard library of the running interpreter, which is covered by the PSF License Version 2.

The harvest is deterministic for a given Python version: files are read in sorted order, docstrings
in source order, and a fixed set of rules decides which paragraphs are prose:

* a paragraph is a blank-line separated block of a cleaned docstring; it is dropped when any line
  is indented (code, literal blocks, argument lists), starts like a list item or a doctest, or ends
  in ``:`` before the last line (a heading / definition list);
* its lines are joined with single spaces; it is kept when it has 6..80 words, starts with a capital
  letter, ends with ``.``, ``!`` or ``?``, contains none of the code / markup marks in ``_BANNED``,
  is at least 85% letters (ignoring spaces), has at most one identifier-like word per ten words
  (``a_b``, ``os.path``, ``camelCase``) and at least three English function words (``the``, ``of`` ...);
* duplicates (case-insensitive) are dropped.

Passages are grouped by top-level module (``email.mime.text`` -> ``email``) and taken round-robin
over the sorted groups — the first passage of every group, then the second, ... — until ``--size``
passages are chosen, so topics vary and any prefix of the corpus is varied too.

    python bench/harvest_corpus.py [--size 520] [--out lowbit/data/corpus/en_docs.json]

Writes the JSON atomically (``{"name", "source", "license", "python", "modules", "passages"}``) and
prints how many passages came from how many modules.
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import re
import sysconfig
from pathlib import Path

from lowbit.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "lowbit" / "data" / "corpus" / "en_docs.json"

# folders that hold tests, tools, generated tables, encodings or vendored code rather than library docs
_SKIP_DIRS = set("test tests idlelib lib2to3 ensurepip site-packages turtledemo encodings lib-dynload __pycache__ pydoc_data __phello__ distutils venv".split())
_SKIP_MODULES = {"this", "antigravity", "__hello__", "__future__"}
# private pure-Python implementations that carry the public module's documentation
_PRIVATE_KEEP = {"_pydecimal": "decimal", "_pyio": "io", "_strptime": "time", "_collections_abc": "collections"}
# code, markup, URLs, notes to self; "()" and "=" catch most inline code
_BANNED = tuple("` >>> :: { } [ ] \\ = -> < > __ # $ @ ^ ~ | % () -- http: https: www. XXX TODO Copyright copyright * \t".split(" "))
_FUNCTION_WORDS = set("the a an is are be to of and or in on for this that it with as by if not can will from which when".split())
_LIST_START = re.compile(r"^(\d+[.)]|[a-z][.)]|[-+*•]|\.\.)\s")
_IDENTIFIER = re.compile(r"_|\w\.\w|[a-z][A-Z]|\(|\)")
MIN_WORDS, MAX_WORDS = 6, 80


def stdlib_files(stdlib: Path) -> list[tuple[str, Path]]:
    """(topic, file) for every documentable stdlib source file, sorted by path."""
    out = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in _SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        top = rel.parts[0].removesuffix(".py")
        if top in _SKIP_MODULES:
            continue
        if top.startswith("_"):
            if top not in _PRIVATE_KEEP:
                continue
            top = _PRIVATE_KEEP[top]
        out.append((top, path))
    return out


def docstrings(source: str) -> list[str]:
    """Module, class and function docstrings of ``source`` in source order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                found.append(doc)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def prose_paragraphs(doc: str) -> list[str]:
    """The paragraphs of one docstring that pass the prose rules (module docstring), whitespace-normalized."""
    out = []
    for block in re.split(r"\n\s*\n", doc):
        lines = [ln.rstrip() for ln in block.strip("\n").split("\n")]
        if not lines or any(ln[:1].isspace() for ln in lines):
            continue
        if any(_LIST_START.match(ln) for ln in lines) or any(ln.endswith(":") for ln in lines[:-1]):
            continue
        text = " ".join(" ".join(lines).split())
        if is_prose(text):
            out.append(text)
    return out


def is_prose(text: str) -> bool:
    """The passage rules of the module docstring, applied to one whitespace-normalized passage."""
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    if not (text[0].isupper() and text[-1] in ".!?"):
        return False
    if any(mark in text for mark in _BANNED):
        return False
    chars = text.replace(" ", "")
    if sum(c.isalpha() for c in chars) < 0.85 * len(chars):
        return False
    identifiers = sum(bool(_IDENTIFIER.search(w.strip(".,;:!?'\""))) for w in words)
    if identifiers > len(words) // 10:
        return False
    return sum(w.lower().strip(".,;:!?'\"") in _FUNCTION_WORDS for w in words) >= 3


def harvest(stdlib: Path, size: int) -> tuple[list[str], list[str]]:
    """Round-robin ``size`` passages over the topics; returns (passages, topics that contributed)."""
    by_topic: dict[str, list[str]] = {}
    seen: set[str] = set()
    for topic, path in stdlib_files(stdlib):
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for doc in docstrings(source):
            for text in prose_paragraphs(doc):
                key = text.lower()
                if key not in seen:
                    seen.add(key)
                    by_topic.setdefault(topic, []).append(text)
    topics = sorted(by_topic)
    passages: list[str] = []
    used: set[str] = set()
    rank = 0
    while len(passages) < size and any(rank < len(by_topic[t]) for t in topics):
        for t in topics:
            if rank < len(by_topic[t]) and len(passages) < size:
                passages.append(by_topic[t][rank])
                used.add(t)
        rank += 1
    return passages, sorted(used)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=520, help="passages to keep (400..600 for the shipped corpus)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    passages, topics = harvest(stdlib, args.size)
    version = platform.python_version()
    record = {
        "name": "en_docs",
        "source": (
            f"docstrings of the CPython {version} standard library ({len(topics)} top-level modules), "
            "English prose paragraphs selected by bench/harvest_corpus.py"
        ),
        "license": "PSF-2.0 (Python Software Foundation License Version 2; the text is from the CPython standard library)",
        "python": version,
        "modules": topics,
        "passages": passages,
    }
    atomic_write_text(args.out, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    words = [len(p.split()) for p in passages]
    print(f"{len(passages)} passages from {len(topics)} modules, {min(words)}..{max(words)} words (mean {sum(words) / len(words):.1f}) -> {args.out}")


if __name__ == "__main__":
    main()
