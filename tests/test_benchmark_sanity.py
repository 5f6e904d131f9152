"""The model-free sanity baselines (Pixel*) and the 5%-FPR detection rate."""

import math

import pytest
import torch
from pytorch_ood.api import RequiresFittingException
from torch.utils.data import DataLoader, TensorDataset

from uniad_plugin.benchmark.evaluation import detection_rate, threshold_at_fpr
from uniad_plugin.benchmark.sanity import PixelCount, PixelGrid, PixelKNN


def _grid_images(n: int, levels: int = 255, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, levels + 1, (n, 1, 8, 8), generator=g).float() / levels
    x[:, :, :2] = 0  # a black border, as in MNIST
    return x


def _loader(x: torch.Tensor, labels: torch.Tensor | None = None) -> DataLoader:
    y = labels if labels is not None else torch.zeros(len(x), dtype=torch.long)
    return DataLoader(TensorDataset(x, y), batch_size=7)


def test_pixel_grid_is_zero_on_the_grid_and_counts_off_grid_pixels():
    x = _grid_images(20)
    assert torch.equal(PixelGrid(255).predict(x), torch.zeros(20, dtype=torch.float64))
    off = x.clone()
    off[:, 0, 0, :4] = 0.5 / 255  # 4 of 64 pixels halfway between two grid values
    assert torch.allclose(PixelGrid(255).predict(off), torch.full((20,), 4 / 64).double())
    # on the digits grid (1/16) the 8-bit values are mostly off-grid
    assert float(PixelGrid(16).predict(_grid_images(20)).mean()) > 0.5


def test_pixel_count_is_two_sided_and_fitted_on_known_samples_only():
    x = _grid_images(50)
    det = PixelCount().fit(_loader(x))
    more = x.clone()
    more[:, :, :2] = 1.0  # ink on the border
    less = torch.zeros_like(x)
    s_id, s_more, s_less = det.predict(x), det.predict(more), det.predict(less)
    assert float(s_more.min()) > float(s_id.max())
    assert float(s_less.min()) > float(s_id.max())
    # anomalies (label < 0) in the fit loader are ignored
    labels = torch.cat([torch.zeros(50), -torch.ones(50)]).long()
    det2 = PixelCount().fit(_loader(torch.cat([x, less]), labels))
    assert torch.allclose(det2.mean, det.mean)


def test_pixel_knn_distance_to_nearest_reference_and_bounded_sample():
    x = _grid_images(30)
    det = PixelKNN(max_samples=10, seed=1, chunk=3).fit(_loader(x))
    assert det.reference.shape == (10, 64)
    ref_imgs = det.reference.reshape(-1, 1, 8, 8)
    assert torch.allclose(det.predict(ref_imgs), torch.zeros(10, dtype=torch.float64), atol=1e-3)
    q = torch.rand(5, 1, 8, 8)
    want = torch.cdist(q.reshape(5, -1), det.reference).min(dim=1).values.double()
    assert torch.allclose(det.predict(q), want, atol=1e-4)
    # the sample is reproducible by its seed and differs with another seed
    again = PixelKNN(max_samples=10, seed=1).fit(_loader(x))
    assert torch.equal(again.reference, det.reference)
    other = PixelKNN(max_samples=10, seed=2).fit(_loader(x))
    assert not torch.equal(other.reference, det.reference)


def test_sanity_detectors_reject_bad_input_and_unfitted_use():
    with pytest.raises(ValueError, match="levels"):
        PixelGrid(0)
    with pytest.raises(ValueError, match="max_samples"):
        PixelKNN(max_samples=0)
    with pytest.raises(TypeError, match="floating point"):
        PixelGrid().predict(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(RequiresFittingException):
        PixelCount().predict(torch.zeros(2, 1, 8, 8))
    with pytest.raises(RequiresFittingException):
        PixelKNN().predict(torch.zeros(2, 1, 8, 8))
    det = PixelKNN().fit(_loader(_grid_images(5)))
    with pytest.raises(ValueError, match="64 values"):
        det.predict(torch.zeros(2, 1, 4, 4))


def test_threshold_at_fpr_flags_at_most_that_share_of_held_out_id():
    val = torch.arange(100).double()
    thr = threshold_at_fpr(val, 0.05)
    assert float((val > thr).double().mean()) <= 0.05
    assert float((val >= thr).double().mean()) > 0.05 - 1e-9
    assert detection_rate(torch.tensor([thr - 1, thr + 1, thr + 2, thr]), thr) == 0.5
    assert math.isnan(detection_rate(torch.empty(0), thr))
    with pytest.raises(ValueError, match="fpr"):
        threshold_at_fpr(val, 1.5)
    with pytest.raises(ValueError, match="finite"):
        threshold_at_fpr(torch.tensor([1.0, float("nan")]), 0.05)
