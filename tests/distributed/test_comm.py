"""Gradient compression for DDP: the codes' statistics, bit packing, error feedback, byte model, and a
real two-process gloo run of the communication hook."""

import datetime
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lowbit.distributed.comm import (
    METHODS,
    GradCompression,
    decode,
    encode,
    encode_with_feedback,
    pack_codes,
    payload_bytes,
    register,
    sign,
    ternary,
    terngrad,
    uniform,
    unpack_codes,
)
from lowbit.errors import ConfigError
from lowbit.export.bitpack import pack_bits

COMPRESSED = ("terngrad", "int8", "int4", "sign", "ternary")


def _grad(n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 1e-2
    if n > 3:
        g[3] = 0.0  # an exact zero: dropped by terngrad, '+' for sign
    return g


# --------------------------------------------------------------------------- the codes


def test_terngrad_is_unbiased():
    # K draws at once: the rows of g.expand(K, n) share s = max|g| and get independent uniforms
    g, k = _grad(), 20_000
    codes, s = terngrad(g.expand(k, -1), torch.Generator().manual_seed(1))
    mean = (s * codes.float()).mean(0)
    sigma = torch.sqrt(s * g.abs() - g**2)  # Var(s t) = s |g| - g^2
    assert (mean - g).abs().max() <= (5 * sigma / math.sqrt(k)).max()
    assert s.item() == g.abs().max().item()


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_uniform_is_unbiased(bits):
    g, k = _grad(), 20_000
    codes, s = uniform(g.expand(k, -1), bits, torch.Generator().manual_seed(2))
    mean = (s * codes.float()).mean(0)
    frac = g / s - torch.floor(g / s)
    sigma = s * torch.sqrt(frac * (1 - frac))  # Var(s floor(v + u)) = s^2 f (1 - f)
    assert (mean - g).abs().max() <= (5 * sigma / math.sqrt(k)).max() + 1e-7
    qmax = 2 ** (bits - 1) - 1
    assert s.item() == pytest.approx(g.abs().max().item() / qmax, rel=1e-6)
    assert codes.abs().max().item() == qmax  # the largest entry sits on the last level


def test_ternary_is_twn_thresholding():
    g = torch.tensor([1.0, -3.0, 0.1, 0.0, 0.8])  # mean|g| = 0.98, Delta = 0.686: keep 1.0, -3.0, 0.8
    codes, s = ternary(g)
    assert codes.tolist() == [1, -1, 0, 0, 1] and s.item() == pytest.approx(4.8 / 3)
    codes, s = ternary(torch.zeros(4))
    assert codes.abs().sum().item() == 0 and s.item() == 0.0
    # least squares in the kept support: no other scale fits the kept entries better
    err = lambda a: float(((g - a * codes_ref) ** 2).sum())  # noqa: E731
    codes_ref = ternary(g)[0].float()
    best = ternary(g)[1].item()
    assert err(best) <= min(err(best * 0.9), err(best * 1.1))


def test_terngrad_clip_lowers_the_scale_of_an_outlier():
    g = torch.cat([torch.full((99,), 0.01), torch.tensor([10.0])])
    gen = torch.Generator().manual_seed(0)
    _, s_plain = terngrad(g, gen)
    codes, s_clip = terngrad(g, gen, clip=2.5)
    assert s_plain.item() == 10.0 and s_clip.item() < 2.6  # 2.5 sigma of g (sigma ~ 1.0)
    assert codes[:99].abs().sum() == 0 or s_clip.item() < s_plain.item()
    with pytest.raises(ConfigError, match="clip must be a positive"):
        terngrad(g, gen, clip=0)


def test_terngrad_codes_keep_the_max_and_drop_zeros():
    g = torch.tensor([0.0, -4.0, 1.0, -1.0, 4.0, 0.0])
    codes, s = terngrad(g, torch.Generator().manual_seed(0))
    assert s.item() == 4.0 and codes.dtype == torch.int8
    assert codes[[0, 5]].tolist() == [0, 0] and codes[[1, 4]].tolist() == [-1, 1]
    assert set(codes.tolist()) <= {-1, 0, 1}
    assert (codes[[2, 3]] * torch.tensor([1, -1], dtype=torch.int8)).min().item() >= 0  # never the wrong sign


def test_all_zero_bucket_has_zero_scale():
    z = torch.zeros(7)
    assert [terngrad(z)[1].item(), uniform(z, 8)[1].item(), sign(z)[1].item()] == [0.0, 0.0, 0.0]
    assert terngrad(z)[0].abs().sum().item() == 0 and uniform(z, 4)[0].abs().sum().item() == 0
    for method in METHODS:
        assert decode(method, encode(method, z), 7).tolist() == [0.0] * 7


def test_sign_scale_is_mean_abs_and_zero_is_positive():
    bits, s = sign(torch.tensor([0.5, -1.5, 0.0, 2.0, -0.0]))
    assert bits.tolist() == [True, False, True, True, True]
    assert s.item() == pytest.approx(4.0 / 5)


def test_decode_is_exact_on_the_grid():
    g = torch.tensor([3.5, -1.5, 0.0, 0.5, -3.5])  # s = 0.5 for int4, every value a multiple of it
    assert decode("int4", encode("int4", g, torch.Generator().manual_seed(0)), 5).tolist() == g.tolist()
    x = torch.randn(33)
    assert torch.equal(decode("fp32", encode("fp32", x), 33), x)


# --------------------------------------------------------------------------- packing


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_codes_matches_the_checkpoint_bitpack_layout(bits):
    lo, hi = (0, 1) if bits == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    q = torch.randint(lo, hi + 1, (37,), generator=torch.Generator().manual_seed(bits), dtype=torch.int8)
    reference = pack_bits(torch.remainder(q.to(torch.int64), 2**bits), bits, qmin=0)  # two's complement low bits
    assert torch.equal(pack_codes(q, bits), reference)


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_pack_unpack_is_identity(bits, data):
    lo, hi = (0, 1) if bits == 1 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    values = data.draw(st.lists(st.integers(lo, hi), max_size=67))
    q = torch.tensor(values, dtype=torch.int8)
    packed = pack_codes(q, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(len(values) * bits / 8)
    assert unpack_codes(packed, bits, len(values)).tolist() == values


def test_pack_ternary_is_four_codes_per_byte():
    packed = pack_codes(torch.tensor([1, 0, -1, -1, 1], dtype=torch.int8), 2)
    assert packed.tolist() == [0b11110001, 0b00000001]
    assert pack_codes(torch.tensor([True] * 9), 1).tolist() == [255, 1]


@pytest.mark.parametrize(("method", "n", "size"), [("terngrad", 1000, 254), ("terngrad", 1001, 255), ("int8", 7, 11),
                                                   ("int4", 7, 8), ("sign", 9, 6), ("sign", 1, 5), ("fp32", 5, 20)])
def test_payload_size(method, n, size):
    assert payload_bytes(method, n) == size
    payload = encode(method, _grad(n), torch.Generator().manual_seed(0))
    assert payload.dtype == torch.uint8 and payload.numel() == size
    assert decode(method, payload, n).shape == (n,)


# --------------------------------------------------------------------------- error feedback


@pytest.mark.parametrize("method", METHODS)
def test_error_feedback_invariant(method):
    gen, e = torch.Generator().manual_seed(3), torch.zeros(50)
    for step in range(5):
        g = _grad(50, seed=step)
        payload, e_new = encode_with_feedback(method, g, e, gen)
        torch.testing.assert_close(g + e, decode(method, payload, 50) + e_new, rtol=0, atol=1e-7)
        e = e_new
    if method == "fp32":
        assert e.abs().max().item() == 0.0


def test_error_feedback_removes_the_sign_bias():
    # a constant gradient: plain sign sends mean|g| * sign(g) for ever; with error feedback the average of
    # what was sent converges to g (the residual is bounded, the average error is e_T / T)
    g = torch.tensor([1.0, 0.1, -0.05, -0.5, 0.0, 0.2])
    plain = decode("sign", encode("sign", g), 6)
    e, sent = torch.zeros(6), torch.zeros(6)
    for _ in range(400):
        payload, e = encode_with_feedback("sign", g, e)
        sent += decode("sign", payload, 6)
    assert (plain - g).abs().max().item() > 0.4
    assert (sent / 400 - g).abs().max().item() < 0.02


def test_error_feedback_drops_non_finite_residuals():
    g = torch.tensor([1.0, float("inf"), -2.0])
    payload, e = encode_with_feedback("terngrad", g, torch.zeros(3), torch.Generator().manual_seed(0))
    assert not torch.isfinite(decode("terngrad", payload, 3)).all()  # the overflow reaches the averaged grad
    assert e.tolist() == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- state, byte model, errors


@pytest.mark.parametrize(("method", "default"), [("fp32", False), ("terngrad", False), ("int8", False), ("int4", False), ("sign", True), ("ternary", True)])
def test_error_feedback_default(method, default):
    assert GradCompression(method).error_feedback is default
    assert GradCompression(method, error_feedback=False).error_feedback is False


@pytest.mark.parametrize(("method", "world", "sent", "fp32"), [("terngrad", 2, 254, 4000), ("terngrad", 4, 3 * 254, 6000),
                                                               ("sign", 2, 129, 4000), ("int8", 8, 7 * 1004, 7000), ("fp32", 4, 6000, 6000)])
def test_byte_model(method, world, sent, fp32):
    state = GradCompression(method)
    state.account(1000, 4, world)
    stats = state.stats()
    assert (stats["bytes_sent"], stats["fp32_bytes"], stats["buckets"]) == (sent, fp32, 1)
    assert stats["ratio"] == pytest.approx(fp32 / sent)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: GradCompression("int2"), r"method='int2' is unknown; use one of \['fp32', 'terngrad'"),
        (lambda: GradCompression("fp32", error_feedback=True), "needs a compressed method"),
        (lambda: GradCompression("sign", error_feedback="yes"), "error_feedback must be True, False or None"),
        (lambda: GradCompression("sign", seed=-1), "seed=-1 is invalid"),
        (lambda: encode("topk", torch.zeros(3)), "method='topk' is unknown"),
        (lambda: encode("int8", torch.zeros(3, dtype=torch.int32)), "floating-point"),
        (lambda: encode("int8", torch.zeros(3), generator=0), "torch.Generator"),
        (lambda: uniform(torch.zeros(3), 9), "bits=9 is invalid; use an int in 2..8"),
        (lambda: uniform(torch.zeros(3), 1), "bits=1 is invalid"),
        (lambda: pack_codes(torch.tensor([2], dtype=torch.int8), 2), r"outside the 2-bit range -2\.\.1"),
        (lambda: pack_codes(torch.tensor([0.5]), 4), "integer or bool tensor"),
        (lambda: unpack_codes(torch.zeros(3, dtype=torch.uint8), 2, 5), "need a 1-d uint8 tensor of 2 bytes"),
        (lambda: decode("sign", torch.zeros(4, dtype=torch.uint8), 9), "sign payload of 9 values is a 1-d uint8 tensor of 6 bytes"),
        (lambda: encode_with_feedback("sign", torch.zeros(3), torch.zeros(4)), "residual has shape"),
        (lambda: register(nn.Linear(2, 2)), "DistributedDataParallel"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


# --------------------------------------------------------------------------- two processes, gloo

_WORLD, _STEPS, _N = 2, 3, 16 * 32 + 32 + 32 * 4 + 4  # MLP 16 -> 32 -> 4: 676 parameters, one DDP bucket


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(8, 16, generator=gen), torch.randn(8, 4, generator=gen)


def _worker_ddp(rank: int, port: int, out_dir: str) -> None:
    """One rank: for every method a fresh DDP model with the hook, 3 SGD steps, results to out_dir."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=_WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results = {}
        for method in METHODS:
            model = _mlp()
            ddp = DistributedDataParallel(model)
            state = register(ddp, method, seed=0)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for step in range(_STEPS):
                x, y = _batch(rank, step)
                opt.zero_grad()
                F.mse_loss(ddp(x), y).backward()
                if step == 0:
                    grads = [p.grad.clone() for p in model.parameters()]
                opt.step()
            results[method] = {"grads": grads, "params": [p.detach().clone() for p in model.parameters()], "stats": state.stats()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_ddp, args=(rank, port, str(out))) for rank in range(_WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join()
    assert [p.exitcode for p in procs] == [0] * _WORLD
    return [torch.load(out / f"rank{rank}.pt") for rank in range(_WORLD)]


def _local_grads(rank: int) -> list[torch.Tensor]:
    model = _mlp()
    x, y = _batch(rank, 0)
    F.mse_loss(model(x), y).backward()
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("method", METHODS)
def test_ddp_ranks_end_identical(ddp_runs, method):
    r0, r1 = ddp_runs[0][method], ddp_runs[1][method]
    for a, b in zip(r0["grads"] + r0["params"], r1["grads"] + r1["params"], strict=True):
        assert torch.equal(a, b)
    assert r0["stats"]["steps"] == _STEPS and r0["stats"]["buckets"] == _STEPS  # one bucket per step


def test_ddp_fp32_is_the_full_batch_gradient(ddp_runs):
    model = _mlp()
    batches = [_batch(rank, 0) for rank in range(_WORLD)]
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    F.mse_loss(model(x), y).backward()
    for got, want in zip(ddp_runs[0]["fp32"]["grads"], [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_ddp_sign_is_the_average_of_scaled_signs(ddp_runs):
    # step 0 has no residual yet: each rank sends mean|g_r| * sign(g_r), one scale per parameter tensor
    expected = []
    for rank in range(_WORLD):
        expected.append(torch.cat([(g.abs().mean() * torch.where(g >= 0, 1.0, -1.0)).reshape(-1) for g in _local_grads(rank)]))
    got = torch.cat([t.reshape(-1) for t in ddp_runs[0]["sign"]["grads"]])
    torch.testing.assert_close(got, sum(expected) / _WORLD, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("method", "qmax"), [("int8", 127), ("int4", 7)])
def test_ddp_uniform_error_is_within_one_step(ddp_runs, method, qmax):
    grads = [_local_grads(rank) for rank in range(_WORLD)]
    for i, got in enumerate(ddp_runs[0][method]["grads"]):  # one scale per parameter tensor
        local = [g[i] for g in grads]
        step = sum(g.abs().max() / qmax for g in local) / _WORLD  # each rank's code is within s_r of g_r
        assert (got - sum(local) / _WORLD).abs().max() <= step * (1 + 1e-5)


@pytest.mark.parametrize(("method", "floor"), [("terngrad", 10), ("ternary", 10), ("sign", 20), ("int4", 7), ("int8", 3.9),
                                               ("fp32", 1)])
def test_ddp_bytes(ddp_runs, method, floor):
    stats = ddp_runs[1][method]["stats"]
    fp32 = _STEPS * 2 * (_WORLD - 1) / _WORLD * 4 * _N
    per_tensor = sum(payload_bytes(method, p.numel()) for p in _mlp().parameters())  # one scale per parameter tensor
    sent = fp32 if method == "fp32" else _STEPS * (_WORLD - 1) * per_tensor
    assert (stats["bytes_sent"], stats["fp32_bytes"]) == (sent, fp32)
    assert stats["ratio"] >= floor


def test_rank_generators_differ_and_are_reproducible():
    seeds = [int(np.random.SeedSequence([0, r]).generate_state(1, np.uint64)[0]) for r in range(2)]
    assert seeds[0] != seeds[1]
    gen = GradCompression("terngrad", seed=0).generator(torch.device("cpu"))  # no process group: rank 0
    assert torch.equal(torch.rand(4, generator=gen), torch.rand(4, generator=torch.Generator().manual_seed(seeds[0])))
