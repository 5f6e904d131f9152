"""Model-free sanity baselines: what a pixel counter sees.

A detector result means something only if a baseline that never looks at the model does worse.
These three detectors score raw pixels; :class:`~uniad_plugin.benchmark.UnifiedBenchmark` runs
them beside every evaluated detector, and a set that one of them separates from the ID test set
(AUROC >= :data:`SEPARABLE_AUROC`) is marked in the tables, the results files and the docs.

* :class:`PixelGrid`: the share of pixels off the ID data's value grid (``k / levels``). Valid
  anomaly sets live on the grid, so its AUROC should be about 0.5.
* :class:`PixelCount`: how far the number of non-zero pixels lies from the ID mean, in ID
  standard deviations (two-sided: more ink and less ink both count). L-inf and L2 attacks that
  touch the black background of MNIST-like images are seen by it.
* :class:`PixelKNN`: the Euclidean distance on raw pixels to the nearest of a seeded sample of
  ID training images.

Their names start with ``Pixel`` so that anyone can find them in a table.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_ood.api import Detector, DetectorInfo, RequiresFittingException, Task
from torch import Tensor
from torch.utils.data import DataLoader

__all__ = ["SANITY_DETECTORS", "SEPARABLE_AUROC", "PixelCount", "PixelGrid", "PixelKNN"]

#: a set that a model-free baseline separates with at least this AUROC is marked
SEPARABLE_AUROC = 0.9

_INFO = DetectorInfo(tasks={Task.CLASSIFICATION}, ai_coded=True)


def _flat(x: Any, what: str = "x") -> Tensor:
    if not isinstance(x, Tensor) or not torch.is_floating_point(x):
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"expected {what} to be a floating point tensor of images, got {got}")
    if x.dim() < 2:
        raise ValueError(f"expected {what} of shape (B, ...), got {tuple(x.shape)}")
    return x.flatten(1)


def _batches(loader: DataLoader) -> Any:
    for batch in loader:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        if y is not None:
            known = torch.as_tensor(y) >= 0
            x = x[known.to(x.device)]
        yield _flat(x, "the loader's inputs")


class PixelGrid(Detector):
    """Share of pixels whose value is not a multiple of ``1 / levels``.

    .. math:: s(x) = \\frac{1}{D} \\sum_{j=1}^{D} [\\, |\\,l x_j - \\mathrm{round}(l x_j)| > \\tau \\,]

    with :math:`l` = ``levels`` and a tolerance :math:`\\tau` = ``tol`` for float rounding.

    :param levels: the ID data's grid (255 for 8-bit images, 16 for scikit-learn's digits)
    :param tol: tolerance in grid units
    """

    info = _INFO
    requires_fit = False

    def __init__(self, levels: int = 255, tol: float = 1e-3) -> None:
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
            raise ValueError(f"expected levels to be a positive int, got {levels!r}")
        if not 0 < tol < 0.5:
            raise ValueError(f"expected 0 < tol < 0.5, got {tol!r}")
        self.levels = levels
        self.tol = tol

    def predict(self, x: Tensor) -> Tensor:
        v = _flat(x).double() * self.levels
        return ((v - v.round()).abs() > self.tol).double().mean(dim=1)


class PixelCount(Detector):
    """Distance of the number of non-zero pixels from the ID mean, in ID standard deviations.

    .. math:: s(x) = \\frac{|\\, n(x) - \\mu \\,|}{\\sigma}, \\qquad
        n(x) = \\sum_j [\\, x_j \\neq 0 \\,]

    with :math:`\\mu, \\sigma` the mean and standard deviation of :math:`n` on the ID training
    data (samples with labels < 0 are ignored).
    """

    info = _INFO
    requires_fit = True

    def __init__(self) -> None:
        self.mean: Tensor | None = None
        self.std: Tensor | None = None

    def fit(self, data_loader: DataLoader) -> PixelCount:
        counts = torch.cat([(x != 0).sum(dim=1).double().cpu() for x in _batches(data_loader)])
        if len(counts) < 2:
            raise ValueError(f"expected at least 2 ID samples to fit, got {len(counts)}")
        self.mean = counts.mean()
        self.std = counts.std().clamp_min(1.0)
        return self

    def predict(self, x: Tensor) -> Tensor:
        if self.mean is None or self.std is None:
            raise RequiresFittingException()
        n = (_flat(x) != 0).sum(dim=1).double().cpu()
        # the statistics may have been moved with the detector (``to(device)``)
        return ((n - self.mean.cpu()) / self.std.cpu()).abs()


class PixelKNN(Detector):
    """Euclidean distance on raw pixels to the nearest ID training image.

    .. math:: s(x) = \\min_{i \\in S} \\lVert x - x_i \\rVert_2

    over a seeded random sample :math:`S` of at most ``max_samples`` ID training images
    (memory bounded by that sample, whatever the size of the training set).

    :param max_samples: size of the reference sample
    :param seed: seed of the sample
    :param chunk: reference images compared per step (bounds the distance matrix)
    """

    info = _INFO
    requires_fit = True

    def __init__(self, max_samples: int = 10_000, seed: int = 0, chunk: int = 4096) -> None:
        for name, value in (("max_samples", max_samples), ("chunk", chunk)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"expected {name} to be a positive int, got {value!r}")
        self.max_samples = max_samples
        self.seed = seed
        self.chunk = chunk
        self.reference: Tensor | None = None

    def fit(self, data_loader: DataLoader) -> PixelKNN:
        # reservoir over the stream: keep a uniform seeded sample of at most max_samples rows
        g = torch.Generator().manual_seed(self.seed)
        kept: Tensor | None = None
        keys: Tensor | None = None
        for x in _batches(data_loader):
            x = x.detach().cpu().float()
            k = torch.rand(len(x), generator=g)
            kept = x if kept is None else torch.cat([kept, x])
            keys = k if keys is None else torch.cat([keys, k])
            if len(kept) > self.max_samples:
                top = keys.topk(self.max_samples).indices
                kept, keys = kept[top], keys[top]
        if kept is None or len(kept) == 0:
            raise ValueError("expected ID samples with labels >= 0 to fit, got none")
        self.reference = kept
        return self

    def predict(self, x: Tensor) -> Tensor:
        if self.reference is None:
            raise RequiresFittingException()
        q = _flat(x).float()
        ref = self.reference.to(q.device)
        if q.shape[1] != ref.shape[1]:
            raise ValueError(
                f"expected inputs with {ref.shape[1]} values as seen at fit time, got {q.shape[1]}"
            )
        best = torch.full((len(q),), float("inf"), device=q.device)
        for start in range(0, len(ref), self.chunk):
            d = torch.cdist(q, ref[start : start + self.chunk])
            best = torch.minimum(best, d.min(dim=1).values)
        return best.double().cpu()


#: the sanity detectors every evaluation runs, by name
SANITY_DETECTORS: dict[str, type[Detector]] = {
    "PixelGrid": PixelGrid,
    "PixelCount": PixelCount,
    "PixelKNN": PixelKNN,
}
