"""Knowledge distillation (Hinton et al. 2015): the float model teaches the quantized one (F14).

``distillation_loss`` mixes the teacher's softened distribution with the hard labels::

    L = a * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - a) * CE(s, y)

``T^2`` keeps the soft term's gradient magnitude independent of ``T`` (the softened gradients
scale as ``1 / T^2``). With ``a = 1`` no labels are needed. :func:`lowbit.train` uses it when a
``teacher`` is given (``QATConfig.distill``).

Example:
    >>> import torch
    >>> s, t, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    >>> round(float(distillation_loss(s, t, y, temperature=4.0, weight=1.0)), 6)  # same logits: KL = 0
    0.0
    >>> float(distillation_loss(s, t, y, weight=0.0)) == float(torch.nn.functional.cross_entropy(s, y))
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import ConfigError


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None = None, *,
                      temperature: float = 4.0, weight: float = 0.9) -> torch.Tensor:
    """``weight * T^2 * KL(p_T(teacher) || p_T(student)) + (1 - weight) * CE(student, labels)`` (batch mean)."""
    if student.shape != teacher.shape:
        raise ConfigError(f"student and teacher logits differ in shape: {tuple(student.shape)} vs {tuple(teacher.shape)}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive, got {temperature!r}")
    if not 0 <= weight <= 1:
        raise ConfigError(f"weight must lie in [0, 1], got {weight!r}")
    loss = student.new_zeros(())
    if weight > 0:
        t = temperature
        kl = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher.detach() / t, -1), reduction="batchmean", log_target=True)
        loss = loss + weight * t * t * kl
    if weight < 1:
        if labels is None:
            raise ConfigError("this loss mixes in the hard labels (weight < 1) but the batch has none; give (x, y) batches "
                              "or set distill_weight: 1.0 to learn from the teacher alone")
        loss = loss + (1 - weight) * F.cross_entropy(student, labels)
    return loss


def task_loss(out: torch.Tensor, x: torch.Tensor, labels: torch.Tensor | None, teacher: torch.nn.Module | None = None, *,
              temperature: float = 4.0, weight: float = 0.9) -> torch.Tensor:
    """The training loss of one minibatch: cross-entropy on the labels, or, with a ``teacher``,
    :func:`distillation_loss` against ``teacher(x)`` (evaluated without gradient).

    Example:
        >>> import torch
        >>> out, y = torch.zeros(2, 4), torch.tensor([0, 1])
        >>> round(float(task_loss(out, torch.zeros(2, 3), y)), 4)            # log 4
        1.3863

    Raises:
        ConfigError: no labels and no teacher (nothing to learn from), or labels missing where the
            distillation mixes them in (``weight < 1``).
    """
    if teacher is not None:
        with torch.no_grad():
            t_out = teacher(x)
        return distillation_loss(out, t_out, labels, temperature=temperature, weight=weight)
    if labels is None:
        raise ConfigError("training without a teacher needs labels: give (inputs, labels) batches, "
                          "or a teacher (distillation) with distill_weight 1.0")
    return F.cross_entropy(out, labels)
