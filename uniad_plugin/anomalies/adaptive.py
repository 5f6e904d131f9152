"""Adaptive attacks: adversarial examples crafted against the classifier AND the detector.

A detector of adversarial inputs is only as good as its result against an attacker who knows it
is there (Carlini & Wagner 2017; Tramer et al. 2020). :class:`AdaptiveLinfPGD` is foolbox's
:class:`~foolbox.attacks.LinfPGD` with the loss replaced by

.. math::

    \\mathcal{L}(x) = -\\max\\big(m(x), -\\kappa\\big) - \\lambda \\, \\tilde{s}(x), \\qquad
    m(x) = f_y(x) - \\max_{j \\ne y} f_j(x)

which PGD maximises: the clipped margin loss (Carlini & Wagner) misleads the classifier and stops
pushing once the margin is below :math:`-\\kappa`, so the remaining budget goes into lowering the
detector's score :math:`\\tilde{s}`, standardised with ID statistics so that one :math:`\\lambda`
means the same for every detector. The detector must be differentiable end to end:
:func:`differentiable_score` supports :class:`~uniad_plugin.detectors.uniform.UniformDetector`,
pytorch-ood's ``Mahalanobis`` and ``MultiMahalanobis``, and any detector with a
``differentiable_score(x)`` method.

:func:`make_adaptive` puts its sets on the ID data's value grid like the other generators
(``levels``, default 255: values ``k / 255``): PGD's continuous outputs are rounded within the
budget and only those still misclassified after rounding are kept; the detector's evasion is
then measured on the rounded inputs (:func:`evasion_rate`). ``levels=None`` keeps continuous
values (the name ends in ``" (continuous)"``).

:func:`uniad_plugin.anomalies.blackbox.make_square` is a gradient-free counterpart (the Square
Attack's random search on the same objective), a check against obfuscated gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from uniad_plugin._utils import eval_mode
from uniad_plugin.anomalies.adversarial import AdversarialSet
from uniad_plugin.anomalies.base import (
    DEFAULT_LEVELS,
    _check_bounds,
    _check_levels,
    _check_n,
    collect,
    grid_name,
    round_adversarial,
)


def differentiable_score(detector: Any) -> Callable[[Tensor], Tensor]:
    """A function ``x -> scores`` equal to ``detector.predict(x)`` but with autograd enabled.

    :raises TypeError: for a detector without a known differentiable form
    """
    if hasattr(detector, "differentiable_score"):
        return detector.differentiable_score
    from pytorch_ood.detector import Mahalanobis, MultiMahalanobis

    if isinstance(detector, Mahalanobis):
        if detector.mu is None:
            from pytorch_ood.api import RequiresFittingException

            raise RequiresFittingException

        def maha(x: Tensor) -> Tensor:
            z = detector.encoder(x)
            z = z.reshape(z.shape[0], z.shape[1], -1).mean(2)
            return _min_mahalanobis(z, detector.mu, detector.precision)

        return maha
    if isinstance(detector, MultiMahalanobis):
        if not detector.mu:
            from pytorch_ood.api import RequiresFittingException

            raise RequiresFittingException

        def multi(x: Tensor) -> Tensor:
            total = x.new_zeros(x.shape[0])
            h = x
            for i, block in enumerate(detector.model):
                h = block(h)  # blocks are consecutive: one pass through the prefix
                z = h.mean(dim=(2, 3))
                total = total + detector.alpha[i] * _min_mahalanobis(
                    z, detector.mu[i], detector.precision[i]
                )
            return total

        return multi
    raise TypeError(
        f"expected UniformDetector, Mahalanobis, MultiMahalanobis or a detector with a "
        f"differentiable_score(x) method, got {type(detector).__name__}"
    )


def _min_mahalanobis(z: Tensor, mu: Tensor, precision: Tensor) -> Tensor:
    centered = z[:, None, :] - mu[None, :, :]  # (B, K, D)
    md = 0.5 * torch.einsum("bkd,de,bke->bk", centered, precision, centered)
    return md.min(dim=1).values


def _linf_pgd_class():
    import foolbox as fb

    return fb.attacks.LinfPGD


class AdaptiveLinfPGD(_linf_pgd_class()):  # type: ignore[misc]
    """foolbox ``LinfPGD`` against classifier and detector together (see the module docstring).

    Use it like any foolbox attack: ``attack(fmodel, x, y, epsilons=eps)``.

    :param score_fn: differentiable detector score, e.g. from :func:`differentiable_score`
    :param lam: weight :math:`\\lambda` of the standardised detector score
    :param score_mean: mean of the detector's scores on ID data (standardisation)
    :param score_std: their standard deviation
    :param kappa: margin :math:`\\kappa` beyond which misclassification is not pushed further
    :param kwargs: passed to ``LinfPGD`` (``steps``, ``rel_stepsize``, ``random_start``, ...)
    """

    def __init__(
        self,
        score_fn: Callable[[Tensor], Tensor],
        lam: float = 1.0,
        score_mean: float = 0.0,
        score_std: float = 1.0,
        kappa: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not score_std > 0:
            raise ValueError(f"expected score_std > 0, got {score_std}")
        self.score_fn = score_fn
        self.lam = float(lam)
        self.score_mean = float(score_mean)
        self.score_std = float(score_std)
        self.kappa = float(kappa)

    def get_loss_fn(self, model, labels):  # foolbox's hook; model and labels are eagerpy
        import eagerpy as ep

        y = labels.raw

        def loss_fn(inputs):
            x = inputs.raw
            logits = model(inputs).raw
            s = (self.score_fn(x) - self.score_mean) / self.score_std if self.lam else None
            return ep.astensor(adaptive_loss(logits, y, s, lam=self.lam, kappa=self.kappa).sum())

        return loss_fn


def adaptive_loss(
    logits: Tensor, y: Tensor, score: Tensor | None, *, lam: float, kappa: float
) -> Tensor:
    """The per-sample objective of the adaptive attacks (to maximise; see the module docstring):
    ``-max(margin, -kappa) - lam * max(score, 0)``.

    :param logits: the model's outputs ``(B, K)``
    :param y: the true labels ``(B,)``
    :param score: the detector's standardised scores ``(B,)``; ignored (may be ``None``) when
        ``lam`` is 0
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    margin = true - other.max(1).values
    loss = -margin.clamp_min(-kappa)
    if lam:
        loss = loss - lam * score.clamp_min(0.0)
    return loss


