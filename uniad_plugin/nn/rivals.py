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

from collections.abc import Sequence

import torch
from torch import Tensor

from uniad_plugin.nn.svdd import BatchedSVDD, layer_scores

__all__ = [
    "as_ranked",
    "compact_ranking",
    "kept_ranking",
    "ranked_classes",
    "rival_contrast",
    "rival_scores",
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


def rival_scores(
    spheres: Sequence[BatchedSVDD], zs: Sequence[Tensor], ranked: Tensor
) -> tuple[Tensor, Tensor]:
    """The ratio scores :math:`d^2/R^2` under the predicted class's spheres ``(B, L)`` and the
    contrasts with the rivals ``(B, L)``, from one grouped pass over all ``B (1 + m)``
    (row, class) pairs per layer (:func:`~uniad_plugin.nn.svdd.layer_scores` with ``rows``:
    the activations are not copied per rival; the padded layout holds fewer than twice the
    pairs, whatever the classes). Differentiable with respect to ``zs``.

    :param spheres: the fitted spheres of the ``L`` layers
    :param zs: the ``(B, D_l)`` activations of those layers
    :param ranked: ``(B, 1 + m)`` classes, the predicted class first (see :func:`as_ranked`),
        ``m >= 1``
    """
    n, c = ranked.shape
    if c < 2:
        raise ValueError(f"expected the predicted class and at least one rival, got {c} column")
    if n == 0:
        return zs[0].new_zeros(0, len(spheres)), zs[0].new_zeros(0, len(spheres))
    rows = torch.arange(n, device=ranked.device).repeat_interleave(c)
    ratio = layer_scores(spheres, zs, ranked.reshape(-1), "ratio", rows=rows)
    ratio = ratio.view(n, c, len(spheres))
    log_ratio = ratio.clamp_min(1e-12).log()
    return ratio[:, 0], log_ratio[:, 0] - log_ratio[:, 1:].min(dim=1).values


def rival_contrast(
    spheres: Sequence[BatchedSVDD],
    zs: Sequence[Tensor],
    ranked: Tensor,
    own: Tensor | None = None,
) -> Tensor:
    """Contrast ``(B, L)`` of every row's predicted-class sphere with its rivals' spheres.

    :param spheres: the fitted spheres of the ``L`` layers
    :param zs: the ``(B, D_l)`` activations of those layers
    :param ranked: ``(B, 1 + m)`` classes, the predicted class first (see :func:`as_ranked`),
        ``m >= 1``
    :param own: ``(B, L)`` ratio scores :math:`d^2/R^2` under the predicted class's spheres,
        if already computed (only the rivals are scored then); without them, see
        :func:`rival_scores`, which returns them too
    """
    if own is None:
        return rival_scores(spheres, zs, ranked)[1]
    n, c = ranked.shape
    if c < 2:
        raise ValueError(f"expected the predicted class and at least one rival, got {c} column")
    if n == 0:
        return zs[0].new_zeros(0, len(spheres))
    reps = c - 1
    rows = torch.arange(n, device=ranked.device).repeat_interleave(reps)
    ratio = layer_scores(spheres, zs, ranked[:, 1:].reshape(-1), "ratio", rows=rows)
    rivals_log = ratio.view(n, reps, len(spheres)).clamp_min(1e-12).log()
    return own.clamp_min(1e-12).log() - rivals_log.min(dim=1).values
