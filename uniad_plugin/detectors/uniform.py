"""The uniform framework of Zhao et al.: per-class hyperspheres on hidden activations."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from pytorch_ood.api import (
    DetectorInfo,
    ModelNotSetException,
    Paper,
    RequiresFittingException,
    StructuredDetector,
    Task,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import Self

from uniad_plugin.detectors._common import (
    ModelMixin,
    check_classes,
    check_inputs,
    check_labels,
    eval_mode,
    model_dtype,
    split_known,
)
from uniad_plugin.nn.svdd import BatchedSVDD, fit_svdd, layer_scores
from uniad_plugin.nn.taps import LayerTaps, default_layers, pool, resolve_layers

log = logging.getLogger(__name__)

_STATE_VERSION = 1


class UniformDetector(ModelMixin, StructuredDetector):
    """One detector for out-of-distribution, adversarial and noise inputs.

    Implements *A Uniform Framework for Anomaly Detection in Deep Neural Networks* (Zhao et al.,
    Neural Processing Letters 2022). For every class :math:`k` and every tapped layer :math:`l`
    of the frozen classifier, a soft-boundary Deep SVDD hypersphere (encoder
    :math:`\\phi_{lk}`, centre :math:`c_{lk}`, radius :math:`R_{lk}`, :math:`\\nu = 0.1`) is fitted
    on the layer's activations :math:`z_l(x)` of the training inputs of class :math:`k`
    (in-distribution data only). An input is scored against the spheres of the class
    :math:`\\hat{k}` the classifier predicts for it:

    .. math::

        s_l(x) = \\frac{\\lVert \\phi_{l\\hat{k}}(z_l(x)) - c_{l\\hat{k}} \\rVert^2}{R_{l\\hat{k}}^2},
        \\qquad
        S(x) = \\sum_l \\frac{s_l(x) - \\mu_l}{\\sigma_l}

    where :math:`\\mu_l, \\sigma_l` are the mean and standard deviation of :math:`s_l` on ID
    inputs held out from fitting the spheres. Larger is more anomalous.

    Stated by the paper: per-class one-class hyperspheres with a soft boundary and
    :math:`\\nu = 0.1` on representations from inside the frozen network, fitted on ID data
    only, no input preprocessing, no knowledge of OOD sets or attacks.

    **Our design choices** (not stated by the paper; each measured against its alternatives in
    ``benchmarks/uniform_ablation.py``, results in ``benchmarks/results/uniform_ablation.md``):

    * *Layers*: by default the last module of each spatial stage (globally average-pooled), the
      penultimate features (input of the last ``nn.Linear``) and the log-softmax of the output,
      chosen by :func:`~uniad_plugin.nn.taps.default_layers` from one probe forward pass. The
      penultimate layer alone (the literal reading) detects adversarial inputs poorly.
    * *Whitening*: each layer's activations are whitened with ID statistics before its encoder,
      by default (``whiten="full"``) with the inverse square root of the tied within-class
      covariance (plus ``1e-3`` times its mean eigenvalue on the diagonal), the metric of the Mahalanobis
      detector; per-feature standardisation (``whiten="diag"``) detects adversarial inputs
      markedly worse.
    * *Encoder* :math:`\\phi`: a bias-free MLP (``hidden=(64,)``, ``rep_dim=32``, LeakyReLU) on
      the whitened activations; no autoencoder pre-training; centres are the
      mean initial embeddings; :math:`R` is the :math:`(1-\\nu)`-quantile of the class's distances,
      updated after every epoch once ``warmup_epochs`` have passed (Ruff et al.'s procedure).
    * *Sphere at test time*: the classifier's predicted class.
    * *Score*: :math:`d^2/R^2` (``score="ratio"``) rather than :math:`d^2 - R^2`, so that classes
      with different radii are comparable.
    * *Fusion*: each layer's score is standardised on ID data held out from fitting
      (``holdout=0.1``) and the standardised scores are summed; no anomaly data is used.

    :param model: the frozen, pre-trained classifier (never modified; run in eval mode)
    :param layers: layer names (``"name"`` for a module's output, ``"name:input"`` for its input,
        ``"logits"`` for the output, ``"log_softmax"`` for its log-softmax) or modules; ``None``
        picks them from the model
    :param nu: soft-boundary :math:`\\nu`, the fraction of ID samples allowed outside a sphere
    :param hidden: hidden widths of each encoder :math:`\\phi`
    :param rep_dim: output dimension of each encoder
    :param epochs: training epochs of the spheres
    :param warmup_epochs: epochs with :math:`R = 0` (one-class objective) before radii are set;
        default ``min(5, epochs // 2)``
    :param lr: Adam learning rate
    :param weight_decay: Adam weight decay
    :param batch_size: samples per class in each batched training step
    :param score: ``"ratio"`` (:math:`d^2/R^2`) or ``"difference"`` (:math:`d^2-R^2`)
    :param holdout: fraction of ID fit data held out to standardise the per-layer scores
    :param pooling: ``"avg"`` (global average) or ``"avgmax"`` (average and max) for feature maps
    :param whiten: normalisation of each layer before the encoders: ``"full"`` (whitening with
        the tied within-class covariance) or ``"diag"`` (per-feature standardisation)
    :param seed: seed of every random choice (hold-out split, initialisation, minibatches)
    """

    requires_fit = True

    info = DetectorInfo(
        paper=Paper(
            title="A Uniform Framework for Anomaly Detection in Deep Neural Networks",
            venue="Neural Processing Letters",
            year=2022,
            url="https://arxiv.org/abs/2110.03092",
        ),
        tasks={Task.CLASSIFICATION},
        ai_coded=True,
    )

    hyperparameter_space = {
        "nu": [0.05, 0.1, 0.2],
        "rep_dim": [16, 32, 64],
        "epochs": [10, 30, 60],
        "score": ["ratio", "difference"],
    }

    def __init__(
        self,
        model: nn.Module | None,
        layers: Sequence[str | nn.Module] | None = None,
        *,
        nu: float = 0.1,
        hidden: Sequence[int] = (64,),
        rep_dim: int = 32,
        epochs: int = 30,
        warmup_epochs: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        batch_size: int = 128,
        score: str = "ratio",
        holdout: float = 0.1,
        pooling: str = "avg",
        whiten: str = "full",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"expected model to be a torch.nn.Module, got {type(model).__name__}")
        if not 0 < nu <= 1:
            raise ValueError(f"expected nu in (0, 1], got {nu}")
        if score not in ("ratio", "difference"):
            raise ValueError(f"expected score 'ratio' or 'difference', got {score!r}")
        if not 0 < holdout < 1:
            raise ValueError(f"expected holdout in (0, 1), got {holdout}")
        if whiten not in ("full", "diag"):
            raise ValueError(f"expected whiten 'full' or 'diag', got {whiten!r}")
        if pooling not in ("avg", "avgmax"):
            raise ValueError(f"expected pooling 'avg' or 'avgmax', got {pooling!r}")
        if warmup_epochs is None:
            warmup_epochs = min(5, epochs // 2)
        if epochs < 1 or not 0 <= warmup_epochs <= epochs:
            raise ValueError(
                f"expected epochs >= 1 and 0 <= warmup_epochs <= epochs, got {epochs}, "
                f"{warmup_epochs}"
            )
        self.model = model
        self.layers: list[str] | None = None
        if layers is not None:
            if model is None:
                raise ModelNotSetException("layers were given but model is None")
            self.layers = [s.name for s in resolve_layers(model, layers)]
        self.nu = nu
        self.hidden = tuple(int(h) for h in hidden)
        self.rep_dim = int(rep_dim)
        self.epochs = int(epochs)
        self.warmup_epochs = int(warmup_epochs)
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = int(batch_size)
        self.score = score
        self.holdout = holdout
        self.pooling = pooling
        self.whiten = whiten
        self.seed = int(seed)
        # fitted state
        self.spheres: nn.ModuleList | None = None
        self.fusion_mean: Tensor | None = None
        self.fusion_std: Tensor | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.n_classes: int | None = None

    # ------------------------------------------------------------------ helpers
    def _require_fitted(self) -> None:
        if self.spheres is None:
            raise RequiresFittingException(
                "UniformDetector must be fitted with fit(loader) or fit_structured(...) first"
            )

    def _taps(self) -> LayerTaps:
        return LayerTaps(self._require_model(), self.layers, reduce=lambda t: pool(t, self.pooling))

    @torch.no_grad()
    def extract(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Activations of all tapped layers and the logits, from ONE forward pass.

        :param x: model inputs
        :return: ``(features, logits)``, features a list with one ``(B, D_l)`` tensor per layer
        """
        return self._extract(x)

    def _extract(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        model = self._require_model()
        if self.layers is None:
            with eval_mode(model):
                self.layers = default_layers(model, x[:2])
            log.info("UniformDetector layers: %s", self.layers)
        with eval_mode(model):
            logits, feats = self._taps()(x)
        if logits.dim() != 2:
            raise ValueError(
                f"expected the model to return logits of shape (B, classes), got {tuple(logits.shape)}"
            )
        return feats, logits

    # ------------------------------------------------------------------ fitting
    def fit(self, data_loader: DataLoader) -> Self:
        """Fit the hyperspheres on in-distribution data.

        :param data_loader: yields ``(x, y)`` batches of ID inputs and class labels
            ``0..K-1`` (every class must occur); samples with labels < 0 are ignored with a
            warning, since this detector is fitted on ID data only
        :return: self
        :raises ValueError: for an empty loader, NaN/inf inputs, labels out of range or a class
            without samples
        """
        self._require_model()
        device = self._target_device()
        feats_all: list[list[Tensor]] = []
        ys: list[Tensor] = []
        preds: list[Tensor] = []
        input_shape = None
        n_outputs = 0
        for batch in data_loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("expected the loader to yield (x, y) batches")
            x, y = batch[0], batch[1]
            x = check_inputs(x, input_shape, "x in the fit loader", model_dtype(self.model))
            y = check_labels(y, len(x))
            if len(x) == 0:
                continue
            input_shape = tuple(x.shape[1:])
            feats, logits = self.extract(x.to(device))
            feats_all.append([f.cpu() for f in feats])
            ys.append(y.cpu())
            preds.append(logits.argmax(1).cpu())
            n_outputs = logits.shape[1]
        if not ys:
            raise ValueError(
                "expected a loader with at least one (x, y) batch, got an empty loader"
            )
        zs = [torch.cat([f[i] for f in feats_all]) for i in range(len(feats_all[0]))]
        y = torch.cat(ys)
        pred = torch.cat(preds)
        self.input_shape = input_shape
        return self.fit_structured(zs, y, pred=pred, n_classes=n_outputs)

    def fit_structured(
        self,
        zs: Sequence[Tensor],
        y: Tensor,
        pred: Tensor | None = None,
        n_classes: int | None = None,
    ) -> Self:
        """Fit on pre-extracted activations (one extraction can serve many detectors).

        :param zs: one tensor per layer, ``(N, D_l)`` or ``(N, C_l, H, W)`` (pooled here)
        :param y: class labels ``(N,)``; labels < 0 are ignored with a warning
        :param pred: the classifier's predicted classes (or logits) for the same inputs; used to
            pick the sphere when standardising scores on held-out data, as at test time.
            Defaults to ``y``.
        :param n_classes: number of classes :math:`K`; defaults to ``y.max() + 1``
        :return: self
        """
        if len(zs) == 0:
            raise ValueError("expected at least one layer of activations, got none")
        y = check_labels(y, len(zs[0]))
        zs = [pool(check_inputs(z, None, "activations"), self.pooling).float() for z in zs]
        if any(len(z) != len(y) for z in zs):
            raise ValueError(
                f"expected every layer to have {len(y)} rows, got {[len(z) for z in zs]}"
            )
        if pred is not None:
            pred = pred.argmax(1) if pred.dim() == 2 else pred
            pred = pred.long()
            zs, y_pred = split_known([*zs, pred], y, "UniformDetector")
            zs, pred = zs[:-1], zs[-1]
            y = y_pred
        else:
            zs, y = split_known(zs, y, "UniformDetector")
        if len(y) == 0:
            raise ValueError("UniformDetector: expected ID samples with labels >= 0, got none")
        K = int(n_classes) if n_classes is not None else int(y.max()) + 1
        check_classes(y, K, "UniformDetector")
        if self.layers is None:
            self.layers = [f"layer{i}" for i in range(len(zs))]
        if len(self.layers) != len(zs):
            raise ValueError(
                f"expected {len(self.layers)} layers of activations ({self.layers}), got {len(zs)}"
            )
        if pred is None:
            pred = y

        device = self._target_device()
        gen = torch.Generator().manual_seed(self.seed)
        # stratified hold-out split: a random `holdout` fraction of each class
        keys = torch.rand(len(y), generator=gen)
        ranks = torch.empty(len(y))
        order = torch.argsort(y * 2.0 + keys)  # class-major, random within class
        counts = torch.bincount(y, minlength=K)
        starts = torch.cumsum(counts, 0) - counts
        ranks[order] = (torch.arange(len(y)) - starts[y[order]]).float()
        n_hold = (counts.float() * self.holdout).floor()
        held = ranks < n_hold[y]
        if int((~held).sum()) == 0 or int(held.sum()) < 2:
            raise ValueError(
                f"expected enough ID samples to hold out {self.holdout:.0%} for score "
                f"standardisation, got {len(y)}"
            )
        fit_idx = torch.nonzero(~held).flatten()
        if (torch.bincount(y[fit_idx], minlength=K) == 0).any():
            fit_idx = torch.arange(len(y))  # tiny classes: use all data for the spheres

        spheres = nn.ModuleList()
        for z in zs:
            sphere = BatchedSVDD(K, z.shape[1], self.hidden, self.rep_dim).to(device)
            fit_svdd(
                sphere,
                z[fit_idx].to(device),
                y[fit_idx].to(device),
                nu=self.nu,
                epochs=self.epochs,
                warmup_epochs=self.warmup_epochs,
                lr=self.lr,
                weight_decay=self.weight_decay,
                batch_size=self.batch_size,
                whiten=self.whiten,
                generator=gen,
            )
            spheres.append(sphere.eval().requires_grad_(False))
        self.spheres = spheres
        self.n_classes = K
        # standardisation of each layer's score on the held-out ID data
        held_idx = torch.nonzero(held).flatten()
        raw = self._layer_scores([z[held_idx].to(device) for z in zs], pred[held_idx].to(device))
        self.fusion_mean = raw.mean(0)
        self.fusion_std = raw.std(0).clamp_min(1e-12)
        return self

    # ------------------------------------------------------------------ scoring
    def _layer_scores(self, zs: Sequence[Tensor], k: Tensor) -> Tensor:
        k = k.clamp(0, self.n_classes - 1)
        return layer_scores(self.spheres, [z.float() for z in zs], k, self.score)

    @torch.no_grad()
    def layer_scores(self, x: Tensor) -> Tensor:
        """Standardised per-layer scores ``(B, L)``; :meth:`predict` is their row sum."""
        self._require_fitted()
        x = check_inputs(x, self.input_shape, dtype=model_dtype(self.model))
        x = x.to(self._target_device())
        if len(x) == 0:
            return torch.empty(0, len(self.spheres), device=x.device)
        feats, logits = self.extract(x)
        # activations that overflow (huge inputs) make NaN distances: most anomalous
        return torch.nan_to_num(self._fused(feats, logits.argmax(1)), nan=float("inf"))

    def differentiable_score(self, x: Tensor) -> Tensor:
        """:meth:`predict` with autograd enabled, for white-box (adaptive) attacks.

        The hypersphere is still chosen by the predicted class (a piecewise constant choice);
        everything else is differentiable with respect to ``x``.
        """
        self._require_fitted()
        x = check_inputs(x, self.input_shape, dtype=model_dtype(self.model))
        feats, logits = self._extract(x.to(self._target_device()))
        return self._fused(feats, logits.argmax(1)).sum(dim=1)

    def _fused(self, zs: Sequence[Tensor], k: Tensor) -> Tensor:
        raw = self._layer_scores(zs, k)
        return (raw - self.fusion_mean) / self.fusion_std

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Outlier scores of shape ``(B,)``; larger is more anomalous.

        :param x: model inputs of the shape seen at fit time
        :raises RequiresFittingException: before :meth:`fit`
        :raises ValueError: for a wrong shape or NaN/inf values

        Inputs of another floating precision are cast to the model's. Inputs so large that the
        model's activations overflow score ``+inf``.
        """
        return self.layer_scores(x).sum(dim=1)

    @torch.no_grad()
    def predict_structured(self, zs: Sequence[Tensor], logits: Tensor) -> Tensor:
        """Outlier scores from pre-extracted activations.

        :param zs: one tensor per fitted layer, ``(B, D_l)`` or ``(B, C_l, H, W)``
        :param logits: the classifier's logits ``(B, K)`` or predicted classes ``(B,)``
        :return: scores of shape ``(B,)``
        """
        self._require_fitted()
        if len(zs) != len(self.spheres):
            raise ValueError(
                f"expected {len(self.spheres)} layers of activations ({self.layers}), got {len(zs)}"
            )
        device = self._target_device()
        zs = [pool(check_inputs(z, None, "activations"), self.pooling).to(device) for z in zs]
        for z, sphere, name in zip(zs, self.spheres, self.layers):
            if z.shape[1] != sphere.in_dim:
                raise ValueError(
                    f"expected {sphere.in_dim} features for layer {name!r}, got {z.shape[1]}"
                )
        if logits.dim() == 2 and logits.shape[1] != self.n_classes:
            raise ValueError(
                f"expected logits of {self.n_classes} classes (as fitted), got {logits.shape[1]}"
            )
        k = logits.argmax(1) if logits.dim() == 2 else logits
        if len(k) != len(zs[0]):
            raise ValueError(f"expected {len(zs[0])} logits or classes, got {len(k)}")
        return self._fused(zs, k.long().to(device)).sum(dim=1)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Fitted state as tensors and primitives only (``torch.load(weights_only=True)`` safe)."""
        self._require_fitted()
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "layers": list(self.layers),
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "n_classes": self.n_classes,
            "config": {
                "nu": self.nu,
                "hidden": list(self.hidden),
                "rep_dim": self.rep_dim,
                "score": self.score,
                "pooling": self.pooling,
                "whiten": self.whiten,
            },
            "in_dims": [s.in_dim for s in self.spheres],
            "fusion_mean": self.fusion_mean.detach().cpu(),
            "fusion_std": self.fusion_std.detach().cpu(),
            "spheres": [
                {k: v.detach().cpu() for k, v in s.state_dict().items()} for s in self.spheres
            ],
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> Self:
        """Restore a state from :meth:`state_dict`, checked against this detector's model.

        :raises ValueError: if the state is malformed, from another version, or was fitted for a
            model with other layers, layer sizes or class count
        """
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"expected a UniformDetector state dict of version {_STATE_VERSION}, got "
                f"{type(state).__name__} with version "
                f"{state.get('version') if isinstance(state, dict) else None}"
            )
        try:
            layers = list(state["layers"])
            in_dims = [int(d) for d in state["in_dims"]]
            n_classes = int(state["n_classes"])
            cfg = dict(state["config"])
            input_shape = tuple(state["input_shape"]) if state["input_shape"] else None
            sphere_states = list(state["spheres"])
            fusion_mean, fusion_std = state["fusion_mean"], state["fusion_std"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"expected a complete UniformDetector state dict, missing {e}") from e
        if len(sphere_states) != len(layers) or len(in_dims) != len(layers):
            raise ValueError("corrupted UniformDetector state: layer counts disagree")
        device = self._target_device()
        if self.model is not None:
            resolve_layers(self.model, layers)  # raises ValueError for unknown layers
            if input_shape is not None:
                saved = self.layers, self.pooling
                self.layers, self.pooling = layers, cfg.get("pooling", "avg")
                probe = torch.zeros((1, *input_shape), device=device, dtype=model_dtype(self.model))
                try:
                    feats, logits = self.extract(probe)
                except Exception as e:
                    self.layers, self.pooling = saved
                    raise ValueError(
                        f"the state was fitted for inputs of shape {input_shape}, which this "
                        f"model cannot process: {e}"
                    ) from e
                got = [f.shape[1] for f in feats]
                if got != in_dims or logits.shape[1] != n_classes:
                    self.layers, self.pooling = saved
                    raise ValueError(
                        f"the state was fitted for a model with layer sizes {in_dims} and "
                        f"{n_classes} classes, this model has {got} and {logits.shape[1]}"
                    )
        spheres = nn.ModuleList()
        for d, s in zip(in_dims, sphere_states):
            sphere = BatchedSVDD(n_classes, d, cfg["hidden"], cfg["rep_dim"])
            try:
                sphere.load_state_dict(s)
            except RuntimeError as e:
                raise ValueError(f"corrupted UniformDetector state: {e}") from e
            spheres.append(sphere.to(device).eval().requires_grad_(False))
        self.layers = layers
        self.spheres = spheres
        self.n_classes = n_classes
        self.input_shape = input_shape
        self.nu = cfg["nu"]
        self.hidden = tuple(cfg["hidden"])
        self.rep_dim = cfg["rep_dim"]
        self.score = cfg["score"]
        self.pooling = cfg.get("pooling", "avg")
        self.whiten = cfg.get("whiten", "full")
        self.fusion_mean = fusion_mean.to(device)
        self.fusion_std = fusion_std.to(device)
        return self

    def __repr__(self) -> str:
        fitted = f", fitted on {self.n_classes} classes" if self.spheres is not None else ""
        return f"UniformDetector(layers={self.layers}, nu={self.nu}, score={self.score!r}{fitted})"
