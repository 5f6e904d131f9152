"""Noise sets (kind ``"NS"``): inputs generated from meaningless data.

Why not :class:`pytorch_ood.dataset.img.GaussianNoise` / ``UniformNoise``: they draw a new
image on *every* ``__getitem__`` from one shared numpy generator, so the same index gives a
different image on every epoch and the images depend on the order in which samples are read
(shuffling, number of workers). They also return 8-bit PIL images in ``[0, 255]`` that a
transform must turn back into tensors. The functions here draw the whole set once, as one
tensor, from a :class:`torch.Generator` seeded with ``seed``: the same call always gives the
same images, in the value range (``bounds``) the classifier expects.

Every set lies on a value grid (``levels``, default :data:`~.base.DEFAULT_LEVELS` = 255:
8-bit values ``k / 255``), like the ID images it is compared with: values are rounded to the
nearest ``k / levels`` and clipped to ``bounds``. Continuous noise (``levels=None``) is an
explicit opt-in; its name ends in ``" (continuous)"``, and counting off-grid pixels detects it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from uniad_plugin._utils import seeded_generator
from uniad_plugin.anomalies.base import (
    DEFAULT_LEVELS,
    AnomalySet,
    _check_bounds,
    _check_levels,
    _check_n,
    _check_shape,
    collect,
    grid_name,
    grid_range,
    to_grid,
)

__all__ = ["NoiseSet", "gaussian_noise", "uniform_noise", "salt_and_pepper", "noisy_id"]


class NoiseSet(AnomalySet):
    """Images generated from meaningless data (kind ``"NS"``), all labelled ``-1``.

    :param x: images of shape :math:`(N, C, H, W)`
    :param name: short name (``"gaussian"``, ``"uniform"``, ``"salt_pepper"``, ``"noisy_id"``)
    :param info: JSON-serialisable details
    """

    def __init__(self, x: Tensor, name: str, info: dict[str, Any] | None = None):
        super().__init__(x, "NS", name, info)


def _finish(x: Tensor, name: str, info: dict[str, Any], levels: int | None) -> NoiseSet:
    """Round onto the grid, clip to ``info["bounds"]``, record the grid, label a continuous set."""
    x = to_grid(x, levels, tuple(info["bounds"]))
    return NoiseSet(x.contiguous(), grid_name(name, levels), info | {"grid_levels": levels})


def gaussian_noise(
    n: int,
    shape: tuple[int, int, int],
    *,
    seed: int = 0,
    mean: float = 0.5,
    std: float = 0.5,
    bounds: tuple[float, float] = (0.0, 1.0),
    levels: int | None = DEFAULT_LEVELS,
) -> NoiseSet:
    """``n`` images of i.i.d. Gaussian pixels :math:`\\mathcal{N}(\\text{mean}, \\text{std}^2)`,
    clipped to ``bounds``.

    :param n: number of images
    :param shape: image shape :math:`(C, H, W)`
    :param seed: seed of the generator; the same arguments always give the same images
    :param mean: mean of every pixel, in the units of ``bounds``
    :param std: standard deviation of every pixel (``>= 0``)
    :param bounds: value range of the classifier's inputs
    :param levels: value grid: values ``k / levels`` (default 255, 8-bit), ``None`` for
        continuous values (the name gets ``" (continuous)"``)
    :raises ValueError: on a non-positive ``n``, a bad ``shape``, ``std < 0`` or bad ``bounds``
    """
    n, shape, (lo, hi) = _check_n(n), _check_shape(shape), _check_bounds(bounds)
    levels = _check_levels(levels)
    if not std >= 0:
        raise ValueError(f"expected std >= 0, got {std!r}")
    z = torch.randn((n, *shape), generator=seeded_generator(seed))
    x = mean + std * z
    info = {"n": n, "shape": list(shape), "seed": seed, "mean": float(mean), "std": float(std)}
    info["bounds"] = [lo, hi]
    return _finish(x, "gaussian", info, levels)


def uniform_noise(
    n: int,
    shape: tuple[int, int, int],
    *,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
    levels: int | None = DEFAULT_LEVELS,
) -> NoiseSet:
    """``n`` images of i.i.d. pixels uniform on ``bounds`` (on the grid: uniform over the
    grid values ``k / levels`` inside ``bounds``).

    :param n: number of images
    :param shape: image shape :math:`(C, H, W)`
    :param seed: seed of the generator; the same arguments always give the same images
    :param bounds: value range of the classifier's inputs
    :param levels: value grid: values ``k / levels`` (default 255, 8-bit), ``None`` for
        continuous values (the name gets ``" (continuous)"``)
    :raises ValueError: on a non-positive ``n``, a bad ``shape`` or bad ``bounds``
    """
    n, shape, (lo, hi) = _check_n(n), _check_shape(shape), _check_bounds(bounds)
    levels = _check_levels(levels)
    gen = seeded_generator(seed)
    if levels is None:
        x = lo + (hi - lo) * torch.rand((n, *shape), generator=gen)
    else:
        k_lo, k_hi = grid_range(levels, (lo, hi))
        x = torch.randint(k_lo, k_hi + 1, (n, *shape), generator=gen).float() / levels
    info = {"n": n, "shape": list(shape), "seed": seed, "bounds": [lo, hi]}
    return _finish(x, "uniform", info, levels)


def salt_and_pepper(
    n: int,
    shape: tuple[int, int, int],
    *,
    seed: int = 0,
    amount: float = 0.5,
    bounds: tuple[float, float] = (0.0, 1.0),
    background: float | None = None,
    levels: int | None = DEFAULT_LEVELS,
) -> NoiseSet:
    """``n`` images of salt-and-pepper noise on a constant background.

    Each pixel *location* independently becomes salt (``bounds[1]``, all channels) with
    probability ``amount / 2``, pepper (``bounds[0]``) with probability ``amount / 2``, and
    keeps the background value otherwise.

    :param n: number of images
    :param shape: image shape :math:`(C, H, W)`
    :param seed: seed of the generator; the same arguments always give the same images
    :param amount: fraction of noisy pixels, in :math:`[0, 1]`
    :param bounds: value range of the classifier's inputs
    :param background: value of the untouched pixels (default: the middle of ``bounds``);
        rounded onto the grid like every other value (0.5 becomes 128/255)
    :param levels: value grid: values ``k / levels`` (default 255, 8-bit), ``None`` for
        continuous values (the name gets ``" (continuous)"``)
    :raises ValueError: on a non-positive ``n``, a bad ``shape``, ``amount`` outside [0, 1],
        bad ``bounds`` or a ``background`` outside ``bounds``
    """
    n, shape, (lo, hi) = _check_n(n), _check_shape(shape), _check_bounds(bounds)
    levels = _check_levels(levels)
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"expected amount in [0, 1], got {amount!r}")
    background = (lo + hi) / 2 if background is None else float(background)
    if not lo <= background <= hi:
        raise ValueError(f"expected background within bounds {(lo, hi)}, got {background!r}")
    c, h, w = shape
    u = torch.rand((n, 1, h, w), generator=seeded_generator(seed)).expand(n, c, h, w)
    x = torch.full((n, c, h, w), background)
    x = torch.where(u < amount / 2, lo, torch.where(u < amount, hi, x))
    info = {"n": n, "shape": list(shape), "seed": seed, "amount": float(amount)}
    background = float(to_grid(torch.tensor(background), levels, (lo, hi)))
    info |= {"bounds": [lo, hi], "background": background}
    return _finish(x, "salt_pepper", info, levels)


def noisy_id(
    data: Dataset | DataLoader,
    *,
    sigma: float = 0.5,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
    max_samples: int | None = None,
    levels: int | None = DEFAULT_LEVELS,
) -> NoiseSet:
    """ID images under heavy additive Gaussian noise, clipped to ``bounds``.

    :param data: ID samples, a dataset or loader yielding ``(x, y)`` (labels are ignored);
        read in order, so use an unshuffled loader for reproducible results
    :param sigma: standard deviation of the noise (``> 0``), in the units of ``bounds``
    :param seed: seed of the generator; the same arguments always give the same images
    :param bounds: value range of the classifier's inputs
    :param levels: value grid: values ``k / levels`` (default 255, 8-bit), ``None`` for
        continuous values (the name gets ``" (continuous)"``)
    :param max_samples: use only the first ``max_samples`` images of ``data``
    :raises ValueError: on ``sigma <= 0``, bad ``bounds`` or empty ``data``
    :raises TypeError: if ``data`` is not a dataset or loader of ``(x, y)`` pairs
    """
    lo, hi = _check_bounds(bounds)
    levels = _check_levels(levels)
    if not sigma > 0:
        raise ValueError(f"expected sigma > 0, got {sigma!r}")
    x, _ = collect(data, max_samples=max_samples, what="data")
    z = torch.randn(x.shape, generator=seeded_generator(seed))
    x = x + sigma * z
    info = {"n": len(x), "shape": list(x.shape[1:]), "seed": seed, "sigma": float(sigma)}
    info["bounds"] = [lo, hi]
    return _finish(x, "noisy_id", info, levels)
