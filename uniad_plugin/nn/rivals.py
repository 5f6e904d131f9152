"""The contrast of a row's predicted-class hypersphere with its rival classes' spheres.

An input pushed across a decision boundary (an adversarial example) is scored by the spheres
of the class it is pushed *to*; in the layers before the decision it often still sits closer
to another class's sphere than to that one. The contrast of layer :math:`l` is

.. math::

    c_l(x) = \\log \\frac{d^2_{l\\hat{k}}(x) / R^2_{l\\hat{k}}}
                        {\\min_{j \\in \\mathrm{rivals}(x)} d^2_{lj}(x) / R^2_{lj}}

with :math:`\\hat{k}` the predicted class and the rivals the classes ranked next by the
classifier's logits (or every other class, when as many rivals are asked for). It uses the
same per-class hyperspheres fitted on ID data; nothing new is fitted.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "as_ranked",
    "compact_ranking",
    "kept_ranking",
    "log_contrast",
    "ranked_classes",
]


def ranked_classes(logits: Tensor, rivals: int) -> Tensor:
    """``(B, 1 + m)``: the predicted class (the argmax) and the ``m = min(rivals, K - 1)``
    classes ranked next by logit."""
    k = logits.argmax(1, keepdim=True)
    m = min(int(rivals), logits.shape[1] - 1)
    if m <= 0:
        return k
    masked = logits.detach().float().scatter(1, k, float("-inf"))
    return torch.cat([k, masked.topk(m, dim=1).indices], dim=1)


def compact_ranking(logits: Tensor, rivals: int) -> Tensor:
    """What a fit keeps of the logits ``(B, K)`` to choose spheres and rivals later: the
    ranked classes ``(B, 1 + m)`` when the ranking matters (``0 < m < K - 1``), else the
    predicted classes ``(B,)`` (no rival, or every other class a rival).

    Ranked classes are therefore always narrower than ``K`` columns, so :func:`as_ranked`
    tells them from logits by their width.
    """
    K = logits.shape[1]
    m = min(int(rivals), K - 1)
    if 0 < m < K - 1:
        return ranked_classes(logits, m)
    return logits.argmax(1)


def kept_ranking(classes: Tensor, num_classes: int, rivals: int) -> Tensor:
    """What a fit keeps of the logits, ranked or predicted classes given for its rows
    (:func:`compact_ranking` of logits), checked before the training to give the ranking
    that scoring with ``rivals`` needs.

    :raises ValueError: for ranked classes collected with fewer rivals, or predicted classes
        where a ranking is needed (see :func:`as_ranked`)
    """
    m = min(int(rivals), num_classes - 1)
    if classes.dim() == 2 and classes.shape[1] == num_classes:
        return compact_ranking(classes, m)
    if classes.dim() == 2 and classes.shape[1] < 1 + m:
        raise ValueError(
            f"expected ranked classes with {m} rivals, got {classes.shape[1] - 1}: they were "
            "collected with fewer rivals; collect them again with this detector's "
            "collect_fit_inputs, or pass the logits"
        )
    as_ranked(classes[:1], num_classes, m)  # a ranking that cannot be had fails here
    return classes.long()


def as_ranked(classes: Tensor, num_classes: int, rivals: int) -> Tensor:
    """Ranked classes ``(B, 1 + m)``, ``m = min(rivals, K - 1)``, from:

    - logits ``(B, K)`` (any dtype: a 2-D tensor of ``K`` columns is always read as logits);
    - ranked classes ``(B, c)`` with ``1 + m <= c < K`` (integers, the predicted class first,
      as :func:`compact_ranking` keeps them; the first ``1 + m`` columns are used);
    - predicted classes ``(B,)``, when no ranking is needed: ``m = 0``, or ``m = K - 1``
      (every other class is a rival).

    :raises ValueError: for a ranking that cannot be had from the input (predicted classes or
        too few ranked columns while ``0 < m < K - 1``), naming what to pass instead
    """
    m = min(int(rivals), num_classes - 1)
    if classes.dim() == 2 and classes.shape[1] == num_classes:
        return ranked_classes(classes, m)
    if classes.dim() == 2 and classes.is_floating_point():
        raise ValueError(
            f"expected logits of {num_classes} classes, got {classes.shape[1]} columns"
        )
    if classes.dim() not in (1, 2) or (classes.dim() == 2 and classes.shape[1] == 0):
        raise ValueError(
            f"expected logits (B, {num_classes}), ranked classes (B, c) or predicted classes "
            f"(B,), got shape {tuple(classes.shape)}"
        )
    classes = classes.long()
    if classes.dim() == 1:
        classes = classes[:, None]
    if m <= 0 or classes.shape[1] >= 1 + m:
        return classes[:, : 1 + max(m, 0)]
    if m < num_classes - 1:
        raise ValueError(
            f"expected logits (B, {num_classes}) to rank {m} rival classes of each input, got "
            f"{classes.shape[1] - 1} ranked rival(s): pass the logits (predicted classes alone "
            f"suffice only for a detector fitted with rivals=0 or rivals >= {num_classes - 1})"
        )
    k = classes[:, :1]
    every = torch.arange(num_classes, device=classes.device).expand(len(classes), -1)
    others = every[every != k.clamp(0, num_classes - 1)].view(len(classes), num_classes - 1)
    return torch.cat([k, others], dim=1)


def log_contrast(ratios: Tensor) -> Tensor:
    """The contrast ``(B,)`` of ratio scores ``(B, 1 + m)`` (the predicted class's first,
    then its ``m >= 1`` rivals'): :math:`\\log s_{\\hat{k}} - \\log \\min_j s_j`."""
    if ratios.shape[1] < 2:
        raise ValueError(
            f"expected the predicted class and at least one rival, got {ratios.shape[1]} column"
        )
    logs = ratios.clamp_min(1e-12).log()
    return logs[:, 0] - logs[:, 1:].min(dim=1).values
