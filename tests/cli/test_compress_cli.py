"""CLI of the compression commands (lowbit prune / lowrank / compress / eval FILE.lbc) on fmnist-mlp and -resnet:
the shared result record, the report, the stored .lbc file, and one-line errors with exit 2."""

import json

from tests.cli.test_cli import run


def test_prune_unstructured_end_to_end_writes_record_report_and_a_loadable_file(tmp_path):
    js, out = tmp_path / "r.json", tmp_path / "rep"
    p = run("prune", "fmnist-mlp", "--sparsity", "0.8", "--schedule", "oneshot", "--epochs", "0", "--json", str(js), "--out", str(out))
    assert p.returncode == 0, p.stderr
    r = json.loads(js.read_text())
    for key in ("fp32_accuracy", "accuracy", "accuracy_drop_pp", "parameters", "macs", "size_bytes", "details", "config"):
        assert key in r
    assert r["details"]["sparsity"]["total"] > 0.79 and r["size_bytes"]["ratio"] > 2.5
    assert r["config"]["kind"] == "prune" and r["accuracy"] > 70
    assert "accuracy vs stored size" in (out / "compression.html").read_text()
    e = run("eval", str(out / "model.lbc"))
    assert e.returncode == 0, e.stderr
    assert json.loads(e.stdout)["accuracy"] == round(r["accuracy"], 4)


def test_prune_structured_and_compress_on_resnet(tmp_path):
    js = tmp_path / "s.json"
    p = run("prune", "fmnist-resnet", "--structured", "--mac-ratio", "0.6", "--criterion", "l1", "--epochs", "0", "--json", str(js))
    assert p.returncode == 0, p.stderr
    r = json.loads(js.read_text())
    assert r["macs"]["ratio"] <= 0.6 and r["parameters"]["after"] < r["parameters"]["before"]
    js2, recipe = tmp_path / "c.json", tmp_path / "dc.yaml"
    recipe.write_text("kind: deep-compression\nschedule: oneshot\nepochs: 0\n")
    p = run("compress", "fmnist-mlp", "--pipeline", "deep-compression", "--sparsity", "0.9", "--share-epochs", "0", "--no-distill",
            "--recipe", str(recipe), "--json", str(js2))
    assert p.returncode == 0, p.stderr
    c = json.loads(js2.read_text())
    assert [s["stage"] for s in c["details"]["stages"]] == ["original", "pruned", "shared", "huffman"]
    assert c["size_bytes"]["ratio"] > 20


def test_lowrank_without_fine_tuning(tmp_path):
    js = tmp_path / "l.json"
    p = run("lowrank", "fmnist-resnet", "--epochs", "0", "--mac-ratio", "0.6", "--json", str(js), "--out", str(tmp_path / "lr"))
    assert p.returncode == 0, p.stderr
    r = json.loads(js.read_text())
    assert r["method"] == "lowrank" and r["macs"]["ratio"] < 0.7 and r["accuracy"] > 80
    # the factorized model is stored and evaluates back to the same accuracy
    e = run("eval", str(tmp_path / "lr" / "model.lbc"))
    assert e.returncode == 0, e.stderr
    assert f"{r['accuracy']:.2f}" in e.stdout


def test_compression_cli_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.lbc"
    bad.write_bytes(b"LBDC" + b"\0" * 60)
    cases = [
        (("prune", "fmnist-mlp", "--sparsity", "1.5"), "[0, 1)"),
        (("prune", "fmnist-mlp", "--criterion", "taylor"), "--criterion"),
        (("prune", "fmnist-mlp", "--recipe", "w8a8"), "kind prune"),
        (("compress", "fmnist-mlp", "--pipeline", "zip"), "--pipeline"),
        (("compress", "fmnist-mlp", "--bits", "12"), "1..8"),
        (("lowrank", "fmnist-mlp", "--energy", "0.9", "--mac-ratio", "0.5"), "not both"),
        (("eval", str(bad)), "SHA-256"),
    ]
    for args, needle in cases:
        p = run(*args)
        assert p.returncode == 2, (args, p.stderr)
        assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)
