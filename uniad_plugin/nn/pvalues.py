"""Empirical p-values of per-layer scores and their combination by Fisher's method.

Each layer's score of an input is turned into the fraction of held-out in-distribution inputs
that score at least as high (its empirical p-value); the layers' p-values are combined by
Fisher's method, :math:`-\\sum_l \\log p_l` (half of Fisher's :math:`\\chi^2` statistic, the same
ordering). Unlike a sum of z-scores, one layer that sees an input far in its tail keeps that
input far in the tail of the combination, whatever the other layers say, and layers with
heavy-tailed scores do not dominate the others.

The survival function of each layer is the held-out scores' empirical one, interpolated
linearly in :math:`\\log p` between the sorted held-out scores (so it has a gradient, for
white-box attacks), constant :math:`\\log p = 0` below the smallest held-out score, and beyond
the largest an exponential tail: :math:`\\log p` keeps falling linearly with the slope of the
top decile of the held-out scores. Anomalies beyond every held-out score are thus still ranked
by how far beyond they lie.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fisher_combination", "log_survival", "survival_knots"]


def survival_knots(held_out: Tensor) -> tuple[Tensor, Tensor]:
    """The interpolation knots of each layer's empirical survival function.

    :param held_out: scores ``(n, L)`` of ``n >= 2`` held-out ID inputs in ``L`` layers
    :return: ``(knots, tail_slope)``: the sorted scores ``(L, n)`` and the slope ``(L,)`` of
        :math:`\\log p` beyond the largest (negative)
    :raises ValueError: for fewer than 2 held-out scores or non-finite ones
    """
    if held_out.dim() != 2 or len(held_out) < 2:
        raise ValueError(
            f"expected held-out scores of shape (n >= 2, layers), got {tuple(held_out.shape)}"
        )
    if not bool(torch.isfinite(held_out).all()):
        raise ValueError("expected finite held-out scores, got NaN or inf")
    knots = held_out.T.sort(dim=1).values.contiguous().float()
    n = knots.shape[1]
    top = max(1, n // 10)  # the top decile: from the (n - top)-th to the n-th order statistic
    log_p = _knot_log_p(n, knots.device)
    rise = (knots[:, -1] - knots[:, -1 - top]).clamp_min(1e-12)
    slope = (log_p[-1] - log_p[-1 - top]) / rise
    return knots, slope


def _knot_log_p(n: int, device: torch.device) -> Tensor:
    """``log((n - i) / (n + 1))`` for the i-th smallest of ``n`` held-out scores (i = 0..n-1):
    the fraction of held-out scores at least as high, with the usual +1 correction."""
    return torch.log(torch.arange(n, 0, -1, device=device, dtype=torch.float32) / (n + 1))


def log_survival(knots: Tensor, tail_slope: Tensor, scores: Tensor) -> Tensor:
    """Interpolated :math:`\\log p` of ``scores`` ``(B, L)`` under each layer's held-out scores.

    Differentiable with respect to ``scores`` (piecewise linear between knots, linear beyond
    the largest, constant 0 below the smallest).

    :param knots: sorted held-out scores ``(L, n)`` from :func:`survival_knots`
    :param tail_slope: ``(L,)`` from :func:`survival_knots`
    :param scores: ``(B, L)`` scores of the inputs
    :return: ``(B, L)`` values in ``(-inf, 0]``
    """
    L, n = knots.shape
    if scores.dim() != 2 or scores.shape[1] != L:
        raise ValueError(f"expected scores of shape (B, {L}), got {tuple(scores.shape)}")
    log_p = _knot_log_p(n, knots.device)
    s = scores.T.contiguous().to(knots.dtype)  # (L, B)
    right = torch.searchsorted(knots, s.detach(), right=True).clamp(1, n - 1)  # (L, B)
    left = right - 1
    x0, x1 = knots.gather(1, left), knots.gather(1, right)
    y0, y1 = log_p[left], log_p[right]
    frac = ((s - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    inside = y0 + frac * (y1 - y0)
    beyond = log_p[-1] + tail_slope[:, None] * (s - knots[:, -1:])
    out = torch.where(s > knots[:, -1:], beyond, inside)
    out = torch.where(s < knots[:, :1], torch.zeros_like(out), out)
    return out.T


def fisher_combination(log_p: Tensor) -> Tensor:
    """Fisher's combination of per-layer log p-values ``(B, L)`` -> ``(B,)``: larger is more
    anomalous (:math:`-\\sum_l \\log p_l`)."""
    return -log_p.sum(dim=1)
