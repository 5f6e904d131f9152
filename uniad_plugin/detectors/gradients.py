"""Gradient-based detection with confounding labels (Lee, Prabhushankar and AlRegib)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from pytorch_ood.api import (
    DetectorInfo,
    GradientDetector,
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
    check_inputs,
    check_labels,
    eval_mode,
    model_dtype,
)
from uniad_plugin.nn.pergrad import per_sample_grad_features, resolve_params

log = logging.getLogger(__name__)

_STATE_VERSION = 1
_TRANSFORMS = ("log", "log1p", "none")
_SCORINGS = ("auto", "gaussian", "classifier")
#: squared norms below this are treated as this value by the ``"log"`` transform
_LOG_FLOOR = 1e-30
#: classes with fewer predicted ID samples use the Gaussian of all ID samples
_MIN_CLASS_SAMPLES = 10


def _iter_batches(
    data_loader: DataLoader, who: str, dtype: torch.dtype | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield validated, non-empty ``(x, y)`` batches; the per-sample shape must not change.

    :raises ValueError: for batches that are not ``(x, y)``, NaN/inf inputs, bad labels, a
        changing input shape, or a loader without any sample (message contains "empty")
    """
    input_shape = None
    seen = False
    for batch in data_loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(f"{who}: expected the loader to yield (x, y) batches")
        x = check_inputs(batch[0], input_shape, "x in the fit loader", dtype)
        y = check_labels(batch[1], len(x))
        if len(x) == 0:
            continue
        input_shape = tuple(x.shape[1:])
        seen = True
        yield x, y
    if not seen:
        raise ValueError(f"{who}: expected a loader with at least one sample, got an empty loader")


def _check_label_range(y: Tensor, n_classes: int, who: str) -> None:
    if len(y) and int(y.max()) >= n_classes:
        raise ValueError(
            f"{who}: expected class labels in [0, {n_classes}) to match the model's {n_classes} "
            f"outputs (labels < 0 mark known anomalies), got label {int(y.max())}"
        )


def _model_outputs(model: nn.Module, x: Tensor) -> int:
    """Number of outputs (classes) of ``model`` for a probe batch ``x``."""
    with torch.no_grad(), eval_mode(model):
        out = model(x[:1])
    if out.dim() != 2:
        raise ValueError(
            f"expected the model to return logits of shape (B, classes), got {tuple(out.shape)}"
        )
    return int(out.shape[1])


def _check_param_shapes(model: nn.Module, names: Sequence[str], shapes: Sequence, who: str):
    own = dict(model.named_parameters())
    missing = [n for n in names if n not in own]
    if missing:
        raise ValueError(
            f"{who}: the state was fitted for a model with parameters {list(names)}; this model "
            f"has no {missing}"
        )
    got = [list(own[n].shape) for n in names]
    if got != [list(s) for s in shapes]:
        raise ValueError(
            f"{who}: the state was fitted for a model with parameter shapes "
            f"{[list(s) for s in shapes]}, this model has {got}"
        )


def _ledoit_wolf(z: Tensor) -> tuple[Tensor, float]:
    """Ledoit-Wolf shrunk covariance of ``z`` (N, P), in float64: ``(cov, shrinkage)``."""
    from sklearn.covariance import ledoit_wolf

    cov, shrink = ledoit_wolf(z.double().cpu().numpy(), assume_centered=False)
    return torch.from_numpy(cov), float(shrink)


