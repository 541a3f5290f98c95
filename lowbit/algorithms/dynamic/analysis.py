"""Does the controller give more bits to harder inputs? Per-sample widths against input difficulty.

Difficulty is measured by a reference model independent of the dynamic one, usually the float model:
its confidence ``c_j = max_k softmax(f(x_j))_k`` (low = hard). With ``bits[j, l]`` the width sample
``j`` got at dynamic layer ``l`` and ``avg_j = mean_l bits[j, l]``:

* ``confidence_quintiles``: the test set split into fifths by ``c_j`` (hardest first); per fifth the
  mean ``avg_j``, the mean BitOPs relative to the overall mean, and the dynamic model's accuracy;
* ``per_class``: the same per true class;
* ``hard_layer_bits`` / ``easy_layer_bits``: mean ``bits[j, l]`` per layer over the hardest / easiest fifth;
* ``corr_bits_vs_confidence``: Pearson correlation of ``avg_j`` and ``c_j`` (negative: harder inputs
  get more bits); ``distinct_configs``: how many different width vectors the controller used.

Example:
    >>> import torch
    >>> r = {"bits": torch.tensor([[4, 4], [2, 4], [2, 2], [2, 2], [4, 2]]), "bitops": torch.tensor([32, 20, 8, 8, 20]),
    ...      "correct": torch.tensor([False, True, True, True, True]), "layers": ["a", "b"]}
    >>> a = dynamic_analysis(r, torch.tensor([0.4, 0.6, 0.99, 0.95, 0.7]), torch.tensor([0, 1, 1, 0, 1]))
    >>> [q["avg_bits"] for q in a["confidence_quintiles"]], a["hard_layer_bits"], a["easy_layer_bits"]
    ([4.0, 3.0, 3.0, 2.0, 2.0], {'a': 4.0, 'b': 4.0}, {'a': 2.0, 'b': 2.0})
    >>> a["corr_bits_vs_confidence"] < 0, a["distinct_configs"]
    (True, 4)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...errors import ConfigError


def model_confidence(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c, pred)``: the model's max softmax probability and its prediction per image (eval mode, no grad).

    >>> c, p = model_confidence(torch.nn.Flatten(), torch.zeros(3, 1, 2))
    >>> c.tolist(), p.tolist()
    ([0.5, 0.5, 0.5], [0, 0, 0])
    """
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = torch.cat([model(images[i:i + batch_size]).softmax(-1) for i in range(0, images.shape[0], batch_size)])
    finally:
        model.train(was)
    return p.max(-1).values, p.argmax(-1)


def dynamic_analysis(result: dict, confidence: torch.Tensor, labels: torch.Tensor, *, groups: int = 5,
                     classes: Sequence[str] | None = None) -> dict:
    """Widths against difficulty (module docstring) for an :func:`~lowbit.algorithms.dynamic.evaluate_dynamic`
    result and the reference model's per-sample ``confidence`` on the same samples, in the same order.

    Args:
        result: ``evaluate_dynamic``'s dict (its per-sample ``bits``, ``bitops``, ``correct``, ``layers``).
        confidence: ``[N]`` reference confidence per sample (higher = easier).
        labels: ``[N]`` true classes.
        groups: how many confidence groups (5: quintiles); the first is the hardest.
        classes: class names for ``per_class`` (default: the class indices).

    Raises:
        ConfigError: lengths that differ, fewer samples than groups.
    """
    bits, bitops, correct = result["bits"], result["bitops"].double(), result["correct"]
    n = bits.shape[0]
    if confidence.shape != (n,) or labels.shape != (n,):
        raise ConfigError(f"confidence and labels must have one entry per evaluated sample ({n}), got "
                          f"{list(confidence.shape)} and {list(labels.shape)}")
    if not isinstance(groups, int) or groups < 2 or groups > n:
        raise ConfigError(f"groups must be an integer in 2..{n} (the samples), got {groups!r}")
    avg = bits.double().mean(1)
    rel = bitops / bitops.mean()
    conf = confidence.double()
    parts = conf.argsort().tensor_split(groups)

    def stats(i: torch.Tensor) -> dict:
        return {"n": int(i.numel()), "avg_bits": float(avg[i].mean()), "bitops_rel": float(rel[i].mean()),
                "accuracy": 100.0 * float(correct[i].double().mean())}

    per_class = []
    for c in torch.unique(labels).tolist():
        s = stats(torch.nonzero(labels == c).flatten())
        per_class.append({"class": classes[c] if classes is not None else c, **s})
    names = list(result.get("layers") or [str(i) for i in range(bits.shape[1])])
    corr = float(torch.corrcoef(torch.stack([avg, conf]))[0, 1]) if avg.std() > 0 and conf.std() > 0 else 0.0
    return {
        "confidence_quintiles": [{"confidence_min": float(conf[i].min()), "confidence_max": float(conf[i].max()), **stats(i)} for i in parts],
        "per_class": per_class,
        "hard_layer_bits": dict(zip(names, bits[parts[0]].double().mean(0).tolist(), strict=True)),
        "easy_layer_bits": dict(zip(names, bits[parts[-1]].double().mean(0).tolist(), strict=True)),
        "corr_bits_vs_confidence": corr,
        "distinct_configs": int(torch.unique(bits, dim=0).shape[0]),
    }