@dataclass(frozen=True)
class AdaptiveOptions:
    """The keyword options of :func:`make_adaptive`, as one object.

    :param lam: weight of the detector term; ``0`` gives a plain (non-adaptive) margin PGD
    :param id_reference: ID inputs whose detector scores standardise the detector term
        (default: the clean inputs being attacked)
    :param steps: PGD steps
    :param rel_stepsize: PGD step size relative to ``eps``
    :param kappa: margin :math:`\\kappa` beyond which misclassification is not pushed further
    :param bounds: value range of the model's inputs
    :param levels: value grid of the ID data: adversarials are rounded to values
        ``k / levels`` within the budget and re-checked (default 255, 8-bit images; 16 for
        scikit-learn's digits); ``None`` keeps them continuous (the name gets
        ``" (continuous)"``)
    :param batch_size: inputs attacked per foolbox call
    :param seed: seeds PGD's random start
    :param max_samples: attack at most this many correctly classified inputs
    :param name: name of the set (default ``f"adaptive_pgd[{detector}]@{eps:g}"``)
    """

    lam: float = 1.0
    id_reference: Tensor | None = field(default=None, compare=False, repr=False)
    steps: int = 40
    rel_stepsize: float = 2.5 / 40
    kappa: float = 1.0
    bounds: tuple[float, float] = (0.0, 1.0)
    levels: int | None = DEFAULT_LEVELS
    batch_size: int = 128
    seed: int = 0
    max_samples: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        _check_common(self)
        _check_n(self.steps, "steps")
        if not self.rel_stepsize > 0:
            raise ValueError(f"expected rel_stepsize > 0, got {self.rel_stepsize!r}")


def _options(cls: type, options: Any, kwargs: dict[str, Any]) -> Any:
    """``options`` (an instance of the dataclass ``cls``, or its defaults) with ``kwargs``."""
    if options is not None and not isinstance(options, cls):
        raise TypeError(f"expected options to be a {cls.__name__}, got {type(options).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"expected keyword arguments among {sorted(names)}, got unknown {unknown}")
    base = options if options is not None else cls()
    return replace(base, **kwargs) if kwargs else base


def _check_common(opts: Any) -> None:
    """Checks of the option fields that the adaptive attacks share."""
    object.__setattr__(opts, "bounds", _check_bounds(opts.bounds))
    object.__setattr__(opts, "levels", _check_levels(opts.levels))
    _check_n(opts.batch_size, "batch_size")
    if opts.max_samples is not None:
        _check_n(opts.max_samples, "max_samples")
    if not isinstance(opts.seed, int) or isinstance(opts.seed, bool):
        raise TypeError(f"expected seed to be an int, got {type(opts.seed).__name__}")
    if opts.id_reference is not None and not isinstance(opts.id_reference, Tensor):
        got = type(opts.id_reference).__name__
        raise TypeError(f"expected id_reference to be a Tensor or None, got {got}")
    if opts.name is not None and (not isinstance(opts.name, str) or not opts.name):
        raise ValueError(f"expected name to be a non-empty str or None, got {opts.name!r}")


def score_stats(score_fn: Callable[[Tensor], Tensor], x: Tensor, opts: Any) -> tuple[float, float]:
    """Mean and standard deviation of the detector's scores on ``opts.id_reference`` (default:
    the clean inputs ``x``), which standardise the detector term of :func:`adaptive_loss`."""
    ref = x if opts.id_reference is None else opts.id_reference
    with torch.no_grad():
        ref_scores = torch.cat([score_fn(c) for c in ref.split(opts.batch_size)])
    return float(ref_scores.mean()), float(ref_scores.std().clamp_min(1e-12))


def _predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(c).argmax(1) for c in x.split(batch_size)]).cpu()


