"""Packed .lowbit checkpoints: pack/unpack identity, bit-exact reload, theoretical size, refusal of bad files."""

import base64
import json
import struct
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.errors import CalibrationError, ConfigError, UnsupportedError
from lowbit.export import CheckpointError, load, pack_bits, save, unpack_bits
from lowbit.export import checkpoint as ckpt
from lowbit.zoo.models import FmnistMLP


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(1, 8), signed=st.booleans(), n=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_pack_unpack_is_identity_and_exact_size(bits, signed, n, seed):
    fmt = lowbit.IntFormat(bits=bits, signed=signed)
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(fmt.qmin, fmt.qmax + 1, (n,), generator=g)
    packed = pack_bits(q, bits, fmt.qmin)
    assert packed.dtype == torch.uint8 and packed.numel() == (n * bits + 7) // 8
    assert torch.equal(unpack_bits(packed, bits, fmt.qmin, n), q.to(torch.int32))


def test_pack_rejects_out_of_grid_codes():
    with pytest.raises(ConfigError, match="outside"):
        pack_bits(torch.tensor([0, 4]), 2, 0)
    with pytest.raises(ConfigError, match="1..8"):
        pack_bits(torch.tensor([0]), 9, 0)


def _quantized(recipe="w4a8", seed=0):
    torch.manual_seed(seed)
    return lowbit.quantize_(FmnistMLP(), lowbit.load_recipe(recipe), data=[torch.randn(16, 1, 28, 28)])


@pytest.mark.parametrize("recipe", ["w8a8", "w4a8", "w2a8", "w4-weight-only", "w8a8-dynamic"])
def test_reload_is_bit_exact(tmp_path, recipe):
    m = _quantized(recipe)
    path = tmp_path / "m.lowbit"
    save(m, path)
    m2 = load(path, model=FmnistMLP())
    x = torch.randn(32, 1, 28, 28)
    assert torch.equal(m(x), m2(x))


def test_zoo_model_rebuilds_from_manifest_and_size_matches_theory(tmp_path, fmnist_calib):
    from lowbit.zoo import load_model

    fp = load_model("fmnist-resnet")
    q = lowbit.quantize_(fp, lowbit.load_recipe("w4a8"), data=fmnist_calib)
    info = save(q, tmp_path / "r.lowbit", model_spec="fmnist-resnet")
    q2 = lowbit.load(tmp_path / "r.lowbit")
    x = fmnist_calib.images[:64]
    assert torch.equal(q(x), q2(x))
    size = (tmp_path / "r.lowbit").stat().st_size
    assert size == info["payload_bytes"]
    assert size < info["weight_bits_total"] / 8 * 1.15  # packed codes + scales, biases, manifest


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "m.lowbit"
    save(_quantized(), path)
    raw = path.read_bytes()
    for cut in (4, 100, len(raw) - 10):
        bad = tmp_path / f"cut{cut}.lowbit"
        bad.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match="truncated|corrupt"):
            load(bad, model=FmnistMLP())


def test_tampered_payload_is_refused(tmp_path):
    path = tmp_path / "m.lowbit"
    save(_quantized(), path)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF  # flip bits in the last tensor's bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load(path, model=FmnistMLP())


def _rewrite_meta(path, **changes):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"].update(changes)
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n :])


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "m.lowbit"
    save(_quantized(), path)
    _rewrite_meta(path, lowbit_format=str(ckpt.FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="upgrade lowbit"):
        load(path, model=FmnistMLP())


def test_tampered_manifest_is_refused(tmp_path):
    path = tmp_path / "m.lowbit"
    save(_quantized(), path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    packed = json.loads(raw[8 : 8 + n])["__metadata__"]["lowbit_manifest_z"]
    manifest = json.loads(zlib.decompress(base64.b64decode(packed)))
    manifest["model"] = "fmnist-resnet"
    _rewrite_meta(path, lowbit_manifest_z=base64.b64encode(zlib.compress(json.dumps(manifest).encode())).decode())
    with pytest.raises(CheckpointError, match="SHA-256"):
        load(path)
    _rewrite_meta(path, lowbit_manifest_z="not base64!")
    with pytest.raises(CheckpointError, match="manifest is damaged"):
        load(path)


def test_plain_safetensors_is_not_a_lowbit_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a lowbit packed checkpoint"):
        load(path, model=FmnistMLP())


def test_saving_needs_a_calibrated_quantized_model(tmp_path):
    with pytest.raises(UnsupportedError, match="quantize_"):
        save(FmnistMLP(), tmp_path / "a.lowbit")
    m = lowbit.quantize_(FmnistMLP(), lowbit.PTQConfig(), calibrate=False)
    with pytest.raises(CalibrationError, match="not calibrated"):
        save(m, tmp_path / "b.lowbit")
    assert not (tmp_path / "b.lowbit").exists()


def test_load_without_model_spec_asks_for_a_model(tmp_path):
    path = tmp_path / "m.lowbit"
    save(_quantized(), path)
    with pytest.raises(ConfigError, match="pass model="):
        load(path)
