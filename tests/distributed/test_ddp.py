"""Two processes on localhost (gloo): distributed QAT equals one-process QAT, sharded calibration equals
calibration on the whole set, mismatched ranks and a dying rank fail cleanly, resume works with another
number of processes. The workers live in ``_jobs.py`` (spawned children import them)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.distributed import calibrate_sharded, shard_batches
from lowbit.errors import CalibrationError, ConfigError, DistributedError
from lowbit.zoo.models import FmnistMLP

sys.path.insert(0, str(Path(__file__).parent))
import _jobs  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


def _ok(results: list[dict]) -> list[dict]:
    for r in results:
        assert "error" not in r and "missing" not in r, r.get("trace", r)
    return results


@pytest.mark.parametrize(("comm", "feedback"), [("terngrad", False), ("ternary", True)])
def test_quantized_gradients_through_train(tmp_path, comm, feedback):
    two = _ok(_jobs.launch("qat", 2, tmp_path, comm=comm, epochs=2))
    assert two[0]["state"] == two[1]["state"]
    stats = two[0]["distributed"]["comm"]
    assert stats["method"] == comm and stats["error_feedback"] is feedback  # the method's default
    assert stats["ratio"] >= 10 and stats["bytes_sent"] > 0
    assert two[0]["history"][-1]["loss"] < two[0]["step_losses"][0] - 0.1  # it still learns


def test_two_process_qat_equals_one_process(tmp_path):
    two = _ok(_jobs.launch("qat", 2, tmp_path, calibrate="sharded"))  # quantize_(..., sharded=True) too
    one = _jobs.qat_job(0, 1, tmp_path)
    # the ranks hold the very same model after training
    assert two[0]["state"] == two[1]["state"]
    assert two[0]["step_losses"] == two[1]["step_losses"]
    # the first steps equal the one-process steps on the whole minibatch (float summation order aside);
    # later steps drift apart as rounding boundaries of the 4-bit grid amplify last-bit differences
    diffs = [abs(a - b) for a, b in zip(two[0]["step_losses"], one["step_losses"], strict=True)]
    assert max(diffs[:3]) < 1e-4, diffs[:6]
    assert abs(two[0]["accuracy"] - one["accuracy"]) < 3.0
    assert two[0]["distributed"]["world_size"] == 2 and two[0]["distributed"]["backend"] == "gloo"


@pytest.mark.parametrize("observer", ["minmax", "mse"])
def test_sharded_calibration_is_bit_identical(tmp_path, observer):
    two = _ok(_jobs.launch("calib", 2, tmp_path, observer=observer))
    one = _jobs.calib_job(0, 1, tmp_path, observer=observer)
    assert two[0]["samples"] == two[1]["samples"] == one["samples"] == 300
    assert two[0]["qparams"] == two[1]["qparams"] == one["qparams"]


def test_sharded_minmax_equals_plain_calibration():
    torch.manual_seed(0)
    f, x = FmnistMLP(), torch.randn(100, 1, 28, 28)
    a = lowbit.quantize_(copy.deepcopy(f), lowbit.PTQConfig(), data=[x])
    b = lowbit.quantize_(copy.deepcopy(f), lowbit.PTQConfig(), calibrate=False)
    # the two halves a 2-process run would observe, fed here as one process's data
    assert calibrate_sharded(b, shard_batches([x], 0, 2) + shard_batches([x], 1, 2), shard=False) == 100
    for p, q in zip(lowbit.activation_quantizers(a), lowbit.activation_quantizers(b), strict=True):
        assert torch.equal(p.scale, q.scale) and torch.equal(p.zero_point, q.zero_point)


def test_last_minibatch_smaller_than_the_world_is_skipped_alike(tmp_path):
    two = _ok(_jobs.launch("qat", 2, tmp_path, n=577, epochs=1))  # 577 = 9 x 64 + 1: the last batch has one sample
    assert two[0]["state"] == two[1]["state"] and len(two[0]["step_losses"]) == 9


def test_a_failing_shard_fails_every_rank(tmp_path):
    res = _jobs.launch("nan_shard", 2, tmp_path, timeout_s=30)
    assert res[1].get("error") == "CalibrationError"
    assert res[0].get("error") == "DistributedError" and "rank 1 failed" in res[0]["message"] and "NaN" in res[0]["message"]


def test_resume_on_more_processes(tmp_path):
    ck = tmp_path / "ck.pt"
    with pytest.raises(_jobs.Stop):
        _jobs.qat_job(0, 1, tmp_path, checkpoint=str(ck), stop_step=12)  # one process, stopped in epoch 2
    two = _ok(_jobs.launch("qat", 2, tmp_path, checkpoint=str(ck)))
    assert two[0]["resumed_from"] == 1 and [h["epoch"] for h in two[0]["history"]] == [1, 2]
    assert two[0]["state"] == two[1]["state"]


def test_exact_histograms_of_shards_sum_per_channel_with_a_constant_channel():
    from lowbit.observe.histogram import HistogramObserver
    from lowbit.quant import PerChannel

    x = torch.randn(64, 3, 5)
    x[:, 1] = 0.5  # a constant channel
    lo, hi = x.transpose(0, 1).reshape(3, -1).aminmax(dim=1)
    obs = []
    for part in (x, x[:20], x[20:]):
        ob = HistogramObserver(PerChannel(1), bins=64)
        ob.fix_range(lo, hi, (3,))
        ob.update(part)
        obs.append(ob)
    assert torch.equal(obs[0].hist, obs[1].hist + obs[2].hist) and obs[0].hist.sum() == x.numel()
    with pytest.raises(ConfigError, match="lo <= hi"):
        HistogramObserver().fix_range(torch.tensor([1.0]), torch.tensor([0.0]), ())


def test_shard_batches_cover_every_sample_once():
    batches = [torch.arange(7.0), torch.arange(7.0, 8.0)]
    parts = [shard_batches(batches, r, 3) for r in range(3)]
    seen = sorted(float(v) for p in parts for b in p for v in b)
    assert seen == [float(i) for i in range(8)]
    assert [sum(b.shape[0] for b in p) for p in parts] == [4, 2, 2]
    with pytest.raises(ConfigError, match="0 <= rank < world"):
        shard_batches(batches, 3, 3)


def test_sharded_calibration_errors():
    cfg = lowbit.PTQConfig.from_dict({"activation": {"bits": 8, "observer": "ema"}})
    q = lowbit.quantize_(FmnistMLP(), cfg, calibrate=False)
    with pytest.raises(ConfigError, match="ema observer depends on batch order"):
        calibrate_sharded(q, [torch.randn(4, 1, 28, 28)])
    q = lowbit.quantize_(FmnistMLP(), lowbit.PTQConfig(), calibrate=False)
    with pytest.raises(CalibrationError, match="empty"):
        calibrate_sharded(q, [])
    with pytest.raises(CalibrationError, match="NaN"):
        calibrate_sharded(q, [torch.full((2, 1, 28, 28), float("nan"))])
    assert not any(a.calibrated for a in lowbit.activation_quantizers(q))  # nothing half-done
    with pytest.raises(CalibrationError, match="no static activation quantizers"):
        calibrate_sharded(FmnistMLP(), [torch.randn(2, 1, 28, 28)])


def test_mismatched_config_fails_on_every_rank_with_one_message(tmp_path):
    res = _jobs.launch("mismatch", 2, tmp_path)
    assert [r.get("error") for r in res] == ["DistributedError", "DistributedError"]
    assert res[0]["message"] == res[1]["message"]
    assert "do not share the same training setup" in res[0]["message"] and "fingerprint.lr" in res[0]["message"]


def test_dead_rank_stops_the_others_and_the_checkpoint_resumes_on_one_process(tmp_path):
    ck = tmp_path / "ck.pt"
    # 10 steps per epoch: rank 1 dies in epoch 2 after the epoch-1 checkpoint
    res = _jobs.launch("qat", 2, tmp_path, checkpoint=str(ck), die_rank=1, die_step=12, timeout_s=30)
    assert res[1].get("missing"), "rank 1 was meant to die without a result"
    assert res[0].get("error") == "DistributedError", res[0]
    assert "collective failed" in res[0]["message"] and str(ck) in res[0]["message"] and "\n" not in res[0]["message"]
    assert ck.exists()
    # resuming with another number of processes (1 instead of 2) finishes the run from epoch 1
    one = _jobs.qat_job(0, 1, tmp_path, checkpoint=str(ck))
    assert one["resumed_from"] == 1 and [h["epoch"] for h in one["history"]] == [1, 2]


def test_distributed_flags_without_a_process_group():
    q = _jobs.prepared_mlp()
    x, y = _jobs.toy_data(64)
    with pytest.raises(ConfigError, match="not distributed"):
        lowbit.train(q, (x, y), epochs=1, comm="terngrad", progress=False)
    env = {k: v for k, v in os.environ.items() if k not in _jobs_env()}
    code = ("import lowbit, torch\nfrom lowbit.zoo.models import FmnistMLP\n"
            "lowbit.train(FmnistMLP(), (torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)), distributed=True)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "DistributedError" in r.stderr and "torchrun" in r.stderr
    with pytest.raises(ConfigError, match="comm must be one of"):
        lowbit.train(q, (x, y), epochs=1, comm="fp16", progress=False)
    with pytest.raises(ConfigError, match="distributed must be"):
        lowbit.train(q, (x, y), epochs=1, distributed="yes", progress=False)


def _jobs_env() -> tuple[str, ...]:
    return ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")


def test_init_distributed_errors(monkeypatch):
    from lowbit.distributed import init_distributed

    for k in _jobs_env():
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(DistributedError, match="torchrun"):
        init_distributed()
    with pytest.raises(ConfigError, match="backend"):
        init_distributed(backend="mpi")
    with pytest.raises(ConfigError, match="timeout_s"):
        init_distributed(timeout_s=0)
