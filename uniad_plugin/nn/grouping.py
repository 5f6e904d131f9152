"""Rows grouped by class, so that one ``bmm`` applies every class's own weights.

Per-class models (the hyperspheres' encoders of :mod:`uniad_plugin.nn.svdd`) store their
weights with a leading class axis ``(K, ...)``. To run ``N`` (row, class) pairs through them
without a per-sample weight copy or a loop over classes, the pairs are laid out as a padded
``(G, m, D)`` tensor of groups of one class each, one ``bmm`` per layer runs on it with each
group's class weights, and the results are read back in the pairs' order. :class:`ClassGroups`
is that layout, computed once from the classes and shared by every layer (and by every feature
tensor) that is scored with them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ClassGroups"]


class ClassGroups:
    """The padded class layout of ``N`` (row, class) pairs.

    Pair ``i`` takes row ``rows[i]`` of the feature tensors (row ``i`` when ``rows`` is
    ``None``) to class ``k[i]``; a row may appear in several pairs (a row scored under its
    rivals' spheres too) without being copied first.

    Every class present gets one group of ``m`` slots, ``m`` its largest count, as long as
    that pads the ``N`` pairs to at most ``2 N`` slots. A batch that piles onto one class
    (noise predicted as one digit, a targeted attack) would pad every other class to that
    count, so then ``m`` is the mean count per class present (rounded up) and a larger class
    fills several groups: fewer than ``2 N`` slots whatever the classes. The padding slots
    repeat the first pair of their class, so they compute nothing that the real pairs do not
    (no inputs under another class's weights, no NaN from other rows in a backward pass);
    their results are never read.

    :param k: ``(N,)`` integer classes in ``[0, num_classes)``, ``N >= 1`` (any integer dtype)
    :param num_classes: the class count ``K`` of the weights
    :param rows: ``(N,)`` row index of each pair into the feature tensors, or ``None``
    """

    def __init__(self, k: Tensor, num_classes: int, rows: Tensor | None = None) -> None:
        n = len(k)
        if n == 0:
            raise ValueError("expected at least one (row, class) pair, got none")
        if rows is not None and rows.shape != k.shape:
            raise ValueError(f"expected {n} row indices, got shape {tuple(rows.shape)}")
        if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
            raise ValueError(f"expected integer classes, got {k.dtype}")
        k = k.long()
        low, high = (int(v) for v in torch.aminmax(k))
        if low < 0 or high >= num_classes:
            raise ValueError(f"expected classes in [0, {num_classes}), got {low}..{high}")
        device = k.device
        counts = torch.bincount(k, minlength=num_classes)
        present = torch.nonzero(counts).flatten()
        counts = counts[present]
        slot_of_class = torch.zeros(num_classes, dtype=torch.long, device=device)
        slot_of_class[present] = torch.arange(len(present), device=device)
        m = int(counts.max())
        if m * len(present) > 2 * n:  # skewed: split the large classes
            m = -(-n // len(present))
        per = -(-counts // m)  # groups of each class present
        #: the class of each group ``(G,)``
        self.group_class = present.repeat_interleave(per)
        # one group per class, every class present: the weights serve as they are
        self._identity = len(present) == num_classes == len(self.group_class)
        self.num_groups, self.m = len(self.group_class), m
        c = slot_of_class[k]
        order = torch.argsort(c, stable=True)
        c_sorted = c[order]
        starts = torch.cumsum(counts, 0) - counts
        within = torch.arange(n, device=device) - starts[c_sorted]
        first_group = torch.cumsum(per, 0) - per
        slot_sorted = first_group[c_sorted] * m + within  # a class's groups are contiguous
        src_rows = order if rows is None else rows.to(device).long()[order]
        #: the feature row of each padded slot ``(G * m,)``
        self.src = src_rows[starts].repeat_interleave(per * m)
        self.src[slot_sorted] = src_rows
        #: the padded slot of each pair ``(N,)``
        self.slot = torch.empty_like(slot_sorted)
        self.slot[order] = slot_sorted

    def gather(self, z: Tensor) -> Tensor:
        """The pairs' rows of ``z`` ``(B, D)`` in the padded layout ``(G, m, D)``
        (differentiable)."""
        src = self.src.to(z.device)
        return z.index_select(0, src).view(self.num_groups, self.m, z.shape[1])

    def of_classes(self, t: Tensor) -> Tensor:
        """Each group's entry of a per-class tensor ``(K, ...)`` -> ``(G, ...)`` (``t``
        itself when the groups are the ``K`` classes in order)."""
        return t if self._identity else t[self.group_class.to(t.device)]

    def scatter(self, grouped: Tensor) -> Tensor:
        """Results in the padded layout ``(G, m, ...)`` read back in the pairs' order
        ``(N, ...)``."""
        flat = grouped.reshape(self.num_groups * self.m, *grouped.shape[2:])
        return flat.index_select(0, self.slot.to(grouped.device))
