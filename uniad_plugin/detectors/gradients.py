"""Gradient-based detection with confounding labels (Lee, Prabhushankar and AlRegib)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from pytorch_ood.api import (
    GradientDetector,
    Paper,
    RequiresFittingException,
    StructuredDetector,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import Self

from uniad_plugin.detectors import _base
from uniad_plugin.detectors._base import UniadDetector, hp
from uniad_plugin.nn.alarms import binary_mlp, train_binary_mlp
from uniad_plugin.nn.gaussian import shrunk_gaussian
from uniad_plugin.nn.pergrad import (
    LossFn,
    check_param_shapes,
    per_sample_grad_features,
    resolve_params,
)

__all__ = ["ConfoundingGradients"]

log = logging.getLogger(__name__)

_TRANSFORMS = ("log", "log1p", "none")
#: squared norms below this are treated as this value by the ``"log"`` transform
_LOG_FLOOR = 1e-30
#: classes with fewer predicted ID samples use the Gaussian of all ID samples
_MIN_CLASS_SAMPLES = 10
#: hidden units of the 2-layer classifier trained on labelled anomalies (our choice)
HIDDEN = 64
#: Adam weight decay of that classifier (our choice)
WEIGHT_DECAY = 1e-4
#: minibatch size of that classifier (our choice)
BATCH_SIZE = 256
#: samples per vectorised per-sample-gradient chunk, which bounds the memory (our choice)
CHUNK_SIZE = 64


class _Fitted(NamedTuple):
    """What scoring reads of a fitted :class:`ConfoundingGradients`."""

    feature_mean: Tensor
    feature_std: Tensor
    centers: Tensor
    precisions: Tensor


def _check_n_ones(name: str, n_ones: object) -> int | None:
    if n_ones is not None and (
        not isinstance(n_ones, int) or isinstance(n_ones, bool) or n_ones < 0 or n_ones == 1
    ):
        raise ValueError(
            f"expected {name} None (all ones) or an int >= 0 other than 1 (a one-hot label "
            f"is not confounding), got {n_ones!r}"
        )
    return n_ones


class ConfoundingGradients(UniadDetector, GradientDetector, StructuredDetector):
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

    Unsupervised, an input is scored by the squared Mahalanobis distance of its transformed,
    standardised features to the Gaussian of its predicted class; with labelled anomalies in the
    fit data (and ``known_anomalies=True``), by the logit of a 2-layer classifier. What the papers state and what this
    implementation chooses (output non-linearity, which ones, the unsupervised and supervised
    scores) is listed on the `docs page
    <../detectors/gradients.md#design-choices-in-detail>`_. The model is run in
    eval mode (its modes are restored afterwards) and never modified. Scoring works under an
    outer ``torch.no_grad()``, since :mod:`torch.func` computes its own gradients.

    Fixed (our choices): the Gaussians' covariances are shrunk by the Ledoit-Wolf estimate;
    the score is the classifier's logit when labelled anomalies trained one, else the
    Gaussian distance; the classifier has 64 hidden units and trains with Adam (weight decay
    1e-4) in minibatches of 256; per-sample gradients are computed in chunks of 64 samples.

    :param model: the pre-trained classifier returning logits ``(B, C)``
    :param n_ones: number of ones :math:`n` in the confounding label; ``None`` = all :math:`C`.
        :math:`n = 1` would be an ordinary one-hot label and is refused
    :param params: names of the parameter tensors whose gradients are used; ``None`` = all
    :param activation: output non-linearity before the BCE, ``"sigmoid"`` or ``"softmax"``
    :param per_class: one Gaussian per predicted class (``True``) or one for all ID data
    :param transform: ``"log"``, ``"log1p"`` or ``"none"``, applied to the squared norms
    :param epochs: training epochs of the 2-layer classifier
    :param lr: Adam learning rate of the 2-layer classifier
    :param known_anomalies: train the 2-layer classifier on the rows of the fit data with
        labels < 0 as labelled anomalies and score with it; ``False`` (the default): they are
        ignored with a warning, as by every detector of this package and pytorch-ood's
        built-ins
    :param seed: seed of every random choice (classifier initialisation and minibatches)
    """

    requires_fit = True

    info = _base.classification_info(
        Paper(
            title="Gradient-Based Adversarial and Out-of-Distribution Detection",
            venue="ICML Workshop",
            year=2022,
            url="https://arxiv.org/abs/2206.08255",
        )
    )

    hyperparameter_space = {
        "n_ones": [None, 2],
        "activation": ["sigmoid", "softmax"],
        "per_class": [True, False],
        "transform": ["log", "log1p"],
    }

    fitted_attribute = "centers"

    hyperparameters = {
        "n_ones": _check_n_ones,
        "activation": hp.choice("sigmoid", "softmax"),
        "per_class": hp.flag(),
        "transform": hp.choice(*_TRANSFORMS),
        "epochs": hp.integer(1),
        "lr": hp.real(0.0),
        "known_anomalies": hp.flag(),
        "seed": hp.integer(None),
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
        epochs: int = 100,
        lr: float = 1e-3,
        known_anomalies: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._set_model(model, params=params)
        self.params: list[str] | None = None
        if params is not None:
            self.params = resolve_params(self._require_model(), params)
        self._init_hyperparameters(locals())
        # fitted state
        self.input_shape: tuple[int, ...] | None = None
        self.num_classes: int | None = None
        self.feature_mean: Tensor | None = None
        self.feature_std: Tensor | None = None
        self.centers: Tensor | None = None
        self.precisions: Tensor | None = None
        self.classifier: nn.Sequential | None = None
        self.fitted_shrinkage: float | None = None

    # ------------------------------------------------------------------ helpers
    def _param_names(self) -> list[str]:
        if self.params is None:
            self.params = resolve_params(self._require_model())
        return self.params

    def _loss(self, num_classes: int) -> LossFn:
        n = num_classes if self.n_ones is None else self.n_ones
        if n > num_classes:
            raise ValueError(
                f"expected n_ones <= the model's {num_classes} outputs, got n_ones={self.n_ones}"
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

    def extract(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Squared gradient norms per parameter tensor (before ``transform``) and the logits.

        Both come from the same vectorised forward pass; ``predict(x)`` equals
        ``predict_structured(*extract(x))``.

        :param x: model inputs ``(B, ...)``
        :return: ``(norms, logits)`` of shapes ``(B, P)`` and ``(B, C)``
        :raises ValueError: for NaN/inf inputs, or a shape other than the fitted one
        """
        model = self._require_model()
        x = _base.check_inputs(x, self.input_shape, dtype=self._model_dtype())
        x = x.to(self._target_device())
        names = self._param_names()
        num_classes = self.num_classes
        if len(x) == 0:
            return torch.empty(0, len(names), device=x.device), torch.empty(
                0, num_classes or 0, device=x.device
            )
        if num_classes is None:
            num_classes = self._model_outputs(x)
        with _base.eval_mode(model):
            g, logits = per_sample_grad_features(
                model,
                x,
                None,
                self._loss(num_classes),
                names,
                reduce="sq_norm",
                chunk_size=CHUNK_SIZE,
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

    def _standardise(self, g: Tensor, fitted: _Fitted) -> Tensor:
        return (self._transform(g) - fitted.feature_mean) / fitted.feature_std

    def _fitted(self) -> _Fitted:
        """The fitted feature statistics and Gaussians.

        :raises RequiresFittingException: before fitting
        """
        mean, std = self.feature_mean, self.feature_std
        centers, precisions = self.centers, self.precisions
        if mean is None or std is None or centers is None or precisions is None:
            self._require_fitted()  # raises before the fit, with the package's message
            raise RequiresFittingException("ConfoundingGradients: the fitted state is incomplete")
        return _Fitted(mean, std, centers, precisions)

    # ------------------------------------------------------------------ fitting
    def fit(self, data_loader: DataLoader) -> Self:
        """Compute gradient features of the loader's inputs and fit the scorer(s).

        :param data_loader: yields ``(x, y)``: ID inputs with class labels ``>= 0``, optionally
            known anomalies with labels ``< 0`` (which train the supervised classifier with
            ``known_anomalies=True``, and are otherwise ignored with a warning)
        :return: self
        :raises ValueError: for an empty loader, NaN/inf inputs, a changing input shape,
            labels >= the model's number of outputs or an invalid hyperparameter
        """
        self._require_model()
        self._check_hyperparameters()
        return self.fit_collected(self.collect_fit_inputs(data_loader))

    def collect_fit_inputs(self, data_loader: DataLoader) -> dict[str, Any]:
        """The extraction pass of :meth:`fit`: gradient features, logits and labels of the
        loader's inputs.

        The tensors' rows can be concatenated across loaders (a distributed fit extracts one
        shard per process and gathers them) before :meth:`fit_collected`.

        :return: ``{"features": (N, P), "y": (N,), "logits": (N, C), "num_classes": C,
            "input_shape": shape of one input}``
        """
        self._require_model()
        feats, logits, ys = [], [], []
        input_shape = num_classes = None
        for x, y, num_classes in self._iter_classified_batches(data_loader):
            if input_shape is None:
                input_shape = tuple(x.shape[1:])
                self._loss(num_classes)  # validates n_ones early
            saved, self.num_classes = self.num_classes, num_classes
            try:
                g, out = self.extract(x)
            finally:
                self.num_classes = saved
            feats.append(g.cpu())
            logits.append(out.cpu())
            ys.append(y.cpu())
        return {
            "features": torch.cat(feats),
            "y": torch.cat(ys),
            "logits": torch.cat(logits),
            "num_classes": num_classes,
            "input_shape": input_shape,
        }

    def fit_collected(self, inputs: dict[str, Any]) -> Self:
        """Fit on the output of :meth:`collect_fit_inputs` (possibly gathered over processes).

        :return: self
        """
        inputs = dict(inputs)
        input_shape = inputs.pop("input_shape", None)
        self.input_shape = None
        self.fit_structured(**inputs)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        return self

    def fit_structured(
        self,
        features: Tensor,
        y: Tensor,
        logits: Tensor | None = None,
        *,
        num_classes: int | None = None,
    ) -> Self:
        """Fit on pre-computed features (as returned by :meth:`extract`).

        :param features: squared gradient norms ``(N, P)`` as returned by :meth:`extract`
        :param y: labels ``(N,)``: ``>= 0`` ID, ``< 0`` known anomaly
        :param logits: the classifier's logits ``(N, C)`` or predicted classes ``(N,)``, which
            select the per-class Gaussians; required if ``per_class``
        :param num_classes: number of model outputs (default: from ``logits``)
        :return: self
        :raises ValueError: for NaN features, fewer than two ID samples or a feature count that
            does not match the selected parameters
        """
        self._check_hyperparameters()
        if not isinstance(features, Tensor) or features.dim() != 2:
            raise ValueError(
                f"expected features of shape (N, P), got "
                f"{tuple(features.shape) if isinstance(features, Tensor) else type(features)}"
            )
        y = _base.check_labels(y, len(features)).cpu()
        keep = _base.known_rows(y, self.known_anomalies, "ConfoundingGradients")
        if not bool(keep.all()):
            features, y = features[keep.to(features.device)], y[keep]
            logits = logits[keep.to(logits.device)] if isinstance(logits, Tensor) else logits
        if torch.isnan(features).any():
            raise ValueError("expected features without NaN, got NaN")
        if self.model is not None and features.shape[1] != len(self._param_names()):
            raise ValueError(
                f"expected {len(self._param_names())} features (one per selected parameter "
                f"tensor), got {features.shape[1]}"
            )
        pred = self._predicted(logits, len(features))
        if num_classes is None and logits is not None:
            num_classes = logits.shape[1] if logits.dim() == 2 else int(pred.max()) + 1
        known = y < 0
        n_id = int((~known).sum())
        if n_id < 2:
            raise ValueError(f"expected at least 2 ID samples (labels >= 0), got {n_id}")
        device = self._target_device()
        t = self._transform(features.cpu())
        t_id = t[~known]
        mean = t_id.mean(0)
        std = t_id.std(0)
        # constant features (e.g. always-zero gradients) keep a small positive scale
        std = torch.where(std > 0, std, torch.ones_like(std)).clamp_min(1e-6)
        z_id = (t_id - mean) / std
        # covariances shrunk by the Ledoit-Wolf estimate
        center, precision, shrink = shrunk_gaussian(z_id)
        if self.per_class:
            # per_class needs logits (_predicted refuses None), which give num_classes
            assert num_classes is not None
            K = int(num_classes)
        else:
            K = 1
        centers = center.expand(K, -1).clone()
        precisions = precision.expand(K, -1, -1).clone()
        if self.per_class:
            pred_id = pred[~known]
            for k in range(K):  # K small Gaussians; each is a batched closed-form estimate
                z_k = z_id[pred_id == k]
                if len(z_k) >= _MIN_CLASS_SAMPLES:
                    centers[k], precisions[k], _ = shrunk_gaussian(z_k)
        self.feature_mean = mean.to(device)
        self.feature_std = std.to(device)
        self.centers = centers.to(device)
        self.precisions = precisions.to(device)
        self.fitted_shrinkage = shrink
        self.classifier = None
        if bool(known.any()):
            self.classifier = train_binary_mlp(
                (t - mean) / std,
                known.float(),
                HIDDEN,
                self.epochs,
                self.lr,
                WEIGHT_DECAY,
                BATCH_SIZE,
                self.seed,
                self._target_device(),
            )
        self.num_classes = int(num_classes) if num_classes is not None else None
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

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def predict_structured(self, features: Tensor, logits: Tensor | None = None) -> Tensor:
        """Outlier scores from pre-computed features (see :meth:`extract`); larger is more
        anomalous.

        :param features: squared gradient norms ``(B, P)``
        :param logits: the classifier's logits ``(B, C)`` or predicted classes ``(B,)``;
            required for the per-class Gaussians
        :raises RequiresFittingException: before fitting
        :raises ValueError: for a wrong number of features or missing logits
        """
        fitted = self._fitted()
        if not isinstance(features, Tensor) or features.dim() != 2:
            raise ValueError(
                f"expected features of shape (B, P), got "
                f"{tuple(features.shape) if isinstance(features, Tensor) else type(features)}"
            )
        if features.shape[1] != len(fitted.feature_mean):
            raise ValueError(
                f"expected {len(fitted.feature_mean)} features per sample, got {features.shape[1]}"
            )
        device = self._target_device()
        z = self._standardise(features.to(device), fitted)
        if self.classifier is not None:
            return self.classifier(z.float()).squeeze(1)
        if self.per_class:
            k = self._predicted(logits, len(z)).to(device)
            if len(k) and (int(k.min()) < 0 or int(k.max()) >= len(fitted.centers)):
                raise ValueError(
                    f"expected predicted classes in [0, {len(fitted.centers)}) as fitted, got "
                    f"classes up to {int(k.max())}"
                )
        else:
            k = torch.zeros(len(z), dtype=torch.long, device=device)
        d = z - fitted.centers[k]
        return torch.einsum("bi,bij,bj->b", d, fitted.precisions[k], d).float()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Fitted state as tensors and primitives only (``torch.load(weights_only=True)`` safe)."""
        fitted = self._fitted()
        own = dict(self.model.named_parameters()) if self.model is not None else {}
        names = list(self.params) if self.params is not None else []
        return self._pack_state(
            {
                "params": names,
                "param_shapes": [list(own[n].shape) for n in names if n in own],
                "input_shape": list(self.input_shape) if self.input_shape is not None else None,
                "num_classes": self.num_classes,
                "fitted_shrinkage": self.fitted_shrinkage,
                "feature_mean": fitted.feature_mean.detach().cpu(),
                "feature_std": fitted.feature_std.detach().cpu(),
                "centers": fitted.centers.detach().cpu(),
                "precisions": fitted.precisions.detach().cpu(),
                "classifier": (
                    {k: v.detach().cpu() for k, v in self.classifier.state_dict().items()}
                    if self.classifier is not None
                    else None
                ),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> Self:
        """Restore a state from :meth:`state_dict`, checked against this detector's model.

        :raises ValueError: if the state is malformed, from another version, or was fitted for a
            model with other parameters or another number of outputs
        """
        who = "ConfoundingGradients"
        hyper, state = self._unpack_state(state)
        try:
            names = [str(n) for n in state["params"]]
            shapes = [list(s) for s in state["param_shapes"]]
            input_shape = tuple(state["input_shape"]) if state["input_shape"] else None
            num_classes = state["num_classes"]
            tensors = {
                k: state[k].double()
                for k in ("feature_mean", "feature_std", "centers", "precisions")
            }
            clf_state = state["classifier"]
            fitted_shrinkage = state["fitted_shrinkage"]
            _check_n_ones("n_ones", hyper.get("n_ones"))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"expected a complete {who} state dict, missing {e}") from e
        P = len(names)
        K = len(tensors["centers"])
        if (
            len(shapes) != P
            or any(tensors[k].shape != (P,) for k in ("feature_mean", "feature_std"))
            or tensors["centers"].shape != (K, P)
            or tensors["precisions"].shape != (K, P, P)
            or (hyper.get("per_class") and K != num_classes)
        ):
            raise ValueError(f"corrupted {who} state: expected {P} features throughout")
        if self.model is not None:
            self._check_model(names, shapes, input_shape, num_classes)
        clf = None
        if clf_state is not None:
            clf = binary_mlp(P, HIDDEN)
            try:
                clf.load_state_dict(clf_state)
            except (RuntimeError, TypeError, AttributeError) as e:
                raise ValueError(f"corrupted {who} state: {e}") from e
            clf = clf.to(self._target_device()).eval().requires_grad_(False)
        device = self._target_device()
        self._restore_hyperparameters(hyper)
        self.params = names
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.fitted_shrinkage = fitted_shrinkage
        self.feature_mean = tensors["feature_mean"].to(device)
        self.feature_std = tensors["feature_std"].to(device)
        self.centers = tensors["centers"].to(device)
        self.precisions = tensors["precisions"].to(device)
        self.classifier = clf
        return self

    def _check_model(
        self,
        names: Sequence[str],
        shapes: Sequence[Sequence[int]],
        input_shape: tuple[int, ...] | None,
        num_classes: int | None,
    ) -> None:
        """Refuse a state fitted for a model with other parameters or outputs."""
        who = "ConfoundingGradients"
        check_param_shapes(self._require_model(), names, shapes, who)
        if input_shape is not None and num_classes is not None:
            probe = torch.zeros((1, *input_shape), device=self._target_device())
            got = self._model_outputs(probe)
            if got != num_classes:
                raise ValueError(
                    f"{who}: the state was fitted for a model with {num_classes} outputs, this "
                    f"model has {got}"
                )

    def __repr__(self) -> str:
        fitted = ""
        mean = self.feature_mean
        if self.centers is not None and mean is not None:
            kind = "classifier" if self.classifier is not None else "gaussian"
            fitted = f", fitted ({kind}, {len(mean)} features)"
        return f"ConfoundingGradients(n_ones={self.n_ones}, transform={self.transform!r}{fitted})"
