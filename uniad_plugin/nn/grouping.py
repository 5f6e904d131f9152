"""Rows grouped by class, so that one ``bmm`` applies every class's own weights.

Per-class models (the hyperspheres' encoders of :mod:`uniad_plugin.nn.svdd`) store their
weights with a leading class axis ``(K, ...)``. To run ``N`` (row, class) pairs through them
without a per-sample weight copy or a loop over classes, the pairs are laid out as a padded
``(K', m, D)`` tensor over the ``K'`` classes present (``m``: the largest class count), one
``bmm`` per layer runs on it, and the results are read back in the pairs' order.
:class:`ClassGroups` is that layout, computed once from the classes and shared by every layer
(and by every feature tensor) that is scored with them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ClassGroups"]


class ClassGroups:
    """The padded class layout of ``N`` (row, class) pairs.

    Pair ``i`` takes row ``rows[i]`` of the feature tensors (row ``i`` when ``rows`` is
    ``None``) to class ``k[i]``; a row may appear in several pairs (a row scored under its
    rivals' spheres too) without being copied first. The padding slots repeat the first pair
    of their class, so they compute nothing that the real pairs do not (no inputs from other
    classes, no NaN from other rows in a backward pass); their results are never read.

    :param k: ``(N,)`` integer classes in ``[0, num_classes)``, ``N >= 1``
    :param num_classes: the class count ``K`` of the weights
    :param rows: ``(N,)`` row index of each pair into the feature tensors, or ``None``
    """

    def __init__(self, k: Tensor, num_classes: int, rows: Tensor | None = None) -> None:
        n = len(k)
        if n == 0:
            raise ValueError("expected at least one (row, class) pair, got none")
        if rows is not None and rows.shape != k.shape:
            raise ValueError(f"expected {n} row indices, got shape {tuple(rows.shape)}")
        device = k.device
        counts = torch.bincount(k, minlength=num_classes)
        if len(counts) > num_classes:
            raise ValueError(f"expected classes in [0, {num_classes}), got {int(k.max())}")
        present = torch.nonzero(counts).flatten()
        #: the classes present, or ``None`` when all ``K`` are (the weights are used as is)
        self.present: Tensor | None = None if len(present) == num_classes else present
        if self.present is None:
            group = k
        else:
            counts = counts[present]
            slot_of_class = torch.zeros(num_classes, dtype=torch.long, device=device)
            slot_of_class[present] = torch.arange(len(present), device=device)
            group = slot_of_class[k]
        self.num_groups = len(counts)
        self.m = int(counts.max())
        order = torch.argsort(group, stable=True)
        g = group[order]
        starts = torch.cumsum(counts, 0) - counts
        slot_sorted = g * self.m + torch.arange(n, device=device) - starts[g]
        src_rows = order if rows is None else rows[order]
        #: the feature row of each padded slot ``(K' * m,)``
        self.src = src_rows[starts].repeat_interleave(self.m)
        self.src[slot_sorted] = src_rows
        #: the padded slot of each pair ``(N,)``
        self.slot = torch.empty_like(slot_sorted)
        self.slot[order] = slot_sorted

    def gather(self, z: Tensor) -> Tensor:
        """The pairs' rows of ``z`` ``(B, D)`` in the padded layout ``(K', m, D)``
        (differentiable)."""
        return z.index_select(0, self.src).view(self.num_groups, self.m, z.shape[1])

    def of_classes(self, t: Tensor) -> Tensor:
        """The present classes' entries of a per-class tensor ``(K, ...)`` -> ``(K', ...)``
        (``t`` itself when every class is present)."""
        return t if self.present is None else t[self.present]

    def scatter(self, grouped: Tensor) -> Tensor:
        """Results in the padded layout ``(K', m, ...)`` read back in the pairs' order
        ``(N, ...)``."""
        flat = grouped.reshape(self.num_groups * self.m, *grouped.shape[2:])
        return flat.index_select(0, self.slot)