class ConfoundingGradients(ModelMixin, GradientDetector, StructuredDetector):
    """Gradient features from a confounding label, scored by a Gaussian or a classifier.

    Implements *Gradient-Based Adversarial and Out-of-Distribution Detection* (Lee,
    Prabhushankar and AlRegib, ICML 2022 workshop), following the gradient representation of the
    same authors' earlier work (ICIP 2020/2021). For an input :math:`x`, a classifier :math:`f`
    with :math:`C` outputs and a *confounding label* :math:`y_c \\in \\{0, 1\\}^C` holding
    :math:`n` ones (a label no training sample has),

    .. math::

        J(x) = \\mathrm{BCE}\\big(\\sigma(f(x)), y_c\\big)
             = -\\sum_{c=1}^{C} \\big[y_{c} \\log \\sigma(f_c(x))
               + (1 - y_{c}) \\log(1 - \\sigma(f_c(x)))\\big]

    and the features are the squared :math:`\\ell_2` norms of :math:`\\partial J / \\partial
    \\theta_p` for every parameter tensor :math:`\\theta_p` (every layer's weight and bias):
    :math:`g(x) = (\\lVert \\partial J/\\partial \\theta_1 \\rVert^2, \\ldots,
    \\lVert \\partial J/\\partial \\theta_P \\rVert^2)`, computed per sample with
    :mod:`torch.func` (:func:`~uniad_plugin.nn.pergrad.per_sample_grad_features`). No
    ground-truth label is needed at inference.

    Stated by the papers: the confounding label (default all ones), the BCE loss, squared
    norms of the gradients of every parameter tensor as features, and a 2-layer fully connected
    binary classifier on these features when labelled anomalies are available.

    **Our design choices** (not in the papers; measured in ``benchmarks/``):

    * *Output non-linearity*: the sigmoid (``activation="sigmoid"``, default), computed stably as
      BCE with logits; ``"softmax"`` applies BCE to the softmax probabilities instead (as
      pytorch-ood's :class:`~pytorch_ood.detector.GradUncertainty`). The loss is summed over the
      :math:`C` outputs.
    * *Which ones*: for :math:`n < C` the ones sit at the first :math:`n` positions.
    * *Unsupervised score* (the papers only describe the supervised classifier): the features
      are transformed with ``log`` (default, :math:`\\log(g + 10^{-30})`, so that the many
      orders of magnitude of gradient norms become additive offsets) and standardised with the ID
      mean and standard deviation. With ``per_class=True`` (default) one Gaussian (mean and
      Ledoit-Wolf shrunk covariance, or a fixed ``shrinkage``) is fitted per class on the ID
      samples the classifier *predicts* as that class, and an input is scored by the squared
      Mahalanobis distance to the Gaussian of its predicted class: the pattern of gradient norms
      depends strongly on which logit is large, so one Gaussian for all classes is much weaker
      (see ``benchmarks/``). Classes with fewer than 10 predicted ID samples use the Gaussian of
      all ID samples. ``per_class=False`` fits that single Gaussian only. ID data only.
    * *Supervised score*: when the fit loader contains labelled anomalies (targets < 0) and
      ``scoring`` is ``"auto"`` or ``"classifier"``, a 2-layer MLP (``hidden`` units, ReLU) is
      trained with class-balanced BCE to tell ID (0) from anomalies (1) on the same standardised
      features; the score is its logit. The Gaussians are fitted as well and available with
      ``scoring="gaussian"``.

    The model is run in eval mode (its modes are restored afterwards) and never modified. Scoring
    works under an outer ``torch.no_grad()``, since :mod:`torch.func` computes its own gradients.

    :param model: the pre-trained classifier returning logits ``(B, C)``
    :param n_ones: number of ones :math:`n` in the confounding label; ``None`` = all :math:`C`.
        :math:`n = 1` would be an ordinary one-hot label and is refused
    :param params: names of the parameter tensors whose gradients are used; ``None`` = all
    :param activation: output non-linearity before the BCE, ``"sigmoid"`` or ``"softmax"``
    :param per_class: one Gaussian per predicted class (``True``) or one for all ID data
    :param transform: ``"log"``, ``"log1p"`` or ``"none"``, applied to the squared norms
    :param shrinkage: covariance shrinkage in [0, 1]; ``None`` = Ledoit-Wolf estimate
    :param scoring: ``"auto"`` (classifier if anomalies were given, else Gaussian),
        ``"gaussian"`` or ``"classifier"`` (requires anomalies)
    :param hidden: hidden units of the 2-layer classifier
    :param epochs: training epochs of the classifier
    :param lr: Adam learning rate of the classifier
    :param weight_decay: Adam weight decay of the classifier
    :param batch_size: minibatch size of the classifier
    :param chunk_size: samples per vectorised per-sample-gradient chunk (bounds memory)
    :param seed: seed of every random choice (classifier initialisation and minibatches)
    """

    requires_fit = True

    info = DetectorInfo(
        paper=Paper(
            title="Gradient-Based Adversarial and Out-of-Distribution Detection",
            venue="ICML Workshop",
            year=2022,
            url="https://arxiv.org/abs/2206.08255",
        ),
        tasks={Task.CLASSIFICATION},
        ai_coded=True,
    )

    hyperparameter_space = {
        "n_ones": [None, 0, 2],
        "activation": ["sigmoid", "softmax"],
        "per_class": [True, False],
        "transform": ["log", "log1p", "none"],
        "shrinkage": [None, 0.0, 0.1, 0.5],
    }

    def __init__(
        self,
        model: nn.Module | None,
        *,
        n_ones: int | None = None,
        params: Sequence[str] | None = None,
        activation: str = "sigmoid",
        per_class: bool = True,
        transform: str = "log",
        shrinkage: float | None = None,
        scoring: str = "auto",
        hidden: int = 64,
        epochs: int = 100,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        chunk_size: int | None = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"expected model to be a torch.nn.Module, got {type(model).__name__}")
        self._check_n_ones(n_ones)
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"expected activation 'sigmoid' or 'softmax', got {activation!r}")
        if transform not in _TRANSFORMS:
            raise ValueError(f"expected transform in {_TRANSFORMS}, got {transform!r}")
        if shrinkage is not None and not 0 <= shrinkage <= 1:
            raise ValueError(f"expected shrinkage in [0, 1] or None, got {shrinkage}")
        if scoring not in _SCORINGS:
            raise ValueError(f"expected scoring in {_SCORINGS}, got {scoring!r}")
        if hidden < 1 or epochs < 1 or batch_size < 1:
            raise ValueError(
                f"expected hidden, epochs and batch_size >= 1, got {hidden}, {epochs}, {batch_size}"
            )
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"expected chunk_size >= 1 or None, got {chunk_size}")
        self.model = model
        self.params: list[str] | None = None
        if params is not None:
            if model is None:
                raise ModelNotSetException("params were given but model is None")
            self.params = resolve_params(model, params)
        self.n_ones = n_ones
        self.activation = activation
        self.per_class = bool(per_class)
        self.transform = transform
        self.shrinkage = shrinkage
        self.scoring = scoring
        self.hidden = int(hidden)
        self.epochs = int(epochs)
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = int(batch_size)
        self.chunk_size = chunk_size
        self.seed = int(seed)
        # fitted state
        self.input_shape: tuple[int, ...] | None = None
        self.n_classes: int | None = None
        self.feature_mean: Tensor | None = None
        self.feature_std: Tensor | None = None
        self.centers: Tensor | None = None
        self.precisions: Tensor | None = None
        self.classifier: nn.Sequential | None = None
        self.fitted_shrinkage: float | None = None

    @staticmethod
    def _check_n_ones(n_ones: int | None) -> None:
        if n_ones is not None and (not isinstance(n_ones, int) or n_ones < 0 or n_ones == 1):
            raise ValueError(
                f"expected n_ones None (all ones) or an int >= 0 other than 1 (a one-hot label "
                f"is not confounding), got {n_ones!r}"
            )

    # ------------------------------------------------------------------ helpers
    def _require_fitted(self) -> None:
        if self.centers is None:
            raise RequiresFittingException(
                "ConfoundingGradients must be fitted with fit(loader) or fit_structured(...) first"
            )

    def _param_names(self) -> list[str]:
        if self.params is None:
            self.params = resolve_params(self._require_model())
        return self.params

    def _loss(self, n_classes: int):
        n = n_classes if self.n_ones is None else self.n_ones
        if n > n_classes:
            raise ValueError(
                f"expected n_ones <= the model's {n_classes} outputs, got n_ones={self.n_ones}"
            )

        softmax = self.activation == "softmax"

        def confounding_bce(out: Tensor, _target: Tensor | None) -> Tensor:
            y_c = (torch.arange(out.shape[-1], device=out.device) < n).to(out.dtype)
            y_c = y_c.expand_as(out)
            if softmax:
                # binary_cross_entropy clamps log(0) to -100, so saturated outputs stay finite
                return nn.functional.binary_cross_entropy(out.softmax(-1), y_c, reduction="sum")
            return nn.functional.binary_cross_entropy_with_logits(out, y_c, reduction="sum")

        return confounding_bce

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Squared gradient norms per parameter tensor (before ``transform``) and the logits.

        Both come from the same vectorised forward pass.

        :param x: model inputs ``(B, ...)``
        :return: ``(norms, logits)`` of shapes ``(B, P)`` and ``(B, C)``
        :raises ValueError: for NaN/inf inputs, or a shape other than the fitted one
        """
        model = self._require_model()
        x = check_inputs(x, self.input_shape, dtype=model_dtype(model)).to(self._target_device())
        names = self._param_names()
        n_classes = self.n_classes if self.n_classes is not None else None
        if len(x) == 0:
            return torch.empty(0, len(names), device=x.device), torch.empty(
                0, n_classes or 0, device=x.device
            )
        if n_classes is None:
            n_classes = _model_outputs(model, x)
        with eval_mode(model):
            g, logits = per_sample_grad_features(
                model,
                x,
                None,
                self._loss(n_classes),
                names,
                reduce="sq_norm",
                chunk_size=self.chunk_size,
                with_outputs=True,
            )
        # inputs far outside the data range can overflow float32
        big = torch.finfo(g.dtype).max
        return torch.nan_to_num(g, nan=big, posinf=big), logits

    def _transform(self, g: Tensor) -> Tensor:
        g = g.double().clamp_min(0)
        if self.transform == "log":
            return torch.log(g + _LOG_FLOOR)
        if self.transform == "log1p":
            return torch.log1p(g)
        return g

    def _standardise(self, g: Tensor) -> Tensor:
        return (self._transform(g) - self.feature_mean) / self.feature_std

    # ------------------------------------------------------------------ fitting
    def fit(self, data_loader: DataLoader) -> Self:
        """Compute gradient features of the loader's inputs and fit the scorer(s).

        :param data_loader: yields ``(x, y)``: ID inputs with class labels ``>= 0``, optionally
            known anomalies with labels ``< 0`` (which train the supervised classifier)
        :return: self
        :raises ValueError: for an empty loader, NaN/inf inputs, a changing input shape or
            labels >= the model's number of outputs
        """
        model = self._require_model()
        feats, logits, ys = [], [], []
        input_shape = n_classes = None
        self.input_shape = None
        for x, y in _iter_batches(data_loader, "ConfoundingGradients", model_dtype(model)):
            if n_classes is None:
                input_shape = tuple(x.shape[1:])
                n_classes = _model_outputs(model, x.to(self._target_device()))
                self._loss(n_classes)  # validates n_ones early
            _check_label_range(y, n_classes, "ConfoundingGradients")
            saved, self.n_classes = self.n_classes, n_classes
            try:
                g, out = self.features(x)
            finally:
                self.n_classes = saved
            feats.append(g.cpu())
            logits.append(out.cpu())
            ys.append(y.cpu())
        self.fit_structured(torch.cat(feats), torch.cat(ys), torch.cat(logits), n_classes)
        self.input_shape = input_shape
        return self

    def fit_structured(
        self,
        features: Tensor,
        y: Tensor,
        logits: Tensor | None = None,
        n_classes: int | None = None,
    ) -> Self:
        """Fit on pre-computed :meth:`features`.

        :param features: squared gradient norms ``(N, P)`` as returned by :meth:`features`
        :param y: labels ``(N,)``: ``>= 0`` ID, ``< 0`` known anomaly
        :param logits: the classifier's logits ``(N, C)`` or predicted classes ``(N,)``, which
            select the per-class Gaussians; required if ``per_class``
        :param n_classes: number of model outputs (default: from ``logits``)
        :return: self
        :raises ValueError: for NaN features, fewer than two ID samples, a feature count that
            does not match the selected parameters, or ``scoring="classifier"`` without anomalies
        """
        if not isinstance(features, Tensor) or features.dim() != 2:
            raise ValueError(
                f"expected features of shape (N, P), got "
                f"{tuple(features.shape) if isinstance(features, Tensor) else type(features)}"
            )
        y = check_labels(y, len(features)).cpu()
        if torch.isnan(features).any():
            raise ValueError("expected features without NaN, got NaN")
        if self.model is not None and features.shape[1] != len(self._param_names()):
            raise ValueError(
                f"expected {len(self._param_names())} features (one per selected parameter "
                f"tensor), got {features.shape[1]}"
            )
        pred = self._predicted(logits, len(features))
        if n_classes is None and logits is not None:
            n_classes = logits.shape[1] if logits.dim() == 2 else int(pred.max()) + 1
        known = y < 0
        n_id = int((~known).sum())
        if n_id < 2:
            raise ValueError(f"expected at least 2 ID samples (labels >= 0), got {n_id}")
        if self.scoring == "classifier" and not bool(known.any()):
            raise ValueError(
                "expected labelled anomalies (labels < 0) for scoring='classifier', got none"
            )
        device = self._target_device()
        t = self._transform(features.cpu())
        t_id = t[~known]
        mean = t_id.mean(0)
        std = t_id.std(0)
        # constant features (e.g. always-zero gradients) keep a small positive scale
        std = torch.where(std > 0, std, torch.ones_like(std)).clamp_min(1e-6)
        z_id = (t_id - mean) / std
        center, precision, shrink = self._gaussian(z_id)
        K = int(n_classes) if self.per_class else 1
        centers = center.expand(K, -1).clone()
        precisions = precision.expand(K, -1, -1).clone()
        if self.per_class:
            pred_id = pred[~known]
            for k in range(K):  # K small Gaussians; each is a batched closed-form estimate
                z_k = z_id[pred_id == k]
                if len(z_k) >= _MIN_CLASS_SAMPLES:
                    centers[k], precisions[k], _ = self._gaussian(z_k)
        self.feature_mean = mean.to(device)
        self.feature_std = std.to(device)
        self.centers = centers.to(device)
        self.precisions = precisions.to(device)
        self.fitted_shrinkage = shrink
        self.classifier = None
        if bool(known.any()):
            self.classifier = self._train_classifier((t - mean) / std, known.float())
        self.n_classes = int(n_classes) if n_classes is not None else None
        return self

    def _predicted(self, logits: Tensor | None, n: int) -> Tensor:
        if logits is None:
            if self.per_class:
                raise ValueError(
                    "expected the classifier's logits (or predicted classes) for per_class=True, "
                    "got None"
                )
            return torch.zeros(n, dtype=torch.long)
        if not isinstance(logits, Tensor) or logits.dim() not in (1, 2) or len(logits) != n:
            raise ValueError(
                f"expected logits of shape ({n}, C) or predicted classes ({n},), got "
                f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
            )
        pred = logits.argmax(1) if logits.dim() == 2 else logits.long()
        return pred.cpu()

    def _gaussian(self, z: Tensor) -> tuple[Tensor, Tensor, float]:
        """Mean, precision (float64) and shrinkage of a shrunk Gaussian fitted on ``z``."""
        if self.shrinkage is None:
            cov, shrink = _ledoit_wolf(z)
        else:
            shrink = float(self.shrinkage)
            zc = z - z.mean(0)
            emp = zc.T @ zc / len(zc)
            mu = torch.trace(emp) / emp.shape[0]
            cov = (1 - shrink) * emp + shrink * mu * torch.eye(emp.shape[0], dtype=emp.dtype)
        cov = cov.double() + 1e-9 * torch.eye(cov.shape[0], dtype=torch.float64)
        return z.double().mean(0), torch.linalg.pinv(cov, hermitian=True), shrink

    def _train_classifier(self, z: Tensor, target: Tensor) -> nn.Sequential:
        device = self._target_device()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            clf = nn.Sequential(
                nn.Linear(z.shape[1], self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1)
            )
        clf = clf.to(device)
        z, target = z.float().to(device), target.to(device)
        n_pos = float(target.sum())
        pos_weight = torch.tensor((len(target) - n_pos) / max(n_pos, 1.0), device=device)
        opt = torch.optim.Adam(clf.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(self.seed)
        steps = math.ceil(len(z) / self.batch_size)
        with torch.enable_grad():
            for _ in range(self.epochs):
                perm = torch.randperm(len(z), generator=gen).to(device)
                for s in range(steps):
                    idx = perm[s * self.batch_size : (s + 1) * self.batch_size]
                    loss = nn.functional.binary_cross_entropy_with_logits(
                        clf(z[idx]).squeeze(1), target[idx], pos_weight=pos_weight
                    )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        return clf.eval().requires_grad_(False)

    # ------------------------------------------------------------------ scoring
    def _use_classifier(self) -> bool:
        return self.scoring != "gaussian" and self.classifier is not None

    @torch.no_grad()
    def predict_structured(self, features: Tensor, logits: Tensor | None = None) -> Tensor:
        """Outlier scores from pre-computed :meth:`features`; larger is more anomalous.

        :param features: squared gradient norms ``(B, P)``
        :param logits: the classifier's logits ``(B, C)`` or predicted classes ``(B,)``;
            required for the per-class Gaussians
        :raises RequiresFittingException: before fitting
        :raises ValueError: for a wrong number of features or missing logits
        """
        self._require_fitted()
        if not isinstance(features, Tensor) or features.dim() != 2:
            raise ValueError(
                f"expected features of shape (B, P), got "
                f"{tuple(features.shape) if isinstance(features, Tensor) else type(features)}"
            )
        if features.shape[1] != len(self.feature_mean):
            raise ValueError(
                f"expected {len(self.feature_mean)} features per sample, got {features.shape[1]}"
            )
        device = self._target_device()
        z = self._standardise(features.to(device))
        if self._use_classifier():
            return self.classifier(z.float()).squeeze(1)
        if self.per_class:
            k = self._predicted(logits, len(z)).to(device)
            if len(k) and (int(k.min()) < 0 or int(k.max()) >= len(self.centers)):
                raise ValueError(
                    f"expected predicted classes in [0, {len(self.centers)}) as fitted, got "
                    f"classes up to {int(k.max())}"
                )
        else:
            k = torch.zeros(len(z), dtype=torch.long, device=device)
        d = z - self.centers[k]
        return torch.einsum("bi,bij,bj->b", d, self.precisions[k], d).float()

    def predict(self, x: Tensor) -> Tensor:
        """Outlier scores of shape ``(B,)``; larger is more anomalous.

        :param x: model inputs of the shape seen at fit time
        :raises RequiresFittingException: before fitting
        :raises ValueError: for a wrong shape or NaN/inf values
        """
        self._require_fitted()
        return self.predict_structured(*self.features(x))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Fitted state as tensors and primitives only (``torch.load(weights_only=True)`` safe)."""
        self._require_fitted()
        own = dict(self.model.named_parameters()) if self.model is not None else {}
        names = list(self.params) if self.params is not None else []
        return {
            "version": _STATE_VERSION,
            "detector": "ConfoundingGradients",
            "params": names,
            "param_shapes": [list(own[n].shape) for n in names if n in own],
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "n_classes": self.n_classes,
            "config": {
                "n_ones": self.n_ones,
                "activation": self.activation,
                "per_class": self.per_class,
                "transform": self.transform,
                "shrinkage": self.shrinkage,
                "scoring": self.scoring,
                "hidden": self.hidden,
            },
            "fitted_shrinkage": self.fitted_shrinkage,
            "feature_mean": self.feature_mean.detach().cpu(),
            "feature_std": self.feature_std.detach().cpu(),
            "centers": self.centers.detach().cpu(),
            "precisions": self.precisions.detach().cpu(),
            "classifier": (
                {k: v.detach().cpu() for k, v in self.classifier.state_dict().items()}
                if self.classifier is not None
                else None
            ),
        }

    def load_state_dict(self, state: dict[str, Any]) -> Self:
        """Restore a state from :meth:`state_dict`, checked against this detector's model.

        :raises ValueError: if the state is malformed, from another version, or was fitted for a
            model with other parameters or another number of outputs
        """
        who = "ConfoundingGradients"
        if (
            not isinstance(state, dict)
            or state.get("version") != _STATE_VERSION
            or state.get("detector") != who
        ):
            raise ValueError(
                f"expected a {who} state dict of version {_STATE_VERSION}, got "
                f"{type(state).__name__} with version "
                f"{state.get('version') if isinstance(state, dict) else None}"
            )
        try:
            names = [str(n) for n in state["params"]]
            shapes = [list(s) for s in state["param_shapes"]]
            input_shape = tuple(state["input_shape"]) if state["input_shape"] else None
            n_classes = state["n_classes"]
            cfg = dict(state["config"])
            tensors = {
                k: state[k].double()
                for k in ("feature_mean", "feature_std", "centers", "precisions")
            }
            clf_state = state["classifier"]
            fitted_shrinkage = state["fitted_shrinkage"]
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"expected a complete {who} state dict, missing {e}") from e
        P = len(names)
        K = len(tensors["centers"])
        if (
            len(shapes) != P
            or any(tensors[k].shape != (P,) for k in ("feature_mean", "feature_std"))
            or tensors["centers"].shape != (K, P)
            or tensors["precisions"].shape != (K, P, P)
            or (cfg.get("per_class") and K != n_classes)
        ):
            raise ValueError(f"corrupted {who} state: expected {P} features throughout")
        self._check_n_ones(cfg.get("n_ones"))
        if self.model is not None:
            _check_param_shapes(self.model, names, shapes, who)
            if input_shape is not None and n_classes is not None:
                got = _model_outputs(
                    self.model, torch.zeros((1, *input_shape), device=self._target_device())
                )
                if got != n_classes:
                    raise ValueError(
                        f"{who}: the state was fitted for a model with {n_classes} outputs, this "
                        f"model has {got}"
                    )
        clf = None
        if clf_state is not None:
            clf = nn.Sequential(
                nn.Linear(P, int(cfg["hidden"])), nn.ReLU(), nn.Linear(int(cfg["hidden"]), 1)
            )
            try:
                clf.load_state_dict(clf_state)
            except (RuntimeError, TypeError, AttributeError) as e:
                raise ValueError(f"corrupted {who} state: {e}") from e
            clf = clf.to(self._target_device()).eval().requires_grad_(False)
        device = self._target_device()
        self.params = names
        self.input_shape = input_shape
        self.n_classes = n_classes
        self.n_ones = cfg["n_ones"]
        self.activation = cfg["activation"]
        self.per_class = bool(cfg["per_class"])
        self.transform = cfg["transform"]
        self.shrinkage = cfg["shrinkage"]
        self.scoring = cfg["scoring"]
        self.hidden = int(cfg["hidden"])
        self.fitted_shrinkage = fitted_shrinkage
        self.feature_mean = tensors["feature_mean"].to(device)
        self.feature_std = tensors["feature_std"].to(device)
        self.centers = tensors["centers"].to(device)
        self.precisions = tensors["precisions"].to(device)
        self.classifier = clf
        return self

    def __repr__(self) -> str:
        fitted = ""
        if self.centers is not None:
            kind = "classifier" if self._use_classifier() else "gaussian"
            fitted = f", fitted ({kind}, {len(self.feature_mean)} features)"
        return (
            f"ConfoundingGradients(n_ones={self.n_ones}, transform={self.transform!r}, "
            f"scoring={self.scoring!r}{fitted})"
        )
