"""The attacks the benchmark crafts adversarial sets with: each name mapped onto a foolbox 3
attack, its budget's norm and its parameters (see :func:`~uniad_plugin.anomalies.make_adversarial`).

Defaults that differ from foolbox's (override any of them with ``attack_params``): PGD takes
steps of :math:`2.5 \\varepsilon / \\mathrm{steps}` (Madry et al.'s rule; foolbox's
``rel_stepsize`` defaults are smaller and left PGD weaker than FGSM on the digits CNN); C&W runs
5 binary-search steps of 100 Adam steps with step size 0.05 from ``initial_const=0.01``
(foolbox: 9 x 10,000 steps of 0.01 from 0.001, far too slow for a benchmark).
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ATTACKS", "AttackSpec", "budget_label", "parse_budget"]


@dataclass(frozen=True)
class AttackSpec:
    """How one named attack maps onto foolbox 3.

    :param foolbox_name: class name in :mod:`foolbox.attacks`, or ``"module:Class"`` for a
        foolbox attack subclass defined elsewhere (e.g. :mod:`.confined`)
    :param norm: norm of the budget ``eps``: ``"linf"`` or ``"l2"``
    :param defaults: keyword arguments of the foolbox attack; every key may be overridden
        through ``make_adversarial(..., attack_params=...)``
    :param description: one line for docs and error messages
    """

    foolbox_name: str
    norm: str
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def build(self, params: dict[str, Any]) -> Any:
        """The foolbox attack object with ``params`` (already merged with the defaults)."""
        with warnings.catch_warnings():  # foolbox imports scipy.ndimage.filters (deprecated)
            warnings.simplefilter("ignore", DeprecationWarning)
            import foolbox

            if ":" in self.foolbox_name:
                module, name = self.foolbox_name.split(":")
                return getattr(importlib.import_module(module), name)(**params)
        return getattr(foolbox.attacks, self.foolbox_name)(**params)


#: the attacks :func:`make_adversarial` knows, by name
ATTACKS: dict[str, AttackSpec] = {
    "fgsm": AttackSpec(
        "FGSM",
        "linf",
        {"random_start": False},
        "fast gradient sign method, one step of size eps (L-inf)",
    ),
    "pgd_linf": AttackSpec(
        "LinfPGD",
        "linf",
        {"steps": 40, "rel_stepsize": 2.5 / 40, "random_start": True},
        "projected gradient descent with random start, step 2.5 eps / steps, L-inf budget eps",
    ),
    "pgd_l2": AttackSpec(
        "L2PGD",
        "l2",
        {"steps": 50, "rel_stepsize": 2.5 / 50, "random_start": True},
        "projected gradient descent with random start, step 2.5 eps / steps, L2 budget eps",
    ),
    "pgd_linf_obj": AttackSpec(
        "uniad_plugin.anomalies.confined:ObjectLinfPGD",
        "linf",
        {"steps": 40, "rel_stepsize": 2.5 / 40, "random_start": True, "floor_step": None},
        "PGD as pgd_linf, confined to the source's non-background pixels (L-inf budget eps); "
        "floor_step None = one grid step",
    ),
    "pgd_l2_obj": AttackSpec(
        "uniad_plugin.anomalies.confined:ObjectL2PGD",
        "l2",
        {"steps": 50, "rel_stepsize": 2.5 / 50, "random_start": True, "floor_step": None},
        "PGD as pgd_l2, confined to the source's non-background pixels (L2 budget eps); "
        "floor_step None = one grid step",
    ),
    "deepfool": AttackSpec(
        "L2DeepFoolAttack",
        "l2",
        {"steps": 50, "candidates": 10, "overshoot": 0.02},
        "DeepFool (L2 variant); the minimal perturbation is projected onto the L2 ball eps",
    ),
    "cw_l2": AttackSpec(
        "L2CarliniWagnerAttack",
        "l2",
        {
            "steps": 100,
            "binary_search_steps": 5,
            "stepsize": 0.05,
            "confidence": 0.0,
            "initial_const": 1e-2,
            "abort_early": True,
        },
        "Carlini-Wagner L2 (100 Adam steps x 5 binary-search steps by default), "
        "projected onto the L2 ball eps",
    ),
}


def budget_label(eps: float) -> str:
    """An attack budget as people write it: ``8/255`` for a multiple of 1/255 whose decimal
    form is long (``0.0313725``), the shortest decimal otherwise (``0.3``, ``2``)."""
    text = f"{eps:g}"
    steps = round(eps * 255)
    if len(text) > 5 and 1 <= steps < 255 and abs(eps - steps / 255) < 1e-9:
        return f"{steps}/255"
    return text


def parse_budget(text: str) -> float:
    """A budget written as a number (``0.5``) or a fraction (``8/255``).

    :raises ValueError: if ``text`` is neither
    """
    num, sep, den = text.strip().partition("/")
    value = float(num) / float(den) if sep else float(num)
    return value
