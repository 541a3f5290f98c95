import json
import re

import pytest

from lowbit.data.text import list_corpora, load_corpus
from lowbit.errors import ConfigError, DataError


def test_shipped_corpus_is_clean_english():
    texts = load_corpus("en_docs")
    assert 400 <= len(texts) <= 600
    assert all(isinstance(t, str) for t in texts)
    assert len({t.lower() for t in texts}) == len(texts)
    words = [len(t.split()) for t in texts]
    assert min(words) >= 6 and max(words) <= 80
    for t in texts:
        letters = sum(c.isalpha() for c in t.replace(" ", ""))
        assert letters >= 0.85 * len(t.replace(" ", "")), t
        assert not re.search(r">>>|`|\{|\}|==|->|\n", t), t


def test_shipped_record_and_limit():
    from lowbit.data.text import CORPUS_DIR

    rec = json.loads((CORPUS_DIR / "en_docs.json").read_text())
    assert rec["name"] == "en_docs" and rec["license"].startswith("PSF-2.0") and rec["python"].startswith("3.")
    assert "en_docs" in list_corpora()
    assert len(rec["modules"]) >= 100  # varied topics: passages alternate over many stdlib modules
    assert load_corpus(limit=5) == rec["passages"][:5]
    assert load_corpus(limit=10_000) == rec["passages"]


def test_json_and_txt_paths(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(["One.", "Two."]))
    (tmp_path / "rec.json").write_text(json.dumps({"name": "x", "passages": ["A b c.", "D e f."]}))
    (tmp_path / "lines.txt").write_text("  first line \n\n\nsecond line\n")
    assert load_corpus(str(tmp_path / "list.json")) == ["One.", "Two."]
    assert load_corpus(tmp_path / "rec.json", limit=1) == ["A b c."]
    assert load_corpus(tmp_path / "lines.txt") == ["first line", "second line"]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.txt", "\n  \n", "no passages"),
        ("empty.json", "[]", "no passages"),
        ("bad.json", "[1, 2", "not valid JSON"),
        ("nonstr.json", '["ok", 5]', "passage 1"),
        ("blank.json", '{"passages": ["ok", "fine", "   "]}', "passage 2"),
        ("nokey.json", '{"texts": ["a"]}', "passages"),
        ("scalar.json", '"just a string"', "list of strings"),
        ("data.bin.txt", b"\x00\x01\x02", "binary"),
        ("latin.txt", b"caf\xe9\n", "not UTF-8"),
        ("notes.csv", "a,b\n", "suffix"),
    ],
)
def test_bad_files(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=match):
        load_corpus(p)


def test_missing_and_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_corpus("no_such_corpus")
    with pytest.raises(DataError, match="folder"):
        load_corpus(tmp_path)
    with pytest.raises(ConfigError, match="limit"):
        load_corpus(limit=0)
