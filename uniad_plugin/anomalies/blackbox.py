"""A gradient-free (score-based, black-box) adaptive attack against classifier AND detector.

:func:`make_square` is the random search of the Square Attack (Andriushchenko, Croce,
Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial attack via random
search", ECCV 2020) in L-inf, with the objective of the white-box attack of
:mod:`uniad_plugin.anomalies.adaptive` (:func:`~uniad_plugin.anomalies.adaptive.adaptive_loss`):
it minimises

.. math::

    \\max\\big(m(x), -\\kappa\\big) + \\lambda \\, \\max\\big(\\tilde{s}(x), 0\\big)

(the clipped margin plus the detector's score standardised with ID statistics) using only
forward passes of the model and the detector's ``predict``, never a gradient. It starts from
vertical stripes :math:`x \\pm \\epsilon` and, at each iteration, proposes to set a random square
window of every image to :math:`x \\pm \\epsilon` (one random sign per channel, clipped to the
bounds); each image keeps its proposal if it lowers the objective. The side of the square
shrinks on the paper's schedule of ``p`` (the share of the image's pixels in the window).

Its purpose here is a check that the white-box attack's figure is not an artefact of
obfuscated gradients (Athalye et al. 2018; Tramer et al. 2020): a gradient-free attack that
does much better than the gradient-based one would mean the gradients mislead it.

The outputs go through the same rounding and checks as :func:`make_adaptive`'s
(:func:`~uniad_plugin.anomalies.adaptive.finish_adversarials`): rounded onto the data's value
grid within the budget, kept only if still misclassified.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from uniad_plugin._utils import eval_mode
from uniad_plugin.anomalies.adaptive import (
    _check_common,
    _options,
    adaptive_loss,
    correct_inputs,
    finish_adversarials,
    score_stats,
)
from uniad_plugin.anomalies.adversarial import AdversarialSet
from uniad_plugin.anomalies.base import DEFAULT_LEVELS, _check_n


@dataclass(frozen=True)
class SquareOptions:
    """The keyword options of :func:`make_square`, as one object.

    :param lam: weight of the detector term; ``0`` gives a plain (non-adaptive) Square Attack
        on the clipped margin
    :param id_reference: ID inputs whose detector scores standardise the detector term
        (default: the clean inputs being attacked)
    :param queries: forward passes (model and detector) per attacked input, the initial
        stripes included: ``queries - 1`` random-search iterations
    :param p_init: initial share of the image's pixels in the square window (0.8, the
        authors' setting for MNIST)
    :param kappa: margin :math:`\\kappa` beyond which misclassification is not pushed further
    :param bounds: value range of the model's inputs
    :param levels: value grid of the ID data, as for :class:`AdaptiveOptions`; ``None`` keeps
        the outputs continuous
    :param batch_size: inputs attacked together (the random draws depend on it)
    :param seed: seeds the random search (a ``torch.Generator``)
    :param max_samples: attack at most this many correctly classified inputs
    :param name: name of the set (default ``f"square[{detector}]@{eps:g}"``)
    """

    lam: float = 1.0
    id_reference: Tensor | None = field(default=None, compare=False, repr=False)
    queries: int = 1000
    p_init: float = 0.8
    kappa: float = 1.0
    bounds: tuple[float, float] = (0.0, 1.0)
    levels: int | None = DEFAULT_LEVELS
    batch_size: int = 500
    seed: int = 0
    max_samples: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        _check_common(self)
        _check_n(self.queries, "queries")
        if not 0 < self.p_init <= 1:
            raise ValueError(f"expected p_init in (0, 1], got {self.p_init!r}")


def square_fraction(p_init: float, it: int, iterations: int) -> float:
    """The share of pixels in the window at iteration ``it`` of ``iterations``: the Square
    Attack's schedule (halved at fixed points of a 10,000-iteration run, rescaled)."""
    t = int(it / max(iterations, 1) * 10000)
    halvings = sum(t > b for b in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2**halvings


def _window(side: int, shape: torch.Size, gen: torch.Generator) -> Tensor:
    """A boolean mask ``(B, 1, H, W)``: one random ``side x side`` square per sample."""
    b, _, h, w = shape
    top = torch.randint(0, h - side + 1, (b, 1), generator=gen)
    left = torch.randint(0, w - side + 1, (b, 1), generator=gen)
    rows = (torch.arange(h) >= top) & (torch.arange(h) < top + side)  # (B, H)
    cols = (torch.arange(w) >= left) & (torch.arange(w) < left + side)  # (B, W)
    return rows[:, None, :, None] & cols[:, None, None, :]


def _square(
    objective: Callable[[Tensor], Tensor],
    x: Tensor,
    eps: float,
    opts: SquareOptions,
    gen: torch.Generator,
) -> Tensor:
    """The random search on one batch ``x`` (CPU): the best point found for each sample."""
    lo, hi = opts.bounds
    b, c, h, w = x.shape
    stripes = torch.randint(0, 2, (b, c, 1, w), generator=gen).to(x.dtype) * 2 - 1
    best = (x + eps * stripes).clamp(lo, hi)
    loss = objective(best)
    iterations = opts.queries - 1
    for it in range(iterations):
        p = square_fraction(opts.p_init, it, iterations)
        side = min(max(round(math.sqrt(p * h * w)), 1), min(h, w))
        mask = _window(side, x.shape, gen)
        sign = torch.randint(0, 2, (b, c, 1, 1), generator=gen).to(x.dtype) * 2 - 1
        cand = torch.where(mask, (x + eps * sign).clamp(lo, hi), best)
        # a window that already holds these signs would waste the query: flip them
        same = ((cand - best).abs() < 1e-7).flatten(1).all(1)[:, None, None, None]
        cand = torch.where(mask & same, (x - eps * sign).clamp(lo, hi), cand)
        cand_loss = objective(cand)
        better = cand_loss < loss
        best = torch.where(better[:, None, None, None], cand, best)
        loss = torch.where(better, cand_loss, loss)
    return best


def _objective(
    model: nn.Module, detector: Any, y: Tensor, opts: SquareOptions, stats: tuple[float, float]
) -> Callable[[Tensor], Tensor]:
    """``x -> `` the per-sample objective to minimise, from forward passes only."""
    mean, std = stats
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def objective(x: Tensor) -> Tensor:
        with torch.no_grad():
            logits = model(x.to(device)).cpu()
            s = (detector.predict(x).cpu() - mean) / std if opts.lam else None
            return -adaptive_loss(logits, y, s, lam=opts.lam, kappa=opts.kappa)

    return objective


def make_square(
    model: nn.Module,
    detector: Any,
    data: Dataset | DataLoader,
    eps: float,
    *,
    options: SquareOptions | None = None,
    **kwargs: Any,
) -> AdversarialSet:
    """Gradient-free Square Attack (Andriushchenko et al. 2020) in L-inf against ``model`` +
    ``detector`` (see the module docstring), rounded onto the data's value grid; the
    successful ones kept.

    Only correctly classified inputs are attacked (the first ``max_samples`` of them), in
    batches of ``batch_size``, all samples of a batch at once. The model and the detector are
    only called forward, under ``torch.no_grad()`` (the detector through its ``predict``). The
    outputs are rounded and checked as :func:`~uniad_plugin.anomalies.adaptive.make_adaptive`'s;
    measure the evasion of the detector on them with
    :func:`~uniad_plugin.anomalies.adaptive.evasion_rate`.

    :param detector: a fitted detector with ``predict(x)`` (larger is more anomalous)
    :param data: ID ``(x, y)`` images ``(N, C, H, W)`` to attack, within ``bounds``
    :param eps: L-inf budget
    :param options: the keyword options as one :class:`SquareOptions`
    :param kwargs: any field of :class:`SquareOptions`, overriding ``options``
    :return: the kept adversarials (on the grid), named ``f"square[{detector}]@{eps:g}"`` or
        ``name`` (plus ``" (continuous)"`` for ``levels=None``); ``info`` as for
        :func:`~uniad_plugin.anomalies.adaptive.make_adaptive`, with ``attack="square_linf"``,
        ``queries`` and ``p_init``
    :raises ValueError: on ``eps <= 0``, bad options, inputs that are not images or data
        outside ``bounds``
    :raises TypeError: on an unknown keyword argument
    """
    if not eps > 0:
        raise ValueError(f"expected eps > 0, got {eps!r}")
    opts = _options(SquareOptions, options, kwargs)
    x, y, counts = correct_inputs(model, data, opts)
    if x.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    gen = torch.Generator().manual_seed(opts.seed)
    with eval_mode(model):
        stats = score_stats(detector.predict, x, opts)
        raw = [
            _square(_objective(model, detector, yb, opts, stats), xb, eps, opts, gen)
            for xb, yb in zip(x.split(opts.batch_size), y.split(opts.batch_size))
        ]
    raw = torch.cat(raw) if raw else x[:0].clone()
    settings = {
        "attack": "square_linf",
        "lam": float(opts.lam),
        "kappa": float(opts.kappa),
        "queries": opts.queries,
        "p_init": float(opts.p_init),
    }
    name = opts.name or f"square[{type(detector).__name__}]@{eps:g}"
    return finish_adversarials(
        model, detector, (x, y, raw), eps, opts, {**settings, **counts}, name
    )
