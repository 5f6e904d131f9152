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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from uniad_plugin._utils import eval_mode
from uniad_plugin.anomalies.adversarial import AdversarialSet
from uniad_plugin.anomalies.base import _check_bounds, collect


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
            true = logits.gather(1, y[:, None]).squeeze(1)
            other = logits.masked_fill(
                nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf")
            )
            margin = true - other.max(1).values
            loss = -margin.clamp_min(-self.kappa)
            if self.lam:
                s = (self.score_fn(x) - self.score_mean) / self.score_std
                loss = loss - self.lam * s.clamp_min(0.0)
            return ep.astensor(loss.sum())

        return loss_fn


def make_adaptive(
    model: nn.Module,
    detector: Any,
    data: Dataset | DataLoader,
    eps: float,
    *,
    lam: float = 1.0,
    id_reference: Tensor | None = None,
    steps: int = 40,
    rel_stepsize: float = 2.5 / 40,
    kappa: float = 1.0,
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 128,
    seed: int = 0,
    max_samples: int | None = None,
    name: str | None = None,
) -> AdversarialSet:
    """Adaptive L-inf PGD adversarials against ``model`` + ``detector``; successful ones kept.

    "Successful" means misclassified, as for the other adversarial sets; whether an example
    also evades the detector is measured by :func:`evasion_rate`.

    :param detector: a fitted detector with a differentiable form (:func:`differentiable_score`)
    :param data: ID ``(x, y)`` samples to attack (only correctly classified ones are attacked)
    :param eps: L-inf budget
    :param lam: weight of the detector term; ``0`` gives a plain (non-adaptive) margin PGD
    :param id_reference: ID inputs whose detector scores standardise the detector term
        (default: the clean inputs being attacked)
    :param seed: seeds PGD's random start
    """
    import foolbox as fb

    if not eps > 0:
        raise ValueError(f"expected eps > 0, got {eps!r}")
    lo, hi = _check_bounds(bounds)
    x, y = collect(data, batch_size=batch_size, max_samples=None, what="data")
    score_fn = differentiable_score(detector)
    with eval_mode(model):
        with torch.no_grad():
            pred = torch.cat([model(c).argmax(1) for c in x.split(batch_size)])
        correct = pred == y
        x, y = x[correct], y[correct]
        if max_samples is not None:
            x, y = x[:max_samples], y[:max_samples]
        ref = x if id_reference is None else id_reference
        with torch.no_grad():
            ref_scores = torch.cat([score_fn(c) for c in ref.split(batch_size)])
        attack = AdaptiveLinfPGD(
            score_fn,
            lam=lam,
            score_mean=float(ref_scores.mean()),
            score_std=float(ref_scores.std().clamp_min(1e-12)),
            kappa=kappa,
            steps=steps,
            rel_stepsize=rel_stepsize,
            random_start=True,
        )
        fmodel = fb.PyTorchModel(model, bounds=(lo, hi))
        advs = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
                _, adv, _ = attack(fmodel, xb, yb, epsilons=eps)
                advs.append(adv.detach())
        adv = torch.cat(advs) if advs else x[:0]
        with torch.no_grad():
            adv_pred = torch.cat([model(c).argmax(1) for c in adv.split(batch_size)])
    linf = (adv - x).flatten(1).abs().amax(1)
    ok = (adv_pred != y) & torch.isfinite(adv).flatten(1).all(1) & (linf <= eps * (1 + 1e-5))
    kept = adv[ok]
    det_name = type(detector).__name__
    info = {
        "attack": "adaptive_pgd_linf",
        "detector": det_name,
        "eps": float(eps),
        "lam": float(lam),
        "kappa": float(kappa),
        "steps": steps,
        "seed": seed,
        "n_attacked": len(x),
        "n_success": int(ok.sum()),
        "success_rate": float(ok.float().mean()) if len(x) else 0.0,
        "mean_linf": float(linf[ok].mean()) if ok.any() else None,
        "mean_l2": float((adv - x)[ok].flatten(1).norm(dim=1).mean()) if ok.any() else None,
        "source_labels": y[ok].tolist(),
        "adv_pred": adv_pred[ok].tolist(),
    }
    return AdversarialSet(
        kept,
        name or f"adaptive_pgd[{det_name}]@{eps:g}",
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
