"""The common container of every anomaly set: images in a tensor, all labelled ``-1``."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

#: the three anomaly classes of the uniform framework
KINDS: tuple[str, ...] = ("OOD", "AD", "NS")

#: pytorch-ood's label of anomalous (unknown) samples
UNKNOWN_LABEL: int = -1

#: the default value grid of every generator: 8-bit images, values ``k / 255``. Pass the ID
#: data's own grid (``16`` for scikit-learn's digits, ``images / 16``), or ``None`` for
#: continuous values (an explicit opt-in: a pixel counter then separates the set from ID data)
DEFAULT_LEVELS: int = 255

#: appended to the name of every set made with ``levels=None``, so every table labels it
CONTINUOUS_SUFFIX: str = " (continuous)"


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_shape(shape: Any, what: str = "shape") -> tuple[int, int, int]:
    """Validate an image shape ``(C, H, W)`` of positive ints and return it as a tuple."""
    if (
        not isinstance(shape, Sequence)
        or isinstance(shape, str)
        or len(shape) != 3
        or not all(_is_int(s) and s > 0 for s in shape)
    ):
        raise ValueError(f"expected {what} to be (C, H, W) with three positive ints, got {shape!r}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _check_n(n: Any, what: str = "n") -> int:
    if not _is_int(n) or n <= 0:
        raise ValueError(f"expected {what} to be a positive int, got {n!r}")
    return int(n)


def _check_bounds(bounds: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(
            f"expected bounds to be a pair (low, high) of floats, got {bounds!r}"
        ) from None
    if not lo < hi:
        raise ValueError(f"expected bounds (low, high) with low < high, got {bounds!r}")
    return lo, hi


def _check_levels(levels: Any) -> int | None:
    """Validate a value grid: a positive int (values ``k / levels``) or ``None`` (continuous)."""
    if levels is None:
        return None
    if not _is_int(levels) or levels < 1:
        raise ValueError(
            f"expected levels to be a positive int (values k/levels) or None (continuous), "
            f"got {levels!r}"
        )
    return int(levels)


def _check_square_image_set(shape: Any, n: Any, levels: Any) -> tuple[int, int, int | None]:
    """Validate the arguments of a set of square images read from disk: a shape ``(C, S, S)``
    with 1 or 3 channels, ``n`` (``None`` or a positive int) and ``levels``; returns
    ``(C, S, levels)``."""
    c, h, w = _check_shape(shape)
    if c not in (1, 3) or h != w:
        raise ValueError(f"expected a square shape with 1 or 3 channels, got {shape}")
    if n is not None:
        _check_n(n)
    return c, h, _check_levels(levels)


def grid_range(levels: int, bounds: tuple[float, float]) -> tuple[int, int]:
    """The smallest and largest ``k`` with ``k / levels`` inside ``bounds``.

    :raises ValueError: if no grid value lies inside ``bounds``
    """
    lo, hi = bounds
    k_lo, k_hi = math.ceil(lo * levels - 1e-9), math.floor(hi * levels + 1e-9)
    if k_lo > k_hi:
        raise ValueError(
            f"expected bounds {bounds} to contain at least one value k/{levels}, got none"
        )
    return k_lo, k_hi


def to_grid(x: Tensor, levels: int | None, bounds: tuple[float, float]) -> Tensor:
    """Round ``x`` to the nearest value ``k / levels`` and clip it to ``bounds`` (a new tensor).

    The clip keeps the values on the grid: it goes to the grid values nearest inside
    ``bounds``. With ``levels=None`` only the clip to ``bounds`` is applied.
    """
    lo, hi = bounds
    if levels is None:
        return x.clamp(lo, hi)
    k_lo, k_hi = grid_range(levels, (lo, hi))
    return torch.round(x * levels).clamp_(k_lo, k_hi).div_(levels)


def is_on_grid(x: Tensor, levels: int) -> bool:
    """Whether every value of ``x`` is exactly ``k / levels`` for an integer ``k``."""
    return bool(torch.equal(torch.round(x * levels) / levels, x))


def _size(delta: Tensor, norm: str) -> Tensor:
    delta = delta.flatten(1)
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


def round_adversarial(
    adv: Tensor,
    src: Tensor,
    *,
    eps: float,
    norm: str,
    levels: int | None,
    bounds: tuple[float, float],
) -> Tensor:
    """Round adversarials ``adv`` of sources ``src`` onto the grid ``k / levels`` in ``bounds``.

    Nearest rounding, except where it would leave the budget: for ``norm="linf"`` each value is
    held to the grid values within ``eps`` of its source; for ``norm="l2"`` a sample whose
    nearest rounding lies outside the ``eps``-ball is rounded towards its source instead (for a
    source on the grid, never farther from it than ``adv``). ``levels=None``: only the clip.
    """
    lo, hi = bounds
    if levels is None:
        return adv.clamp(lo, hi)
    nearest = to_grid(adv, levels, bounds)
    if norm == "linf":
        k_lo = torch.ceil((src - eps) * levels - 1e-6)
        k_hi = torch.floor((src + eps) * levels + 1e-6)
        held = torch.maximum(torch.minimum(nearest * levels, k_hi), k_lo) / levels
        return to_grid(held, levels, bounds)
    toward = torch.where(adv > src, torch.floor(adv * levels), torch.ceil(adv * levels))
    toward = to_grid(toward / levels, levels, bounds)
    outside = _size(nearest - src, norm) > eps * (1 + 1e-6)
    return torch.where(outside.view(-1, *[1] * (adv.dim() - 1)), toward, nearest)


def grid_name(name: str, levels: int | None) -> str:
    """``name``, with :data:`CONTINUOUS_SUFFIX` appended for a continuous set (``levels=None``)."""
    return name if levels is not None else name + CONTINUOUS_SUFFIX


class AnomalySet(Dataset):
    """A set of anomalous images for a classifier, as a map-style torch dataset.

    Holds a float tensor :attr:`x` of shape :math:`(N, C, H, W)` (on the CPU) and returns
    ``(x[i], -1)``: every sample carries pytorch-ood's label of unknown inputs, so the set can
    be concatenated with ID data and scored with :class:`pytorch_ood.utils.OODMetrics`.

    :param x: images, float tensor of shape :math:`(N, C, H, W)` (``N`` may be 0, e.g. an
        attack that never succeeded)
    :param kind: anomaly class: ``"OOD"`` (natural data from another distribution), ``"AD"``
        (adversarial) or ``"NS"`` (noise)
    :param name: short name, e.g. ``"pgd_linf@0.1"``, ``"gaussian"``, ``"letters"``
    :param info: JSON-serialisable details of how the set was made
    :raises ValueError: on an unknown ``kind``, an empty ``name`` or a badly shaped ``x``
    :raises TypeError: if ``x`` is not a floating-point tensor or ``info`` is not JSON-serialisable
    """

    def __init__(self, x: Tensor, kind: str, name: str, info: dict[str, Any] | None = None):
        if kind not in KINDS:
            raise ValueError(f"expected kind to be one of {KINDS}, got {kind!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"expected name to be a non-empty str, got {name!r}")
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"expected x to be a floating-point torch.Tensor, got {got}")
        if x.dim() != 4 or min(x.shape[1:]) <= 0:
            raise ValueError(
                f"expected x of shape (N, C, H, W) with C, H, W > 0, got {tuple(x.shape)}"
            )
        info = {} if info is None else dict(info)
        try:
            json.dumps(info)
        except (TypeError, ValueError) as e:
            raise TypeError(f"expected info to be JSON-serialisable, got {info!r} ({e})") from None
        self.x: Tensor = x.detach().cpu()
        self.kind: str = kind
        self.name: str = name
        self.info: dict[str, Any] = info

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def grid_levels(self) -> int | None:
        """The value grid of the images (``info["grid_levels"]``): values ``k / levels``,
        ``None`` for continuous values (or a set made without a recorded grid)."""
        return self.info.get("grid_levels")

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.x[index], UNKNOWN_LABEL

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape :math:`(C, H, W)` of one image."""
        c, h, w = self.x.shape[1:]
        return (c, h, w)

    def loader(self, batch_size: int = 128, **kwargs: Any) -> DataLoader:
        """A :class:`~torch.utils.data.DataLoader` over the set (not shuffled by default)."""
        return DataLoader(self, batch_size=batch_size, **kwargs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, name={self.name!r}, n={len(self)}, "
            f"shape={self.shape})"
        )


