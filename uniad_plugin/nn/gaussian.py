"""A shrunk Gaussian (mean and precision) fitted in closed form, for Mahalanobis scoring."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ledoit_wolf", "shrunk_gaussian"]


def ledoit_wolf(z: Tensor) -> tuple[Tensor, float]:
    """Ledoit-Wolf shrunk covariance of ``z`` (N, P), in float64: ``(cov, shrinkage)``."""
    from sklearn.covariance import ledoit_wolf as sk_ledoit_wolf

    cov, shrink = sk_ledoit_wolf(z.double().cpu().numpy(), assume_centered=False)
    return torch.from_numpy(cov), float(shrink)


def shrunk_gaussian(z: Tensor, shrinkage: float | None = None) -> tuple[Tensor, Tensor, float]:
    """Mean, precision (float64) and shrinkage of a shrunk Gaussian fitted on ``z`` (N, P).

    :param shrinkage: weight of the scaled identity in ``(1 - s) * cov + s * mean_eig * I``;
        ``None`` for the Ledoit-Wolf estimate
    """
    if shrinkage is None:
        cov, shrink = ledoit_wolf(z)
    else:
        shrink = float(shrinkage)
        zc = z - z.mean(0)
        emp = zc.T @ zc / len(zc)
        mu = torch.trace(emp) / emp.shape[0]
        cov = (1 - shrink) * emp + shrink * mu * torch.eye(emp.shape[0], dtype=emp.dtype)
    cov = cov.double() + 1e-9 * torch.eye(cov.shape[0], dtype=torch.float64)
    return z.double().mean(0), torch.linalg.pinv(cov, hermitian=True), shrink