def _attack(
    model: nn.Module,
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    eps: float,
    opts: AdaptiveOptions,
) -> Tensor:
    """Seeded adaptive PGD on ``(x, y)``, batch by batch: foolbox's clipped (continuous) output."""
    import foolbox as fb

    score_mean, score_std = score_stats(score_fn, x, opts)
    attack = AdaptiveLinfPGD(
        score_fn,
        lam=opts.lam,
        score_mean=score_mean,
        score_std=score_std,
        kappa=opts.kappa,
        steps=opts.steps,
        rel_stepsize=opts.rel_stepsize,
        random_start=True,
    )
    fmodel = fb.PyTorchModel(model, bounds=opts.bounds)
    advs = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        for xb, yb in zip(x.split(opts.batch_size), y.split(opts.batch_size)):
            _, adv, _ = attack(fmodel, xb, yb, epsilons=eps)
            advs.append(adv.detach())
    return torch.cat(advs) if advs else x[:0].clone()


def _successful(adv: Tensor, x: Tensor, y: Tensor, pred: Tensor, eps: float) -> Tensor:
    """Misclassified, finite and within the L-inf budget ``eps``."""
    linf = (adv - x).flatten(1).abs().amax(1)
    return (pred != y) & torch.isfinite(adv).flatten(1).all(1) & (linf <= eps * (1 + 1e-5))


def make_adaptive(
    model: nn.Module,
    detector: Any,
    data: Dataset | DataLoader,
    eps: float,
    *,
    options: AdaptiveOptions | None = None,
    **kwargs: Any,
) -> AdversarialSet:
    """Adaptive L-inf PGD adversarials against ``model`` + ``detector``, rounded onto the
    data's value grid; the successful ones kept.

    Only correctly classified inputs are attacked (the first ``max_samples`` of them). foolbox
    attacks in continuous values; each output is rounded onto the grid ``k / levels`` within
    the budget (:func:`~uniad_plugin.anomalies.base.round_adversarial`: each value held to the
    grid values within ``eps`` of its source) and the model is run again. "Successful" means
    misclassified (and finite, within ``eps``) before AND after rounding, as for the other
    adversarial sets; whether an example also evades the detector is measured on the rounded
    inputs by :func:`evasion_rate`.

    :param detector: a fitted detector with a differentiable form (:func:`differentiable_score`)
    :param data: ID ``(x, y)`` samples to attack, within ``bounds``
    :param eps: L-inf budget
    :param options: the keyword options as one :class:`AdaptiveOptions`
    :param kwargs: any field of :class:`AdaptiveOptions` (``lam``, ``id_reference``,
        ``steps``, ``rel_stepsize``, ``kappa``, ``bounds``, ``levels``, ``batch_size``,
        ``seed``, ``max_samples``, ``name``), overriding ``options``
    :return: the kept adversarials (on the grid), named
        ``f"adaptive_pgd[{detector}]@{eps:g}"`` or ``name`` (plus ``" (continuous)"`` for
        ``levels=None``); ``info`` holds ``success_rate_continuous`` (before rounding) and
        ``success_rate`` (after), their counts, ``grid_levels`` and the attack's settings
    :raises ValueError: on ``eps <= 0``, bad options or data outside ``bounds``
    :raises TypeError: on an unknown keyword argument or a detector without a differentiable
        form
    """
    if not eps > 0:
        raise ValueError(f"expected eps > 0, got {eps!r}")
    opts = _options(AdaptiveOptions, options, kwargs)
    score_fn = differentiable_score(detector)
    x, y, counts = correct_inputs(model, data, opts)
    with eval_mode(model):
        raw = _attack(model, score_fn, x, y, eps, opts)
    settings = {
        "attack": "adaptive_pgd_linf",
        "lam": float(opts.lam),
        "kappa": float(opts.kappa),
        "steps": opts.steps,
        "rel_stepsize": float(opts.rel_stepsize),
    }
    name = opts.name or f"adaptive_pgd[{type(detector).__name__}]@{eps:g}"
    return finish_adversarials(
        model, detector, (x, y, raw), eps, opts, {**settings, **counts}, name
    )


