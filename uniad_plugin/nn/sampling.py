"""A seeded, class-balanced sample of bounded size, drawn in one streaming pass.

Fitting on every row of a large ID set (ImageNet: 1.28 million images, several layers each)
would hold all of their activations in memory. Instead each row gets a pseudo-random 64-bit
*key*, and of every class only the rows with the smallest keys are kept (a bottom-:math:`k`
sample, uniform within the class and reproducible from the seed). The per-class number
:math:`c` follows from a total row budget :math:`B` by *water-filling* over the class counts
:math:`n_k` of all the data:

.. math::

    c = \\max \\Big\\{ c' : \\sum_k \\min(n_k, c') \\le B \\Big\\}

so nothing is dropped while :math:`\\sum_k n_k \\le B`, classes smaller than :math:`c` are kept
whole, and the larger ones get :math:`c` rows each (at most :math:`B` rows in all).

:class:`BoundedSample` draws this sample while the rows stream in, in memory bounded by the
budget, not by the data (about 1.5 times the budget): it buffers batches and, once the buffer
holds ``budget / 2`` new rows, keeps the bottom :math:`c` rows of each class under the counts
seen so far (:math:`c` only shrinks as counts grow, so no row of the final sample is ever
dropped early).

Keys from :func:`content_keys` are a hash of each input's bytes (and label) under the seed,
not of its position in the stream, so the sample is the same for any order of the rows and for
any split of them into shards: the bottom-:math:`c` rows of the union are among the union of
the shards' bottom-:math:`c'` rows (:math:`c' \\ge c`), which :func:`bounded_rows` then selects
again given the summed class counts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "BoundedSample",
    "bounded_rows",
    "capped_rows",
    "class_cap",
    "content_keys",
    "position_keys",
    "stratified_holdout",
]

# splitmix64 constants (as signed int64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 values (``>>`` on int64 tensors is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix64(z: Tensor) -> Tensor:
    """The splitmix64 finaliser: every output bit depends on every input bit (wrapping int64)."""
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def _seed_salt(seed: int) -> int:
    return int(_mix64(torch.tensor([seed + _GOLDEN], dtype=torch.int64)))


@functools.lru_cache(maxsize=4)
def _multipliers(seed: int, width: int, device: str) -> Tensor:
    """``width`` random odd int64 multipliers drawn from ``seed`` (on the CPU, then moved)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-(1 << 62), 1 << 62, (width,), generator=g, dtype=torch.int64) * 2 + 1
    return a.to(device)