def collect(
    data: Dataset | DataLoader,
    *,
    batch_size: int = 256,
    max_samples: int | None = None,
    what: str = "data",
) -> tuple[Tensor, Tensor]:
    """Gather ``(x, y)`` samples of a dataset or loader into two CPU tensors, in order.

    :param data: a map-style dataset or a loader yielding ``(x, y)`` batches
    :param batch_size: batch size of the loader built around a dataset
    :param max_samples: stop after this many samples (``None``: all)
    :param what: name of the argument, used in error messages
    :return: images as float32 of shape :math:`(N, C, H, W)` and labels as int64 of shape
        :math:`(N,)`
    :raises TypeError: if ``data`` is neither a dataset nor a loader or yields no ``(x, y)``
    :raises ValueError: if it holds no samples or the images are not 4-D
    """
    if max_samples is not None:
        _check_n(max_samples, "max_samples")
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        stop = None if max_samples is None else max_samples
        xs, ys = [data.tensors[0][:stop]], [data.tensors[1][:stop]]
    elif isinstance(data, (Dataset, DataLoader)):
        loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
        xs, ys, count = [], [], 0
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError(
                    f"expected {what} to yield (x, y) pairs, got {type(batch).__name__}"
                )
            x, y = batch[0], torch.as_tensor(batch[1])
            xs.append(x)
            ys.append(y)
            count += len(x)
            if max_samples is not None and count >= max_samples:
                break
    else:
        raise TypeError(
            f"expected {what} to be a torch Dataset or DataLoader, got {type(data).__name__}"
        )
    if not xs or sum(len(x) for x in xs) == 0:
        raise ValueError(f"expected {what} to hold at least one sample, got none")
    x = torch.cat([torch.as_tensor(x) for x in xs]).detach().cpu().float()
    y = torch.cat(ys).detach().cpu().long()
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    if x.dim() != 4:
        raise ValueError(f"expected {what} images of shape (N, C, H, W), got {tuple(x.shape)}")
    return x, y
