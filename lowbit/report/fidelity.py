"""Embedding fidelity: how closely a quantized encoder's embeddings track the float ones.

For reference embeddings ``R`` and test embeddings ``T`` (both ``(N, D)``, row ``i`` = text ``i``)
with unit rows ``r_i = R_i / ||R_i||``, ``t_i = T_i / ||T_i||``:

* ``cosine_mean`` / ``cosine_min``: mean / min over ``i`` of ``cos(R_i, T_i) = r_i . t_i``.
* ``top1_agreement``: fraction of ``i`` with ``argmax_{j != i} r_i . r_j == argmax_{j != i} t_i . t_j``
  (the nearest other text is the same under both encoders).
* ``top5_overlap``: mean over ``i`` of ``|kNN_R(i) ∩ kNN_T(i)| / k``, ``kNN(i)`` the ``k`` other
  rows of highest cosine (the key keeps its name for any ``k``; ``k`` is reported too).
* ``spearman``: Spearman rank correlation between ``{r_i . r_j}`` and ``{t_i . t_j}`` over all
  ``N (N - 1) / 2`` pairs ``i < j`` — do the two encoders order the pairs' similarities alike?
  ``nan`` when undefined (fewer than two pairs, or all similarities of one side equal).

Example:
    >>> import torch
    >>> ref = torch.nn.functional.normalize(torch.randn(50, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    >>> m = embedding_fidelity(ref, ref.clone())
    >>> round(m["cosine_min"], 9), m["top1_agreement"], m["top5_overlap"], m["spearman"], m["n"]
    (1.0, 1.0, 1.0, 1.0, 50)
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, DataError


def _unit_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    norms = x.norm(dim=1, keepdim=True)
    zero = (norms == 0).nonzero()
    if len(zero):
        raise DataError(f"{name} row {int(zero[0, 0])} is all zeros, so its cosine similarity is undefined")
    return x / norms


def embedding_fidelity(ref: torch.Tensor, test: torch.Tensor, k: int = 5) -> dict:
    """Compare test embeddings (e.g. of a quantized encoder) against reference (float) embeddings.

    Args:
        ref: ``(N, D)`` reference embeddings, row ``i`` for text ``i``.
        test: ``(N, D)`` embeddings of the same texts from the model under test.
        k: neighbours per row for ``top5_overlap`` (needs ``N >= k + 1``).

    Returns:
        ``{"cosine_mean", "cosine_min", "top1_agreement", "top5_overlap", "spearman", "n", "k"}``
        (floats, ``n`` and ``k`` ints); the math is in the module docstring. Computed in float64.

    Raises:
        ConfigError: ``k`` is not a positive int, or ``N < k + 1``.
        DataError: the inputs are not 2-D tensors of the same shape, hold NaN / inf, or have an
            all-zero row.

    Example:
        >>> import torch
        >>> ref = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> test = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.2]])  # row 3 moved to the other cluster
        >>> m = embedding_fidelity(ref, test, k=2)
        >>> round(m["cosine_mean"], 4), m["top1_agreement"], m["top5_overlap"]   # cos_3 = 0.26 / (0.9055 * 0.8246)
        (0.837, 0.75, 0.875)
    """
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise ConfigError(f"k must be a positive int, got {k!r}")
    for name, x in (("ref", ref), ("test", test)):
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"
            raise DataError(f"{name} must be a 2-D (N, D) tensor of embeddings, got {got}")
    if ref.shape != test.shape:
        raise DataError(f"ref and test must have the same shape (one row per text, same width), got {tuple(ref.shape)} and {tuple(test.shape)}")
    n = ref.shape[0]
    if n < k + 1:
        raise ConfigError(f"k={k} nearest neighbours need at least k + 1 = {k + 1} rows, got N={n}; embed more texts or lower k")
    r = ref.detach().to("cpu", torch.float64)
    t = test.detach().to("cpu", torch.float64)
    for name, x in (("ref", r), ("test", t)):
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).any(dim=1).nonzero()[0, 0])
            raise DataError(f"{name} holds NaN or inf (first in row {bad}); check the model's outputs (overflow in a low-bit layer?)")
    r, t = _unit_rows(r, "ref"), _unit_rows(t, "test")
    cos = (r * t).sum(dim=1).clamp(-1.0, 1.0)  # rounding can overshoot |cos| = 1 by an ulp

    sim_r, sim_t = r @ r.T, t @ t.T
    eye = torch.eye(n, dtype=torch.bool)
    knn_r = sim_r.masked_fill(eye, -math.inf).topk(k, dim=1).indices
    knn_t = sim_t.masked_fill(eye, -math.inf).topk(k, dim=1).indices
    top1 = (knn_r[:, 0] == knn_t[:, 0]).double().mean()
    overlap = (knn_r.unsqueeze(2) == knn_t.unsqueeze(1)).any(dim=2).sum(dim=1).double() / k

    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "top1_agreement": float(top1),
        "top5_overlap": float(overlap.mean()),
        "spearman": _pairwise_spearman(sim_r, sim_t),
        "n": int(n),
        "k": int(k),
    }


def _pairwise_spearman(sim_r: torch.Tensor, sim_t: torch.Tensor) -> float:
    import warnings

    from scipy.stats import spearmanr

    i, j = torch.triu_indices(sim_r.shape[0], sim_r.shape[0], offset=1)
    a, b = sim_r[i, j].numpy(), sim_t[i, j].numpy()
    if a.size < 2 or a.min() == a.max() or b.min() == b.max():
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input is handled above; nothing else to say
        return float(spearmanr(a, b).statistic)