def content_keys(x: Tensor, y: Tensor | None, seed: int) -> Tensor:
    """A pseudo-random int64 key per row, a hash of the row's bytes (and label) under ``seed``.

    ``h = mix(sum_j bits_j * a_j + y * a_label)`` with random odd multipliers ``a`` drawn from
    ``seed`` and the splitmix64 finaliser ``mix``, in wrapping int64 arithmetic: the same row
    gets the same key in any batch, order or shard; different rows get independent-looking
    keys. Batched (no loop over rows); the columns are summed in chunks of bounded size.

    :param x: ``(B, ...)`` floating point rows (e.g. model inputs)
    :param y: ``(B,)`` integer labels mixed into the key, or ``None``
    :param seed: the seed the multipliers are drawn from
    :return: ``(B,)`` int64 keys on ``x``'s device
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"expected floating point rows, got dtype {x.dtype}")
    flat = x.detach().reshape(len(x), -1).contiguous()
    bits = flat.view(_INT_OF_SIZE[flat.element_size()])
    width = bits.shape[1]
    a = _multipliers(int(seed), width + 1, str(x.device))
    h = torch.zeros(len(x), dtype=torch.int64, device=x.device)
    step = max(1, (1 << 22) // max(len(x), 1))  # at most ~4M int64 products at a time
    for start in range(0, width, step):
        stop = min(start + step, width)
        h += (bits[:, start:stop].long() * a[start:stop]).sum(1)
    if y is not None:
        h += y.to(device=x.device, dtype=torch.int64) * a[width]
    return _mix64(h)


def position_keys(n: int, seed: int, device: str | torch.device = "cpu") -> Tensor:
    """Keys of rows known only by their position ``0..n-1`` (splitmix64 of the position)."""
    pos = torch.arange(1, n + 1, dtype=torch.int64, device=device)
    return _mix64(pos * _GOLDEN + _seed_salt(int(seed)))


def class_cap(counts: Tensor, budget: int | None) -> int | None:
    """The largest ``c`` with ``sum_k min(counts_k, c) <= budget`` (water-filling).

    :param counts: ``(K,)`` rows per class of all the data
    :param budget: the total row budget; ``None``: no bound
    :return: ``c``, or ``None`` when nothing has to be dropped (no budget, or
        ``counts.sum() <= budget``)
    """
    counts = counts.long().cpu()
    if budget is None or int(counts.sum()) <= budget:
        return None
    lo, hi = 0, int(counts.max())  # total(lo) <= budget < total(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(torch.clamp(counts, max=mid).sum()) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def bounded_rows(keys: Tensor, y: Tensor, counts: Tensor, budget: int | None) -> Tensor | None:
    """Indices of the rows to keep: of each class the ``class_cap(counts, budget)`` rows with the
    smallest keys, ordered by key (ties by label), so the result does not depend on the rows'
    order.

    :param keys: ``(N,)`` int64 keys of the rows at hand
    :param y: ``(N,)`` class labels in ``[0, K)``
    :param counts: ``(K,)`` rows per class of all the data the rows were drawn from (at least
        ``bincount(y)``)
    :param budget: total row budget, ``None`` for no bound
    :return: ``(n,)`` indices, or ``None`` when nothing is dropped (then keep every row in its
        order)
    """
    cap = class_cap(counts, budget)
    if cap is None:
        return None
    return capped_rows(keys, y, len(counts), cap)


def capped_rows(keys: Tensor, y: Tensor, num_classes: int, cap: int) -> Tensor:
    """Indices of the ``cap`` rows with the smallest keys of each class (all rows of a smaller
    class), ordered by key (ties by label): :func:`bounded_rows` for a known cap.

    :param keys: ``(N,)`` int64 keys of the rows at hand
    :param y: ``(N,)`` class labels in ``[0, num_classes)``
    """
    by_key = torch.argsort(keys, stable=True)
    order = by_key[torch.argsort(y[by_key], stable=True)]  # class-major, keys ascending
    per_class = torch.bincount(y, minlength=num_classes)
    starts = torch.cumsum(per_class, 0) - per_class
    rank = torch.arange(len(y), device=y.device) - starts[y[order]]
    keep = order[rank < cap]
    return keep[torch.argsort(keys[keep], stable=True)]


class BoundedSample:
    """The :func:`bounded_rows` sample of a stream of row batches, in bounded memory.

    :param num_classes: number of classes :math:`K`
    :param budget: total row budget :math:`B` (``None``: keep every row)
    :param slack: new rows buffered (as a fraction of ``budget``) before the buffer is reduced;
        at most about ``(1 + slack) * budget`` rows are held at once (plus, during a reduction,
        one of the row tensors' new ``budget`` rows)

    ``add(keys, y, rows)`` appends a batch (``rows``: tensors with one row per sample, e.g. each
    layer's activations); :meth:`finish` returns the sample. Held on the tensors' device.
    """

    def __init__(self, num_classes: int, budget: int | None, slack: float = 0.5) -> None:
        if num_classes < 1:
            raise ValueError(f"expected num_classes >= 1, got {num_classes}")
        if budget is not None and budget < 1:
            raise ValueError(f"expected a budget >= 1 or None, got {budget}")
        self.num_classes = num_classes
        self.budget = budget
        self._buffer_limit = None if budget is None else max(1, int(budget * slack))
        self.counts = torch.zeros(num_classes, dtype=torch.long)
        self._parts: list[list[Tensor]] = []
        self._held = 0  # rows held now
        self._reduced = 0  # rows held after the last reduction

    def add(self, keys: Tensor, y: Tensor, rows: Sequence[Tensor]) -> None:
        """Append one batch: ``keys`` and labels ``y`` ``(b,)``, ``rows`` ``[(b, ...), ...]``."""
        if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ValueError(
                f"expected labels in [0, {self.num_classes}), got {int(y.min())}..{int(y.max())}"
            )
        self.counts += torch.bincount(y.cpu(), minlength=self.num_classes)
        self._parts.append([keys, y, *rows])
        self._held += len(y)
        if self._buffer_limit is not None and self._held - self._reduced > self._buffer_limit:
            self._reduce()

    def _reduce(self) -> None:
        keys = torch.cat([p[0] for p in self._parts])
        y = torch.cat([p[1] for p in self._parts])
        keep = bounded_rows(keys, y, self.counts, self.budget)
        if keep is None:  # the data so far fits the budget
            self._reduced = self._held
            return
        # scatter each part's kept rows to their place, one column at a time, freeing each
        # part's column once it is copied: at most (1 + slack) budget rows plus one column's
        # new buffer are held at once
        perm = torch.argsort(keep)
        keep_sorted = keep[perm]
        lengths = torch.tensor([len(p[0]) for p in self._parts], device=keep.device)
        offsets = torch.cumsum(lengths, 0) - lengths
        bounds = torch.searchsorted(keep_sorted, offsets).tolist() + [len(keep)]
        src = [keep_sorted[bounds[i] : bounds[i + 1]] - offsets[i] for i in range(len(lengths))]
        dst = [perm[bounds[i] : bounds[i + 1]] for i in range(len(lengths))]
        parts, self._parts = self._parts, []
        out = []
        for c in range(len(parts[0])):
            first = parts[0][c]
            col = first.new_empty((len(keep), *first.shape[1:]))
            for i, part in enumerate(parts):
                t = part[c]
                col[dst[i].to(col.device)] = t[src[i].to(t.device)]
                part[c] = None  # type: ignore[call-overload]
            out.append(col)
        self._parts = [out]
        self._held = self._reduced = len(keep)

    def finish(self) -> tuple[Tensor, Tensor, list[Tensor]]:
        """The sample: ``(keys, y, rows)``; rows in stream order if nothing was dropped, else
        ordered by key."""
        if not self._parts:
            raise ValueError("expected at least one batch of rows, got none")
        bound = self.budget is not None and int(self.counts.sum()) > self.budget
        if bound and self._held > self._reduced:  # rows came in since the last reduction
            self._reduce()
        cols = [torch.cat(c) if len(c) > 1 else c[0] for c in zip(*self._parts)]
        self._parts = [cols]
        return cols[0], cols[1], cols[2:]


def stratified_holdout(y: Tensor, num_classes: int, fraction: float, generator) -> Tensor:
    """A hold-out mask: a random ``fraction`` (rounded down) of each class's rows, and at least
    one row of every class with three or more rows (so that small classes are represented
    while at least two rows stay to fit on).

    Nothing is held out of a class with one or two rows; the caller decides what to do when
    too few rows are held out in all (see
    :class:`~uniad_plugin.detectors.uniform.UniformDetector`).
    """
    keys = torch.rand(len(y), generator=generator)
    ranks = torch.empty(len(y))
    order = torch.argsort(y * 2.0 + keys)  # class-major, random within class
    counts = torch.bincount(y, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    ranks[order] = (torch.arange(len(y)) - starts[y[order]]).float()
    n_hold = (counts.float() * fraction).floor()
    n_hold = torch.where((n_hold < 1) & (counts >= 3), torch.ones_like(n_hold), n_hold)
    return ranks < n_hold[y]
