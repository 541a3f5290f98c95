"""``lowbit.train(..., device=...)`` / ``lowbit qat --device``: the training loop on an accelerator.

On a machine with a CUDA GPU every QAT recipe trains a few steps on it and must (a) agree with the
same steps on the CPU (same data order, same init) up to float rounding, (b) come back on the CPU
and (c) convert bit-exactly there. Without a GPU those tests are skipped; the device argument's
errors and the CPU path are tested everywhere.
"""

import copy

import pytest
import torch
from test_qat import tiny_net

import lowbit
from lowbit.algorithms.qat.trainer import resolve_device
from lowbit.errors import ConfigError

CUDA = torch.cuda.is_available()
RECIPES = ["qat-w4a4-lsq", "qat-w2a2-lsq", "qat-w2a2-dsq", "qat-w4a4-pact", "qat-w2a2-dorefa", "bnn", "xnor", "bwn", "twn", "ttq",
           "pot-w4", "shiftcnn-n2b4", "kmeans-w3"]


def test_device_argument_is_validated():
    assert resolve_device(None) == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not CUDA:
        with pytest.raises(ConfigError, match="PyTorch sees no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ConfigError, match="does not exist|sees no CUDA GPU"):
        resolve_device("cuda:99")


def test_training_on_the_cpu_device_reports_it(fmnist_calib):
    calib = fmnist_calib.subset(64, seed=0)
    q = lowbit.quantize_(tiny_net(), lowbit.load_recipe("qat-w4a4-lsq"), data=calib)
    r = lowbit.train(q, calib, epochs=1, batch_size=32, lr=1e-3, progress=False, device="cpu")
    assert r["device"] == "cpu" and len(r["history"]) == 1


def test_cli_refuses_a_missing_accelerator_in_one_line(tmp_path):
    if CUDA:
        pytest.skip("this machine has a CUDA GPU")
    from typer.testing import CliRunner

    from lowbit.cli.app import app

    res = CliRunner().invoke(app, ["qat", "fmnist-mlp", "--recipe", "qat-w4a4-lsq", "--device", "cuda"])
    assert res.exit_code == 2 and "sees no CUDA GPU" in res.output and "Traceback" not in res.output


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_on_cuda_like_on_cpu_and_converts_exactly(fmnist_calib, recipe):
    calib = fmnist_calib.subset(96, seed=0)
    cfg = lowbit.load_recipe(recipe)
    torch.manual_seed(0)
    prepared = lowbit.quantize_(tiny_net(), cfg, data=calib)
    runs = {}
    for dev in ("cpu", "cuda"):
        q = copy.deepcopy(prepared)
        torch.manual_seed(1)  # stochastic rounding / Gumbel draws, if any, start alike
        r = lowbit.train(q, calib, epochs=1, batch_size=32, lr=1e-3, progress=False, device=dev)
        assert r["device"].startswith(dev)
        assert all(p.device.type == "cpu" for p in q.parameters()) and all(b.device.type == "cpu" for b in q.buffers())
        runs[dev] = (q, r["history"][0]["loss"])
    (_, loss_c), (qg, loss_g) = runs["cpu"], runs["cuda"]
    assert abs(loss_c - loss_g) <= 1e-3 * max(1.0, abs(loss_c)), (loss_c, loss_g)
    x = calib.images[:32]
    with torch.no_grad():
        y = qg.eval()(x)
    c = lowbit.quantize_(qg, cfg.replace(step="convert"))
    with torch.no_grad():
        assert torch.equal(c(x), y)
