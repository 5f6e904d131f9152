"""Per-class soft-boundary Deep SVDD, all classes trained as one batched model.

The Deep SVDD baseline of the A3 and R2-AD2 protocol benchmarks (a trained encoder per class).
:class:`~uniad_plugin.detectors.uniform.UniformDetector` fits its spheres in closed form
instead (:mod:`uniad_plugin.nn.spheres`).

For every class :math:`k` an encoder :math:`\\phi_k` (a bias-free MLP, as Deep SVDD requires to
rule out the trivial constant solution), a centre :math:`c_k` and a radius :math:`R_k` are fitted
with the soft-boundary objective of Ruff et al. (ICML 2018):

.. math::

    \\min_{R_k, \\phi_k} \\; R_k^2 + \\frac{1}{\\nu n_k} \\sum_{i: y_i = k}
    \\max\\left(0, \\lVert \\phi_k(z_i) - c_k \\rVert^2 - R_k^2\\right) + \\text{weight decay}

The :math:`K` encoders are stored as weight tensors with a leading class axis, so one
``torch.bmm`` trains all classes at once on a class-balanced minibatch of shape
``(K, m, D)``, and scoring groups the samples by class
(:class:`~uniad_plugin.nn.grouping.ClassGroups`) to apply each class's weights with one
``bmm``. As in Ruff et al.'s reference code, :math:`R_k` is not a gradient parameter and is 0
during ``warmup_epochs`` epochs. Our choice for its update: at the end of the last warm-up
epoch and of every later one, :math:`R_k^2` is set to the :math:`(1-\\nu)`-quantile (nearest
rank) of the squared distances of all training samples of class :math:`k`, recomputed with the
encoder as it is after that epoch (the optimum for fixed :math:`\\phi_k`). Ruff et al.'s
reference code instead sets :math:`R` after every minibatch, from that minibatch's distances,
once the warm-up epochs have passed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from uniad_plugin.nn.grouping import ClassGroups
from uniad_plugin.nn.spheres import class_quantile


class BatchedSVDD(nn.Module):
    """``K`` bias-free MLP encoders with centres and radii, evaluated as one module.

    :param n_classes: number of classes :math:`K`
    :param in_dim: input dimension :math:`D`
    :param hidden: widths of the hidden layers (LeakyReLU between layers)
    :param rep_dim: dimension of the representation space

    Inputs are normalised before the encoders with ``(z - in_mean) @ in_proj``; :func:`fit_svdd`
    sets ``in_proj`` to a diagonal standardisation or to a full whitening matrix.

    With ``encoder=False`` the spheres sit on the raw inputs: no encoder, no normalisation
    (``hidden`` and ``rep_dim`` are ignored, the representation is the input itself), the
    centres are the class means and the radii the soft boundary's optimum for them
    (:func:`fit_svdd`, nothing trained).
    """

    # the buffers (declared for type checkers: ``nn.Module.__getattr__`` is untyped)
    in_mean: Tensor
    in_proj: Tensor
    center: Tensor
    radius2: Tensor

    def __init__(
        self,
        n_classes: int,
        in_dim: int,
        hidden: Sequence[int] = (64,),
        rep_dim: int = 32,
        *,
        encoder: bool = True,
    ) -> None:
        super().__init__()
        if not encoder:
            hidden, rep_dim = (), in_dim
        if n_classes < 1 or in_dim < 1 or rep_dim < 1:
            raise ValueError(
                f"expected positive n_classes, in_dim and rep_dim, got {n_classes}, {in_dim}, "
                f"{rep_dim}"
            )
        self._n_classes, self._in_dim = n_classes, in_dim
        dims = [in_dim, *hidden, rep_dim] if encoder else [in_dim]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(n_classes, d_in, d_out)) for d_in, d_out in zip(dims, dims[1:])
        )
        # an encoder-free sphere is never normalised: no (D, D) matrix to store
        self.register_buffer("in_mean", torch.zeros(in_dim if encoder else 0))
        self.register_buffer("in_proj", torch.eye(in_dim if encoder else 0))
        self.register_buffer("center", torch.zeros(n_classes, rep_dim))
        self.register_buffer("radius2", torch.zeros(n_classes))

    @property
    def n_classes(self) -> int:
        return self._n_classes

    @property
    def in_dim(self) -> int:
        return self._in_dim

    @property
    def has_encoder(self) -> bool:
        """False for spheres on the raw inputs (``encoder=False``)."""
        return len(self.weights) > 0

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Kaiming-uniform initialisation (as ``nn.Linear``), drawn from ``generator``."""
        with torch.no_grad():
            for w in self.weights:
                bound = 1.0 / math.sqrt(w.shape[1])
                w.copy_(torch.rand(w.shape, generator=generator) * 2 * bound - bound)

    def _standardise(self, z: Tensor) -> Tensor:
        if not self.has_encoder:
            return z
        return (z - self.in_mean) @ self.in_proj

    def folded_input_layer(self) -> tuple[Tensor, Tensor]:
        """The normalisation folded into the first encoder layer, for scoring.

        ``(z - in_mean) @ in_proj @ W_k = z @ W'_k - b_k`` with ``W'_k = in_proj @ W_k``
        ``(K, D, H)`` and ``b_k = in_mean @ W'_k`` ``(K, H)``: one ``bmm`` instead of a
        subtraction, a ``(D, D)`` product and a ``bmm``. Computed without gradients and cached
        until the weights or the normalisation change (in place or by a move).
        """
        if not self.has_encoder:
            raise ValueError("an encoder-free sphere has no input layer to fold")
        tensors = (self.weights[0], self.in_mean, self.in_proj)
        key = tuple((id(t), t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)
        cached = getattr(self, "_folded", None)
        if cached is None or cached[0] != key:
            # normal tensors even under inference mode (the cache serves gradient passes too)
            with torch.inference_mode(False), torch.no_grad():
                w = torch.matmul(self.in_proj, self.weights[0])
                b = torch.einsum("d,kdh->kh", self.in_mean, w)
            cached = (key, w, b)
            self._folded = cached
        return cached[1], cached[2]

    def embed_grouped(
        self, z: Tensor, *, standardised: bool = False, groups: ClassGroups | None = None
    ) -> Tensor:
        """Embed class-grouped inputs ``(K, m, D)`` (or ``(G, m, D)``, see ``groups``) with
        each class's own encoder -> ``(K, m, R)`` (``(G, m, R)``).

        :param standardised: ``z`` is already normalised (``(z - in_mean) @ in_proj``)
        :param groups: the layout ``z`` was gathered with (``(G, m, D)``, groups of one class
            each, see :class:`~uniad_plugin.nn.grouping.ClassGroups`); ``None``: the ``K``
            classes in order
        """
        h = z if standardised else self._standardise(z)
        for i, w in enumerate(self.weights):
            h = torch.bmm(h, w if groups is None else groups.of_classes(w))
            if i < len(self.weights) - 1:
                h = nn.functional.leaky_relu(h)
        return h

    def embed(self, z: Tensor, k: Tensor, *, standardised: bool = False) -> Tensor:
        """Embed ``(B, D)`` inputs with the encoder of class ``k[i]`` for row ``i`` -> ``(B, R)``.

        Rows are grouped by class into a padded ``(G, m, D)`` tensor of groups of one class
        each (:class:`~uniad_plugin.nn.grouping.ClassGroups`) so that one ``bmm`` per layer
        serves every class, then read back in the input order. No per-sample weight copies,
        no Python loop. ``standardised``: as in :meth:`embed_grouped`.
        """
        if len(z) == 0:
            return z.new_zeros(0, self.center.shape[1])
        groups = ClassGroups(k.to(z.device), self.n_classes)
        emb = self.embed_grouped(groups.gather(z), standardised=standardised, groups=groups)
        return groups.scatter(emb)

    def dist2(self, z: Tensor, k: Tensor, *, standardised: bool = False) -> Tensor:
        """Squared distance of ``phi_k(z)`` to ``c_k`` for each row, shape ``(B,)``
        (``standardised``: as in :meth:`embed_grouped`)."""
        emb = self.embed(z, k, standardised=standardised)
        return (emb - self.center[k]).pow(2).sum(dim=1)

    def score(self, z: Tensor, k: Tensor, kind: str = "ratio") -> Tensor:
        """Outlier score w.r.t. the hypersphere of class ``k``.

        ``"ratio"``: :math:`d^2 / R_k^2`; ``"difference"``: :math:`d^2 - R_k^2`.
        """
        d2 = self.dist2(z, k)
        r2 = self.radius2[k]
        if kind == "ratio":
            return d2 / r2.clamp_min(1e-12)
        if kind == "difference":
            return d2 - r2
        raise ValueError(f"expected score kind 'ratio' or 'difference', got {kind!r}")


def layer_scores(
    spheres: Sequence[BatchedSVDD],
    zs: Sequence[Tensor],
    k: Tensor,
    kind: str = "ratio",
    *,
    rows: Tensor | None = None,
) -> Tensor:
    """Scores ``(N, L)`` of every row under the hypersphere of its class ``k`` in each layer.

    The same as ``torch.stack([s.score(z, k, kind) for s, z in zip(spheres, zs)], 1)``, with
    one class layout shared by all layers (:class:`~uniad_plugin.nn.grouping.ClassGroups`):
    each layer's rows are gathered once into a padded ``(G, m, D_l)`` tensor of groups of one
    class each (fewer than ``2 N`` slots), each layer runs as one ``bmm`` per encoder layer with
    its groups' weights, and the ``(N, L)`` scores are read back once. Differentiable with
    respect to ``zs``.

    :param spheres: one fitted :class:`BatchedSVDD` per layer, all with the same ``K``
    :param zs: one ``(B, D_l)`` tensor per layer
    :param k: class of each scored pair, ``(N,)`` integers in ``[0, K)``
    :param kind: ``"ratio"`` (:math:`d^2/R^2`) or ``"difference"`` (:math:`d^2 - R^2`)
    :param rows: ``(N,)`` the row of ``zs`` that pair ``i`` scores (a row may be scored
        under several classes without being copied); ``None``: row ``i`` (``N = B``)
    """
    if kind not in ("ratio", "difference"):
        raise ValueError(f"expected score kind 'ratio' or 'difference', got {kind!r}")
    if len(k) == 0:
        return zs[0].new_zeros(0, len(spheres))
    device = zs[0].device
    rows = rows.to(device) if rows is not None else None
    groups = ClassGroups(k.to(device), spheres[0].n_classes, rows)
    of = groups.of_classes
    scores = []
    for sphere, z in zip(spheres, zs):
        g = groups.gather(z)
        if not sphere.has_encoder:
            h = g
        elif torch.is_grad_enabled() and sphere.weights[0].requires_grad:
            h = torch.bmm(sphere._standardise(g), of(sphere.weights[0]))
        else:  # scoring a fitted sphere: the normalisation folded into the first layer
            w0, b0 = sphere.folded_input_layer()
            h = torch.baddbmm(-of(b0).unsqueeze(1), g, of(w0))
        for w in sphere.weights[1:]:
            h = torch.bmm(nn.functional.leaky_relu(h), of(w))
        d2 = (h - of(sphere.center).unsqueeze(1)).pow(2).sum(dim=2)  # (G, m)
        r2 = of(sphere.radius2).unsqueeze(1)
        scores.append(d2 / r2.clamp_min(1e-12) if kind == "ratio" else d2 - r2)
    return groups.scatter(torch.stack(scores, dim=2))


def input_projection(z: Tensor, y: Tensor, n_classes: int, whiten: str, shrinkage: float) -> Tensor:
    """The ``(D, D)`` normalisation matrix applied to centred inputs (see :func:`fit_svdd`)."""
    if whiten not in ("full", "diag"):
        raise ValueError(f"expected whiten 'full' or 'diag', got {whiten!r}")
    zd = z.double()
    mu = torch.zeros(n_classes, z.shape[1], dtype=torch.float64, device=z.device)
    mu.index_add_(0, y, zd)
    mu /= torch.bincount(y, minlength=n_classes).clamp_min(1)[:, None].double()
    centred = zd - mu[y]
    if whiten == "diag":
        var = centred.pow(2).mean(0)
        var = var + shrinkage * var.mean() + 1e-12
        return torch.diag(var.rsqrt()).to(z.dtype)
    cov = centred.T @ centred / max(len(z) - n_classes, 1)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(0) + shrinkage * evals.clamp_min(0).mean() + 1e-12
    return (evecs @ torch.diag(evals.rsqrt()) @ evecs.T).to(z.dtype)


@dataclass(frozen=True)
class SVDDTraining:
    """How :func:`fit_svdd` trains: one value object instead of many keyword arguments.

    :param nu: soft-boundary :math:`\\nu` in (0, 1]: the fraction of training samples allowed
        outside the sphere
    :param epochs: training epochs
    :param warmup_epochs: epochs with :math:`R = 0` before the radii are set
    :param lr: Adam learning rate
    :param weight_decay: Adam weight decay
    :param batch_size: samples per class in each step
    :param eps: centre coordinates closer to zero than ``eps`` are pushed to ``±eps``
        (Ruff et al.), so that the zero map cannot reach the centre
    :param whiten: input normalisation: ``"full"`` whitens with the inverse square root of the
        tied within-class covariance (the geometry of the Mahalanobis detector), ``"diag"``
        divides each feature by its standard deviation
    :param shrinkage: the covariance is shrunk towards ``shrinkage * mean eigenvalue * I`` before
        inversion (dead or constant features stay finite)
    """

    nu: float = 0.1
    epochs: int = 30
    warmup_epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-6
    batch_size: int = 128
    eps: float = 0.1
    whiten: str = "full"
    shrinkage: float = 1e-3


@torch.enable_grad()  # the spheres train under an outer torch.no_grad() too
def fit_svdd(
    model: BatchedSVDD,
    z: Tensor,
    y: Tensor,
    training: SVDDTraining | None = None,
    *,
    generator: torch.Generator | None = None,
    **options: Any,
) -> BatchedSVDD:
    """Fit all ``K`` hyperspheres on features ``z`` (N, D) with class labels ``y`` in ``[0, K)``.

    Each step draws a class-balanced minibatch of ``batch_size`` samples per class (classes with
    fewer samples are cycled), so one ``bmm`` updates every class. One epoch is
    ``ceil(max_k n_k / batch_size)`` steps.

    :param training: the training settings; ``None`` for the defaults, replaced by any of its
        fields given as keyword ``options`` (e.g. ``fit_svdd(m, z, y, nu=0.1, epochs=20)``)
    :param generator: source of all randomness (initialisation and minibatch order)
    """
    training = replace(training or SVDDTraining(), **options)
    nu, epochs, warmup_epochs = training.nu, training.epochs, training.warmup_epochs
    lr, weight_decay, batch_size = training.lr, training.weight_decay, training.batch_size
    eps, whiten, shrinkage = training.eps, training.whiten, training.shrinkage
    if not 0 < nu <= 1:
        raise ValueError(f"expected nu in (0, 1], got {nu}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"expected epochs >= 1 and batch_size >= 1, got {epochs}, {batch_size}")
    device = model.center.device
    K = model.n_classes
    z = z.to(device=device, dtype=torch.float32)
    y = y.to(device)
    counts = torch.bincount(y, minlength=K)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(
            f"expected training samples for every class 0..{K - 1}, none for {missing}"
        )

    if not model.has_encoder:
        return _fit_raw_spheres(model, z, y, nu)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    model.reset_parameters(generator=generator)
    model.to(device)
    with torch.no_grad():
        model.in_mean.copy_(z.mean(0))
        model.in_proj.copy_(input_projection(z, y, K, whiten, shrinkage))
        # normalised once, not in every step: the (D, D) product dominated wide layers' fits
        chunks = torch.split(torch.arange(len(z), device=device), 8192)
        normalised = torch.empty_like(z)
        for c in chunks:
            normalised[c] = model._standardise(z[c])
        z = normalised
        # class-sorted index lists, padded by cycling to a (K, n_max) table
        order = torch.argsort(y, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        n_max = int(counts.max())
        ar = torch.arange(n_max, device=device)
        table = order[starts[:, None] + ar[None, :] % counts[:, None]]  # (K, n_max)
        # centres: mean initial embedding per class
        center = torch.zeros(K, model.center.shape[1], device=device)
        for chunk in chunks:
            center.index_add_(0, y[chunk], model.embed(z[chunk], y[chunk], standardised=True))
        center /= counts[:, None].to(center.dtype)
        center = torch.where(center.abs() < eps, torch.where(center < 0, -eps, eps), center)
        model.center.copy_(center)
        model.radius2.zero_()

    opt = torch.optim.Adam(model.weights.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, math.ceil(n_max / batch_size))
    for epoch in range(epochs):
        # independent permutation of each class's (cycled) index row
        keys = torch.rand(K, n_max, generator=generator, device=gen_device).to(device)
        perm = torch.gather(table, 1, torch.argsort(keys, dim=1))
        for s in range(steps):
            idx = perm[:, s * batch_size : (s + 1) * batch_size]  # (K, m)
            emb = model.embed_grouped(z[idx], standardised=True)
            d2 = (emb - model.center[:, None, :]).pow(2).sum(-1)  # (K, m)
            if epoch < warmup_epochs:
                loss = d2.mean(1).sum()
            else:
                hinge = torch.relu(d2 - model.radius2[:, None])
                loss = (model.radius2 + hinge.mean(1) / nu).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch + 1 >= warmup_epochs:
            with torch.no_grad():
                d2 = _dist2_chunked(model, z, y, standardised=True)
                model.radius2.copy_(class_quantile(d2, y, K, 1 - nu))
    return model


@torch.no_grad()
def _fit_raw_spheres(model: BatchedSVDD, z: Tensor, y: Tensor, nu: float) -> BatchedSVDD:
    """The spheres of an encoder-free :class:`BatchedSVDD`: each class's centre is its mean
    input and :math:`R_k^2` the :math:`(1-\\nu)`-quantile of its squared distances (the
    soft-boundary optimum for that centre). Deterministic: draws nothing."""
    K = model.n_classes
    center = torch.zeros(K, z.shape[1], dtype=torch.float64, device=z.device)
    for c in torch.split(torch.arange(len(z), device=z.device), 8192):
        center.index_add_(0, y[c], z[c].double())
    center /= torch.bincount(y, minlength=K)[:, None].double()
    model.center.copy_(center.float())
    model.radius2.copy_(class_quantile(_dist2_chunked(model, z, y), y, K, 1 - nu))
    return model


def _dist2_chunked(
    model: BatchedSVDD, z: Tensor, y: Tensor, *, standardised: bool = False
) -> Tensor:
    """:meth:`BatchedSVDD.dist2` of every row, in chunks of 8,192 rows."""
    chunks = torch.split(torch.arange(len(z), device=z.device), 8192)
    return torch.cat([model.dist2(z[c], y[c], standardised=standardised) for c in chunks])