def correct_inputs(
    model: nn.Module, data: Dataset | DataLoader, opts: Any
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The first ``opts.max_samples`` inputs of ``data`` that ``model`` classifies correctly,
    their labels and the counts ``{"n_input", "n_correct", "clean_accuracy"}``.

    :raises ValueError: for data outside ``opts.bounds``
    """
    lo, hi = opts.bounds
    x, y = collect(data, batch_size=opts.batch_size, max_samples=None, what="data")
    if x.min() < lo or x.max() > hi:
        raise ValueError(
            f"expected data within bounds {(lo, hi)}, got values in "
            f"[{x.min().item():.4g}, {x.max().item():.4g}]"
        )
    with eval_mode(model):
        correct = _predict(model, x, opts.batch_size) == y
    n_correct = int(correct.sum())
    counts = {"n_input": len(x), "n_correct": n_correct, "clean_accuracy": n_correct / len(x)}
    return x[correct][: opts.max_samples], y[correct][: opts.max_samples], counts


def finish_adversarials(
    model: nn.Module,
    detector: Any,
    attacked: tuple[Tensor, Tensor, Tensor],
    eps: float,
    opts: Any,
    info: dict[str, Any],
    name: str,
) -> AdversarialSet:
    """Round an L-inf attack's continuous outputs onto the grid and keep the successful ones.

    :param attacked: ``(x, y, raw)``: the clean inputs, their labels and the attack's outputs
    :param opts: the attack's options (``bounds``, ``levels``, ``batch_size``, ``seed``)
    :param info: the attack's settings and counts, put first in the set's ``info``
    :return: the adversarials misclassified before AND after rounding (see :func:`make_adaptive`)
    """
    x, y, raw = attacked
    lo, hi = opts.bounds
    with eval_mode(model):
        ok_cont = _successful(raw, x, y, _predict(model, raw, opts.batch_size), eps)
        adv = round_adversarial(raw, x, eps=eps, norm="linf", levels=opts.levels, bounds=(lo, hi))
        adv_pred = _predict(model, adv, opts.batch_size)
    ok = ok_cont & _successful(adv, x, y, adv_pred, eps)
    n = len(x)
    delta = (adv - x)[ok].flatten(1)
    info = {
        **info,
        "detector": type(detector).__name__,
        "eps": float(eps),
        "norm": "linf",
        "grid_levels": opts.levels,
        "seed": opts.seed,
        "bounds": [lo, hi],
        "n_attacked": n,
        "n_success_continuous": int(ok_cont.sum()),
        "success_rate_continuous": float(ok_cont.float().mean()) if n else 0.0,
        "n_success": int(ok.sum()),
        "success_rate": float(ok.float().mean()) if n else 0.0,
        "mean_linf": float(delta.abs().amax(1).mean()) if ok.any() else None,
        "mean_l2": float(delta.norm(dim=1).mean()) if ok.any() else None,
        "source_labels": y[ok].tolist(),
        "adv_pred": adv_pred[ok].tolist(),
    }
    return AdversarialSet(
        adv[ok],
        grid_name(name, opts.levels),
        info,
        source_labels=y[ok],
        adv_pred=adv_pred[ok],
        clean=x[ok],
    )


def evasion_rate(
    id_scores: Tensor, adv_scores: Tensor, n_attacked: int, fpr: float = 0.05
) -> dict[str, float]:
    """Attack success rate at a fixed false-positive rate on ID data.

    The threshold flags the top ``fpr`` fraction of ID scores; an attack succeeds on an input
    when its adversarial is misclassified (every example in ``adv_scores`` is) AND scores below
    the threshold.

    :param n_attacked: number of correctly classified inputs that were attacked
    :return: ``{"threshold", "detected", "success_at_fpr"}`` (fractions of ``n_attacked``)
    """
    if not 0 < fpr < 1:
        raise ValueError(f"expected fpr in (0, 1), got {fpr}")
    if n_attacked < len(adv_scores):
        raise ValueError(
            f"expected n_attacked >= number of adversarials ({len(adv_scores)}), got {n_attacked}"
        )
    threshold = float(torch.quantile(id_scores.double(), 1 - fpr))
    evaded = int((adv_scores <= threshold).sum())
    return {
        "threshold": threshold,
        "detected": (len(adv_scores) - evaded) / max(n_attacked, 1),
        "success_at_fpr": evaded / max(n_attacked, 1),
    }
