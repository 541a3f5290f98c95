"""CLI under torchrun: ``torchrun --nproc-per-node 2 -m lowbit qat`` trains with DDP (rank 0 writes the JSON);
distributed flags without a launcher are one line, exit 2."""

import json
import os
import subprocess
import sys

from tests.cli.test_cli import run


def test_torchrun_qat_two_processes(tmp_path):
    out = tmp_path / "r.json"
    ck = tmp_path / "ck.pt"
    env = {**os.environ, "LOWBIT_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lowbit", "qat",
           "fmnist-mlp", "--recipe", "qat-w4a4-lsq", "--epochs", "1", "--train-size", "1024", "--calib-size", "128",
           "--comm", "int8", "--checkpoint", str(ck), "--json", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["distributed"]["world_size"] == 2 and r["distributed"]["comm"]["method"] == "int8"
    assert 3.9 < r["distributed"]["comm"]["ratio"] < 4.0  # int8 codes + one scale per tensor vs fp32 all-reduce
    assert r["quantized_accuracy"] > 80 and ck.exists()  # the zoo MLP stays near its float accuracy
    assert p.stdout.count("QAT acc") == 1  # only rank 0 prints the table


def test_distributed_flags_without_torchrun_are_one_line():
    p = run("qat", "fmnist-mlp", "--comm", "terngrad", "--epochs", "1")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "torchrun" in p.stderr
