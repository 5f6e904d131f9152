"""Per-class hyperspheres on one layer's activations, fitted in closed form.

For every class :math:`k` a sphere with centre :math:`c_k` and radius :math:`R_k` sits on
:math:`\\phi(z) = (z - m) W`, where :math:`W` is the whitening map of the layer: the inverse
square root of the tied within-class covariance of the ID activations (shrunk towards a
multiple of the identity, so that dead or constant features stay finite), :math:`m` their mean.
In the whitened space a sphere is a Mahalanobis ball of the class.

The centre is the class's mean of :math:`\\phi(z)` (the minimiser of the one-class Deep SVDD
objective for a fixed :math:`\\phi`) and :math:`R_k^2` the :math:`(1-\\nu)`-quantile of the
class's squared distances, the minimiser of the soft-boundary objective
:math:`R^2 + \\frac{1}{\\nu n}\\sum_i \\max(0, d_i^2 - R^2)` for that centre: a fraction
:math:`\\nu` of the class's samples lie outside its sphere. Nothing is trained and nothing is
drawn: the same data give the same spheres.

With ``whiten=False`` the spheres sit on the raw activations (:math:`\\phi` the identity); the
detector uses that for the softmax layer, whose probability vectors already share one scale.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ClassSpheres", "class_quantile"]

#: rows per chunk of the fitting passes (bounds the temporary memory)
_CHUNK = 8192


class ClassSpheres(nn.Module):
    """``K`` hyperspheres on one layer, scored as one batched operation.

    :param num_classes: number of classes :math:`K`
    :param in_dim: the layer's feature dimension :math:`D`
    :param whiten: spheres in the whitened space (``True``) or on the raw activations
    """

    # the buffers (declared for type checkers: ``nn.Module.__getattr__`` is untyped)
    mean: Tensor
    proj: Tensor
    center: Tensor
    radius2: Tensor

    def __init__(self, num_classes: int, in_dim: int, *, whiten: bool = True) -> None:
        super().__init__()
        if num_classes < 1 or in_dim < 1:
            raise ValueError(
                f"expected positive num_classes and in_dim, got {num_classes} and {in_dim}"
            )
        d = in_dim if whiten else 0  # no (D, D) matrix to store for raw spheres
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("proj", torch.eye(d))
        self.register_buffer("center", torch.zeros(num_classes, in_dim))
        self.register_buffer("radius2", torch.ones(num_classes))

    @property
    def num_classes(self) -> int:
        return self.center.shape[0]

    @property
    def in_dim(self) -> int:
        return self.center.shape[1]

    @property
    def whitened(self) -> bool:
        return self.proj.numel() > 0

    def embed(self, z: Tensor) -> Tensor:
        """:math:`\\phi(z)` of ``(B, D)`` activations."""
        return (z - self.mean) @ self.proj if self.whitened else z

    @torch.no_grad()
    def fit(self, z: Tensor, y: Tensor, nu: float = 0.1, shrinkage: float = 1e-3) -> ClassSpheres:
        """Fit the spheres on ``(N, D)`` ID activations ``z`` with labels ``y`` in ``[0, K)``.

        Every class needs at least one row. Statistics are accumulated in float64.

        :param nu: the fraction of each class's rows allowed outside its sphere, in (0, 1]
        :param shrinkage: the covariance is shrunk towards ``shrinkage`` times its mean
            eigenvalue times the identity before the inverse square root
        :return: self
        """
        K = self.num_classes
        if z.dim() != 2 or z.shape[1] != self.in_dim or len(z) != len(y):
            raise ValueError(
                f"expected activations of shape (N, {self.in_dim}) and N labels, got "
                f"{tuple(z.shape)} and {len(y)}"
            )
        counts = torch.bincount(y, minlength=K)
        if (counts == 0).any():
            raise ValueError(
                f"expected rows of every class, got none of {torch.nonzero(counts == 0).flatten().tolist()}"
            )
        class_mean = _class_means(z, y, K)
        if self.whitened:
            cov = torch.zeros(self.in_dim, self.in_dim, dtype=torch.float64, device=z.device)
            for c in torch.split(torch.arange(len(z), device=z.device), _CHUNK):
                centred = z[c].double() - class_mean[y[c]]
                cov += centred.T @ centred
            cov /= max(len(z) - K, 1)
            evals, evecs = torch.linalg.eigh(cov)
            evals = evals.clamp_min(0)
            evals = evals + shrinkage * evals.mean() + 1e-12
            self.mean.copy_(z.double().mean(0).to(self.mean.dtype))
            self.proj.copy_((evecs * evals.rsqrt()) @ evecs.T)
            # the class means in the whitened space: phi is affine
            self.center.copy_(((class_mean - self.mean.double()) @ self.proj.double()).float())
        else:
            self.center.copy_(class_mean.float())
        d2 = torch.cat(
            [
                self.squared_distances(z[c], y[c, None]).squeeze(1)
                for c in torch.split(torch.arange(len(z), device=z.device), _CHUNK)
            ]
        )
        self.radius2.copy_(class_quantile(d2, y, K, 1 - nu).clamp_min(1e-12))
        return self

    def squared_distances(self, z: Tensor, classes: Tensor) -> Tensor:
        """``(B, m)`` squared distances of :math:`\\phi(z_i)` to the centres of ``classes[i]``
        (``(B, m)`` class indices). Differentiable with respect to ``z``."""
        h = self.embed(z)
        return (h.unsqueeze(1) - self.center[classes]).pow(2).sum(dim=2)

    def ratios(self, z: Tensor, classes: Tensor) -> Tensor:
        """``(B, m)`` scores :math:`d^2 / R^2` of every row under the spheres of its
        ``classes`` (``(B, m)`` class indices); larger is farther outside."""
        return self.squared_distances(z, classes) / self.radius2[classes]


def _class_means(z: Tensor, y: Tensor, num_classes: int) -> Tensor:
    total = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, device=z.device)
    for c in torch.split(torch.arange(len(z), device=z.device), _CHUNK):
        total.index_add_(0, y[c], z[c].double())
    return total / torch.bincount(y, minlength=num_classes).clamp_min(1)[:, None].double()


def class_quantile(values: Tensor, labels: Tensor, num_classes: int, q: float) -> Tensor:
    """Per-class ``q``-quantile (nearest rank) of ``values``, batched: one sort, no class loop."""
    order = torch.argsort(values)
    by_class = torch.argsort(labels[order], stable=True)
    sorted_vals = values[order][by_class]
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.clamp(torch.ceil(q * counts.double()).long() - 1, min=0)
    return sorted_vals[starts + torch.minimum(rank, (counts - 1).clamp_min(0))]
