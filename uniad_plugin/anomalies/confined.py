"""Object-confined PGD: foolbox's PGD with the perturbation confined to the source's object.

An :math:`L_\\infty` or :math:`L_2` attack on MNIST-like images perturbs the black background,
so the number of non-zero pixels alone detects it. :class:`ObjectLinfPGD` and
:class:`ObjectL2PGD` are foolbox's :class:`~foolbox.attacks.LinfPGD` and
:class:`~foolbox.attacks.L2PGD` with a mask computed from the clean input :math:`x_0`:

.. math::

    M = [x_0 \\ne b], \\qquad b = \\text{lower bound of the model's inputs (black)}

Only the elements in :math:`M` (the object's own pixels) move: the random start, the gradient
step (masked *before* the sign / :math:`L_2` normalisation, so the whole step goes into the
object) and the projection all apply :math:`M`, and the background stays exactly
:math:`x_0`. Object pixels are also kept at least ``floor_step`` above :math:`b` (one grid step,
set by :func:`~uniad_plugin.anomalies.adversarial.make_adversarial`), so no object pixel
becomes background: the number of non-zero pixels equals the source's.

Everything goes through foolbox's extension hooks (``get_random_start``, ``get_optimizer``,
``normalize``, ``project``); ``run`` only records the model's lower bound.
"""

from __future__ import annotations

import warnings
from typing import Any

import eagerpy as ep

with warnings.catch_warnings():  # foolbox imports scipy.ndimage.filters (deprecated)
    warnings.simplefilter("ignore", DeprecationWarning)
    import foolbox as fb
    from foolbox.attacks.gradient_descent_base import Optimizer, normalize_lp_norms

__all__ = ["ObjectLinfPGD", "ObjectL2PGD"]


class _MaskedStep(Optimizer):
    """Gradient step restricted to ``mask``: mask, then normalise (sign or L2), then scale."""

    def __init__(self, x: ep.Tensor, stepsize: float, mask: ep.Tensor, norm: str):
        super().__init__(x)
        self.stepsize, self.mask, self.norm = stepsize, mask, norm

    def __call__(self, gradient: ep.Tensor) -> ep.Tensor:
        g = gradient * self.mask
        g = g.sign() if self.norm == "linf" else normalize_lp_norms(g, p=2)
        return self.stepsize * g


class _ObjectMask:
    """The mixin of both attacks: the mask hooks around foolbox's PGD."""

    norm: str

    def __init__(self, *, floor_step: float = 1 / 255, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not floor_step >= 0:
            raise ValueError(f"expected floor_step >= 0, got {floor_step!r}")
        self.floor_step = float(floor_step)
        self._background = 0.0

    def run(self, model: Any, inputs: Any, criterion: Any, *, epsilon: float, **kwargs: Any):
        self._background = float(model.bounds[0])
        return super().run(model, inputs, criterion, epsilon=epsilon, **kwargs)

    def _mask(self, x0: ep.Tensor) -> ep.Tensor:
        return (x0 != self._background).astype(x0.dtype)

    def get_random_start(self, x0: ep.Tensor, epsilon: float) -> ep.Tensor:
        start = super().get_random_start(x0, epsilon)
        return x0 + self._mask(x0) * (start - x0)

    def get_optimizer(self, x: ep.Tensor, stepsize: float) -> Optimizer:
        return _MaskedStep(x, stepsize, self._mask(x), self.norm)

    def normalize(self, gradients: ep.Tensor, *, x: ep.Tensor, bounds: Any) -> ep.Tensor:
        return gradients  # the masked step normalises after masking

    def project(self, x: ep.Tensor, x0: ep.Tensor, epsilon: float) -> ep.Tensor:
        mask = self._mask(x0)
        x = super().project(x0 + mask * (x - x0), x0, epsilon)
        # object pixels stay >= background + floor_step (or at x0 where x0 is below that)
        floor = ep.minimum(x0, ep.full_like(x0, self._background + self.floor_step))
        return ep.where(mask > 0, ep.maximum(x, floor), x0)


class ObjectLinfPGD(_ObjectMask, fb.attacks.LinfPGD):
    """foolbox ``LinfPGD`` that perturbs only the source's non-background pixels.

    :param floor_step: object pixels stay at least this far above the background
    :param kwargs: passed to ``LinfPGD`` (``steps``, ``rel_stepsize``, ``random_start``, ...)
    """

    norm = "linf"


class ObjectL2PGD(_ObjectMask, fb.attacks.L2PGD):
    """foolbox ``L2PGD`` that perturbs only the source's non-background pixels.

    :param floor_step: object pixels stay at least this far above the background
    :param kwargs: passed to ``L2PGD`` (``steps``, ``rel_stepsize``, ``random_start``, ...)
    """

    norm = "l2"
