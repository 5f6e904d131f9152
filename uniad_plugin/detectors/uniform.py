"""The uniform framework of Zhao et al.: per-class hyperspheres on hidden activations.

How the detector works, top-down:

1. :meth:`UniformDetector.fit` runs the frozen classifier once over the ID data
   (:meth:`~UniformDetector.collect_fit_inputs`) and keeps, for a bounded sample of the
   inputs, the activations of the tapped layers (feature maps averaged over space), the labels
   and the classes the classifier ranks first.
2. A tenth of each class is held out; on the rest, each layer gets ``K`` per-class spheres
   (:class:`~uniad_plugin.nn.spheres.ClassSpheres`: whitened activations, class means as
   centres, the soft boundary's radii).
3. An input's score in a layer is :math:`d^2/R^2` under the sphere of the class the
   classifier predicts, and, in the hidden layers, the contrast of that sphere with the
   nearest of the rival classes ranked next by logit (:mod:`uniad_plugin.nn.rivals`).
4. The scores are standardised by their mean and standard deviation on the held-out ID
   inputs and summed.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import torch
from pytorch_ood.api import Paper, RequiresFittingException, StructuredDetector
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import Self

from uniad_plugin._utils import seeded_generator
from uniad_plugin.detectors import _base
from uniad_plugin.detectors._base import UniadDetector, hp
from uniad_plugin.nn.rivals import as_ranked, compact_ranking, kept_ranking, log_contrast
from uniad_plugin.nn.sampling import (
    BoundedSample,
    bounded_rows,
    capped_rows,
    class_cap,
    content_keys,
    position_keys,
    stratified_holdout,
)
from uniad_plugin.nn.spheres import ClassSpheres
from uniad_plugin.nn.taps import LayerTaps, default_layers, pool, resolve_layers

__all__ = ["OUTPUT_LAYERS", "PAPER", "UniformDetector"]

log = logging.getLogger(__name__)

#: the paper of the uniform framework (also cited by the unified benchmark)
PAPER = Paper(
    title="A Uniform Framework for Anomaly Detection in Deep Neural Networks",
    venue="Neural Processing Letters",
    year=2022,
    url="https://arxiv.org/abs/2110.03092",
)

#: the output layers: no rival contrast there, and the softmax's spheres are not whitened
OUTPUT_LAYERS = ("log_softmax", "softmax")


class _Spheres(NamedTuple):
    """The fitted spheres and what scoring needs of them (the fitted attributes, not ``None``)."""

    layers: list[str]
    spheres: list[ClassSpheres]
    num_classes: int
    rivals: int


class UniformDetector(UniadDetector, StructuredDetector):
    """One detector for out-of-distribution, adversarial and noise inputs.

    Implements *A Uniform Framework for Anomaly Detection in Deep Neural Networks* (Zhao et al.,
    Neural Processing Letters 2022): for every class :math:`k` and every tapped layer
    :math:`l` of the frozen classifier, a soft-boundary hypersphere (centre :math:`c_{lk}`,
    radius :math:`R_{lk}`, :math:`\\nu = 0.1`) on the layer's representation
    :math:`\\phi_l(z_l(x))` of the class's ID training inputs. An input is scored against the
    spheres of the class :math:`\\hat{k}` the classifier predicts for it:

    .. math::

        s_l(x) = \\frac{\\lVert \\phi_l(z_l(x)) - c_{l\\hat{k}} \\rVert^2}{R_{l\\hat{k}}^2},
        \\qquad
        S(x) = \\sum_j \\frac{s_j(x) - \\mu_j}{\\sigma_j}

    where the sum runs over the layers' scores and their rival contrasts
    :math:`\\log (s_{l\\hat{k}}(x) / \\min_j s_{lj}(x))` (``j`` among the ``rivals`` classes
    ranked next by logit; every layer but ``log_softmax`` and ``softmax``), and
    :math:`\\mu_j, \\sigma_j` are their mean and standard deviation on ID inputs held out
    from fitting the spheres. Larger is more anomalous.

    Our choices where the paper is open (the `docs page
    <../detectors/uniform.md#what-the-paper-states-and-what-we-chose>`_ gives the evidence):
    :math:`\\phi_l` is the whitening map of the layer (the inverse square root of the tied
    within-class covariance), so each sphere is a Mahalanobis ball of its class; the centres
    are the class means and :math:`R^2` the :math:`(1-\\nu)`-quantile of the class's squared
    distances, the soft boundary's optimum for that centre; feature maps are averaged over
    space; the default layers are each stage of the network, the head's input, and the
    log-softmax and softmax of the output (the softmax's spheres on the raw probabilities).

    :param model: the frozen, pre-trained classifier (never modified; run in eval mode)
    :param layers: layer names (``"name"`` for a module's output, ``"name:input"`` for its input,
        ``"logits"`` for the output, ``"log_softmax"`` / ``"softmax"`` for its log-softmax /
        softmax) or modules; ``None`` picks them from the model
        (:func:`~uniad_plugin.nn.taps.default_layers`)
    :param nu: the soft boundary's :math:`\\nu`: the fraction of each class's ID samples left
        outside its sphere
    :param rivals: how many classes, ranked next by logit after the predicted one, are
        searched for the nearest rival sphere (``0``: no rival contrasts)
    :param holdout: the fraction of each class's ID samples held out to standardise the scores
    :param max_fit_rows: the most ID samples the fit keeps (``None``: all of them). Beyond it,
        a seeded sample of the same number of samples of each class (smaller classes whole);
        see :mod:`uniad_plugin.nn.sampling`. The default keeps all of MNIST and CIFAR
    :param seed: seed of every random choice (the hold-out split, the ``max_fit_rows`` sample)
    """

    requires_fit = True

    info = _base.classification_info(PAPER)

    #: what :class:`~pytorch_ood.utils.GridSearch` may tune; the first value of each is the
    #: default
    hyperparameter_space = {"nu": [0.1, 0.05, 0.2], "rivals": [3, 0]}

    fitted_attribute = "spheres_"

    hyperparameters = {
        "nu": hp.real(0.0, 1.0, high_open=False),
        "rivals": hp.integer(0),
        "holdout": hp.real(0.0, 1.0),
        "max_fit_rows": hp.integer(1, optional=True),
        "seed": hp.integer(None),
    }

    def __init__(
        self,
        model: nn.Module | None,
        layers: Sequence[str | nn.Module] | None = None,
        *,
        nu: float = 0.1,
        rivals: int = 3,
        holdout: float = 0.1,
        max_fit_rows: int | None = 100_000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._set_model(model, layers=layers)
        self.layers: list[str] | None = None
        if layers is not None:
            self.layers = [s.name for s in resolve_layers(self._require_model(), layers)]
        self._init_hyperparameters(locals())
        self._default_layers: list[str] | None = None  # the model's, found by the first pass
        # the fitted state (scikit-learn's habit: trailing underscores, set by the fit only)
        self.layers_: list[str] | None = None
        self.spheres_: nn.ModuleList | None = None
        self.score_mean_: Tensor | None = None
        self.score_std_: Tensor | None = None
        self.rivals_: int | None = None
        self.num_classes_: int | None = None
        self.input_shape_: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ activations
    @torch.no_grad()
    def extract(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Activations of all tapped layers and the logits, from ONE forward pass.

        :param x: model inputs
        :return: ``(features, logits)``, features a list with one ``(B, D_l)`` tensor per layer
        """
        return self._extract(x)

    def _extract(
        self, x: Tensor, layers: Sequence[str] | None = None
    ) -> tuple[list[Tensor], Tensor]:
        model = self._require_model()
        with _base.eval_mode(model):
            layers = layers or self._layers_for(x)
            logits, feats = LayerTaps(model, layers, reduce=pool)(x)
        if logits.dim() != 2:
            raise ValueError(
                f"expected the model to return logits of shape (B, classes), got {tuple(logits.shape)}"
            )
        return feats, logits

    def _layers_for(self, x: Tensor) -> list[str]:
        """The layers tapped: those fitted, else those given, else the model's defaults
        (picked from a probe pass over ``x[:2]``)."""
        if self.layers_ is not None:
            return self.layers_
        if self.layers is not None:
            return self.layers
        if self._default_layers is None:  # a property of the model: found once
            with _base.eval_mode(self._require_model()):
                self._default_layers = default_layers(self._require_model(), x[:2])
        return self._default_layers

    # ------------------------------------------------------------------ fitting
    def fit(self, data_loader: DataLoader) -> Self:
        """Fit the hyperspheres on in-distribution data.

        :param data_loader: yields ``(x, y)`` batches of ID inputs and class labels
            ``0..K-1``; samples with labels < 0 are ignored with a warning, since this
            detector is fitted on ID data only
        :return: self
        :raises ValueError: for an empty loader, NaN/inf inputs, labels out of range, fewer
            than 2 ID samples or an invalid hyperparameter
        """
        return self.fit_collected(self.collect_fit_inputs(data_loader))

    def collect_fit_inputs(self, data_loader: DataLoader) -> dict[str, Any]:
        """The extraction pass of :meth:`fit`: the tapped layers' activations, labels and
        ranked classes of a bounded sample of the loader's ID samples (labels >= 0).

        Memory is bounded by ``max_fit_rows``, not by the data: each sample gets a key hashed
        from its input bytes and label under ``seed``, and of each class only the samples with
        the smallest keys are kept while the batches stream in
        (:class:`~uniad_plugin.nn.sampling.BoundedSample`). The rows of several calls (one
        shard per process of a distributed fit) can be concatenated, ``class_counts`` gaining
        one row per shard, before :meth:`fit_collected`.

        :return: ``{"features": [(n, D_l), ...], "y": (n,), "logits": (n, 1 + m) the
            predicted class and the ``m`` rivals ranked next, or ``(n,)`` the predicted
            classes where no ranking is needed, "keys": (n,) int64 sampling keys,
            "class_counts": (1, K) ID samples per class seen, "num_classes": K,
            "input_shape": the shape of one input, "layers": the tapped layers}``
        """
        self._require_model()
        self._check_hyperparameters()
        device = self._target_device()
        sample: BoundedSample | None = None
        unknown = 0
        num_classes = input_shape = layers = None
        for x, y in self._iter_batches(data_loader):
            known = y >= 0  # known anomalies are never forwarded: ID batches stay as given
            if not bool(known.all()):
                unknown += int((~known).sum())
                x, y = x[known.to(x.device)], y[known]
            if len(x) == 0:
                continue
            x = x.to(device)
            if layers is None:
                layers = self._layers_for(x)
                log.info("UniformDetector layers: %s", layers)
            with torch.no_grad():
                feats, logits = self._extract(x, layers)
            num_classes, input_shape = logits.shape[1], tuple(x.shape[1:])
            _base.check_label_range(y, num_classes, "UniformDetector")
            if sample is None:
                sample = BoundedSample(num_classes, self.max_fit_rows)
            ranked = compact_ranking(logits, self._rivals_for(layers, num_classes))
            keys = content_keys(x, y, self.seed).cpu()
            sample.add(keys, y.cpu(), [ranked.cpu(), *(f.cpu() for f in feats)])
        if unknown:
            warnings.warn(
                f"UniformDetector is fitted on in-distribution data only; ignoring {unknown} "
                "samples with labels < 0",
                stacklevel=3,
            )
        if sample is None:
            raise ValueError("UniformDetector: expected ID samples with labels >= 0, got none")
        keys, y, (ranked, *features) = sample.finish()
        return {
            "features": features,
            "y": y,
            "logits": ranked,
            "keys": keys,
            "class_counts": sample.counts[None, :].clone(),
            "num_classes": num_classes,
            "input_shape": input_shape,
            "layers": layers,
        }

    def fit_collected(self, inputs: dict[str, Any]) -> Self:
        """Fit on the output of :meth:`collect_fit_inputs` (possibly gathered over processes;
        ``max_fit_rows`` is applied again to the gathered rows).

        :return: self
        """
        inputs = dict(inputs)
        input_shape = inputs.pop("input_shape", None)
        self.fit_structured(**inputs)
        self.input_shape_ = tuple(input_shape) if input_shape is not None else None
        return self

    def fit_structured(
        self,
        features: Sequence[Tensor],
        y: Tensor,
        logits: Tensor | None = None,
        *,
        num_classes: int | None = None,
        keys: Tensor | None = None,
        class_counts: Tensor | None = None,
        layers: Sequence[str] | None = None,
    ) -> Self:
        """Fit on pre-extracted activations (one extraction can serve many detectors).

        :param features: one tensor per layer, ``(N, D_l)`` or ``(N, C_l, H, W)`` (averaged
            over space here), as returned by :meth:`extract`
        :param y: class labels ``(N,)``; labels < 0 are ignored with a warning
        :param logits: the classifier's logits ``(N, K)`` for the same inputs, ranked classes
            as :meth:`collect_fit_inputs` returns them, or predicted classes ``(N,)`` (enough
            only where the rivals need no ranking: ``rivals=0`` or ``rivals >= K - 1``); they
            pick the spheres of the held-out inputs as at test time. ``None``: the labels
        :param num_classes: number of classes :math:`K`; defaults to ``y.max() + 1``
        :param keys: ``(N,)`` int64 sampling keys (the smallest of each class are kept beyond
            ``max_fit_rows``); ``None``: keys drawn from ``seed`` by position
        :param class_counts: ID samples per class of the data the rows were sampled from,
            ``(K,)`` or ``(shards, K)`` (summed); ``None``: the rows are all the data
        :param layers: the names of the layers ``features`` come from (``None``: the
            detector's ``layers``, else the model's default layers if :meth:`extract` has
            found them, else ``layer0``, ``layer1``, ...)
        :return: self
        """
        self._check_hyperparameters()
        zs, y, ranked, K, keys, layers = self._checked_fit_inputs(
            features, y, logits, num_classes, keys, layers
        )
        keep = self._bounded_rows(keys, y, K, class_counts)
        if keep is not None:
            zs, y, ranked = [z[keep] for z in zs], y[keep], ranked[keep]
        gen = seeded_generator(self.seed)
        held = stratified_holdout(y, K, self.holdout, gen)
        if int(held.sum()) < 2:
            warnings.warn(
                f"UniformDetector: {len(y)} ID samples are too few to hold out {self.holdout:.0%} "
                "of each class; the scores are standardised on the samples the spheres are "
                "fitted on (an optimistic scale: fit on more samples per class)",
                stacklevel=2,
            )
            held = torch.ones_like(held)
        fit_rows = torch.nonzero(~held).flatten()
        if len(fit_rows) == 0 or (torch.bincount(y[fit_rows], minlength=K) == 0).any():
            fit_rows = torch.arange(len(y))  # tiny classes: every row fits the spheres
        fit_z, fit_y = [z[fit_rows] for z in zs], y[fit_rows]
        missing = torch.nonzero(torch.bincount(fit_y, minlength=K) == 0).flatten().tolist()
        if missing:
            warnings.warn(
                f"UniformDetector: no ID samples of class(es) {missing} in the fit data; their "
                "spheres are fitted on all classes' samples pooled, and inputs the model "
                "assigns to them are scored against those",
                stacklevel=2,
            )
            fit_z, fit_y = _pooled_classes(fit_z, fit_y, missing, gen)
        device = self._target_device()
        self.spheres_ = nn.ModuleList(
            ClassSpheres(K, z.shape[1], whiten=name != "softmax")
            .to(device)
            .fit(z.to(device), fit_y.to(device), self.nu)
            for z, name in zip(fit_z, layers)
        )
        self.num_classes_ = K
        self.rivals_ = self._rivals_for(layers, K)
        held_rows = torch.nonzero(held).flatten()
        raw = torch.cat(
            [
                self._raw_scores([z[i].to(device) for z in zs], ranked[i].to(device))
                for i in held_rows.split(4096)
            ]
        )
        self.score_mean_ = raw.mean(0)
        self.score_std_ = raw.std(0).nan_to_num(1.0).clamp_min(1e-12)
        return self

    def _checked_fit_inputs(
        self,
        zs: Sequence[Tensor],
        y: Tensor,
        logits: Tensor | None,
        num_classes: int | None,
        keys: Tensor | None,
        layers: Sequence[str] | None,
    ) -> tuple[list[Tensor], Tensor, Tensor, int, Tensor | None, list[str]]:
        """The checked, pooled ID rows, labels, ranked classes, ``K``, keys (``None`` if
        not given) and layer names; sets :attr:`layers_`."""
        if len(zs) == 0:
            raise ValueError("expected at least one layer of activations, got none")
        y = _base.check_labels(y, len(zs[0]))
        rows = [pool(_base.check_inputs(z, None, "activations")).float() for z in zs]
        if any(len(z) != len(y) for z in rows):
            raise ValueError(
                f"expected every layer to have {len(y)} rows, got {[len(z) for z in rows]}"
            )
        if keys is not None and (
            not isinstance(keys, Tensor) or keys.dtype != torch.int64 or keys.shape != y.shape
        ):
            got = (keys.dtype, tuple(keys.shape)) if isinstance(keys, Tensor) else type(keys)
            raise ValueError(f"expected int64 keys of shape ({len(y)},), got {got}")
        names = list(layers or self.layers or self._default_layers or ())
        if not names:
            names = [f"layer{i}" for i in range(len(rows))]
        if len(names) != len(rows):
            raise ValueError(
                f"expected {len(names)} layers of activations ({names}), got {len(rows)}"
            )
        extra = [t for t in (logits, keys) if t is not None]
        split, y = _base.split_known([*rows, *extra], y, "UniformDetector")
        rows, extra = split[: len(rows)], split[len(rows) :]
        logits = extra.pop(0) if logits is not None else None
        keys = extra.pop(0) if keys is not None else None
        if len(y) < 2:
            raise ValueError(
                f"UniformDetector: expected at least 2 ID samples with labels >= 0, got {len(y)}"
            )
        K = int(num_classes) if num_classes is not None else int(y.max()) + 1
        _base.check_label_range(y, K, "UniformDetector")
        ranked = kept_ranking(y if logits is None else logits, K, self._rivals_for(names, K))
        self.layers_ = names
        return rows, y, ranked, K, keys, names

    # ------------------------------------------------------------------ the fit's sample
    def rows_kept(self, keys: Tensor, y: Tensor, class_counts: Tensor) -> Tensor | None:
        """The rows the ``max_fit_rows`` bound keeps of collected rows: indices into ``keys``
        and ``y``, or ``None`` where the bound keeps everything (a distributed fit agrees on
        them before the rows travel).

        :param class_counts: ``(K,)`` or ``(shards, K)`` ID samples per class (summed)
        """
        counts = torch.as_tensor(class_counts).long().cpu()
        counts = counts.reshape(-1, counts.shape[-1]).sum(0)
        if class_cap(counts, self.max_fit_rows) is None:
            return None
        return bounded_rows(keys, y, counts.to(y.device), self.max_fit_rows)

    @staticmethod
    def select_collected(inputs: dict[str, Any], rows: Tensor) -> dict[str, Any]:
        """The output of :meth:`collect_fit_inputs` restricted to ``rows`` (in that order);
        the class counts stay those of all the data."""
        out = dict(inputs)
        out["features"] = [f[rows] for f in inputs["features"]]
        for name in ("y", "logits", "keys"):
            if inputs.get(name) is not None:
                out[name] = inputs[name][rows]
        return out

    def _bounded_rows(
        self, keys: Tensor | None, y: Tensor, K: int, class_counts: Tensor | None
    ) -> Tensor | None:
        """The rows of the ``max_fit_rows`` sample, ``None`` below the bound (keep all)."""
        per_class = torch.bincount(y, minlength=K)
        counts = per_class
        if class_counts is not None:
            counts = torch.as_tensor(class_counts).long().cpu()
            counts = counts.reshape(-1, counts.shape[-1]).sum(0) if counts.dim() else counts
            if counts.shape != (K,) or (counts < per_class.cpu()).any():
                raise ValueError(
                    f"expected class_counts of shape ({K},) or (shards, {K}), at least the rows "
                    f"given per class {per_class.tolist()}, got {counts.tolist()}"
                )
        cap = class_cap(counts, self.max_fit_rows)
        if cap is None:
            return None
        need = math.ceil(1 / self.holdout)
        if cap < need:
            enough = int(torch.clamp(counts, max=need).sum())
            raise ValueError(
                f"expected max_fit_rows to keep at least {need} ID samples per class (to hold out "
                f"{self.holdout:.0%} of each), but max_fit_rows={self.max_fit_rows} keeps {cap} per "
                f"class of {int(counts.sum())} samples in {K} classes; set max_fit_rows >= "
                f"{enough} (or raise holdout)"
            )
        if keys is None:
            keys = position_keys(len(y), self.seed, y.device)
        keep = capped_rows(keys, y, K, cap)
        log.info(
            "UniformDetector: fitting on %d of %d ID samples (max_fit_rows=%d, %d per class)",
            len(keep),
            int(counts.sum()),
            self.max_fit_rows,
            cap,
        )
        return keep

    # ------------------------------------------------------------------ scoring
    def _rivals_for(self, layers: Sequence[str], num_classes: int) -> int:
        """The rivals searched per input: ``min(rivals, K - 1)``, 0 without a hidden layer."""
        hidden = any(name not in OUTPUT_LAYERS for name in layers)
        return min(self.rivals, num_classes - 1) if hidden else 0

    @property
    def num_classes(self) -> int | None:
        """The number of classes fitted (the name every detector of the package shares)."""
        return self.num_classes_

    @property
    def score_names(self) -> list[str]:
        """The names of the columns of :meth:`layer_scores`: every layer, then
        ``"contrast:<layer>"`` for every hidden layer when the fit searched rivals."""
        layers = list(self.layers_ or self.layers or ())
        if not self.rivals_:
            return layers
        return layers + [f"contrast:{name}" for name in layers if name not in OUTPUT_LAYERS]

    def _fitted_spheres(self) -> _Spheres:
        """The fitted layers, spheres, class count and rivals.

        :raises RequiresFittingException: before the spheres are fitted
        """
        layers, spheres, K, rivals = self.layers_, self.spheres_, self.num_classes_, self.rivals_
        if layers is None or spheres is None or K is None or rivals is None:
            self._require_fitted()  # raises before the fit, with the package's message
            raise RequiresFittingException("UniformDetector: the fitted state is incomplete")
        return _Spheres(layers, [cast(ClassSpheres, s) for s in spheres], K, rivals)

    def _score_scale(self) -> tuple[Tensor, Tensor]:
        """The held-out scores' mean and standard deviation.

        :raises RequiresFittingException: before the fit
        """
        mean, std = self.score_mean_, self.score_std_
        if mean is None or std is None:
            self._require_fitted()
            raise RequiresFittingException("UniformDetector: the fitted state is incomplete")
        return mean, std

    def _raw_scores(self, zs: Sequence[Tensor], classes: Tensor) -> Tensor:
        """Scores ``(B, L + C)`` before standardisation: each layer's :math:`d^2/R^2` under
        the predicted class's sphere, then each hidden layer's rival contrast. ``classes``:
        logits ``(B, K)``, ranked classes ``(B, c)`` or predicted classes ``(B,)``."""
        fitted = self._fitted_spheres()
        K = fitted.num_classes
        ranked = as_ranked(classes, K, fitted.rivals).clamp(0, K - 1)
        own, contrasts = [], []
        for z, sphere, name in zip(zs, fitted.spheres, fitted.layers):
            ratios = sphere.ratios(z.float(), ranked)
            own.append(ratios[:, 0])
            if ranked.shape[1] > 1 and name not in OUTPUT_LAYERS:
                contrasts.append(log_contrast(ratios))
        return torch.stack(own + contrasts, dim=1)

    def _standardised(self, zs: Sequence[Tensor], classes: Tensor) -> Tensor:
        mean, std = self._score_scale()
        return (self._raw_scores(zs, classes) - mean) / std

    @torch.no_grad()
    def layer_scores(self, x: Tensor) -> Tensor:
        """The standardised scores, one column per name in :attr:`score_names` (the layers,
        then their rival contrasts); :meth:`predict` is their row sum."""
        self._require_fitted()
        x = _base.check_inputs(x, self.input_shape_, dtype=self._model_dtype())
        x = x.to(self._target_device())
        if len(x) == 0:
            return torch.empty(0, len(self.score_names), device=x.device)
        feats, logits = self.extract(x)
        # activations that overflow (huge inputs) make NaN distances: most anomalous
        return torch.nan_to_num(self._standardised(feats, logits), nan=float("inf"))

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

    def differentiable_score(self, x: Tensor) -> Tensor:
        """:meth:`predict` with autograd enabled, for white-box (adaptive) attacks.

        The sphere is still chosen by the predicted class and the rivals by the logits'
        ranking (piecewise constant choices); everything else is differentiable in ``x``.
        """
        self._require_fitted()
        x = _base.check_inputs(x, self.input_shape_, dtype=self._model_dtype())
        feats, logits = self._extract(x.to(self._target_device()))
        return self._standardised(feats, logits).sum(dim=1)

    @torch.no_grad()
    def predict_structured(
        self, features: Sequence[Tensor], logits: Tensor | None = None
    ) -> Tensor:
        """Outlier scores from pre-extracted activations.

        :param features: one tensor per fitted layer, ``(B, D_l)`` or ``(B, C_l, H, W)``, as
            returned by :meth:`extract`
        :param logits: the classifier's logits ``(B, K)`` or predicted classes ``(B,)``
            (required: they pick the sphere, and the logits rank the rivals)
        :return: scores of shape ``(B,)``
        """
        self._require_fitted()
        if logits is None:
            raise ValueError("expected the classifier's logits or predicted classes, got None")
        fitted = self._fitted_spheres()
        if len(features) != len(fitted.spheres):
            raise ValueError(
                f"expected {len(fitted.spheres)} layers of activations ({fitted.layers}), "
                f"got {len(features)}"
            )
        device = self._target_device()
        zs = [pool(_base.check_inputs(z, None, "activations")).to(device) for z in features]
        for z, sphere, name in zip(zs, fitted.spheres, fitted.layers):
            if z.shape[1] != sphere.in_dim:
                raise ValueError(
                    f"expected {sphere.in_dim} features for layer {name!r}, got {z.shape[1]}"
                )
        if logits.dim() == 2 and logits.shape[1] != fitted.num_classes:
            raise ValueError(
                f"expected logits of {fitted.num_classes} classes (as fitted), got {logits.shape[1]}"
            )
        if len(logits) != len(zs[0]):
            raise ValueError(f"expected {len(zs[0])} logits or classes, got {len(logits)}")
        return self._standardised(zs, logits.to(device)).sum(dim=1)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Fitted state as tensors and primitives only (``torch.load(weights_only=True)`` safe)."""
        self._require_fitted()
        fitted, (mean, std) = self._fitted_spheres(), self._score_scale()
        return self._pack_state(
            {
                "layers": list(fitted.layers),
                "input_shape": list(self.input_shape_) if self.input_shape_ else None,
                "num_classes": fitted.num_classes,
                "rivals": fitted.rivals,
                "score_mean": mean.detach().cpu(),
                "score_std": std.detach().cpu(),
                "spheres": [
                    {k: v.detach().cpu() for k, v in s.state_dict().items()} for s in fitted.spheres
                ],
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> Self:
        """Restore a state from :meth:`state_dict`, checked against this detector's model.

        :raises ValueError: if the state is malformed, or was fitted for a model with other
            layers, layer sizes or class count
        """
        hyper, state = self._unpack_state(state)
        try:
            layers = [str(name) for name in state["layers"]]
            num_classes, rivals = int(state["num_classes"]), int(state["rivals"])
            input_shape = tuple(state["input_shape"]) if state["input_shape"] else None
            mean, std = state["score_mean"], state["score_std"]
            sphere_states = list(state["spheres"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"expected a complete UniformDetector state dict, missing {e}") from e
        spheres = nn.ModuleList()
        for s, name in zip(sphere_states, layers):
            try:
                sphere = ClassSpheres(num_classes, s["center"].shape[1], whiten=name != "softmax")
                sphere.load_state_dict(s)
            except (KeyError, AttributeError, IndexError, RuntimeError) as e:
                raise ValueError(f"corrupted UniformDetector state: {e}") from e
            spheres.append(sphere)
        names = layers + [f"contrast:{n}" for n in layers if n not in OUTPUT_LAYERS] * bool(rivals)
        if len(spheres) != len(layers) or any(len(t) != len(names) for t in (mean, std)):
            raise ValueError(
                f"corrupted UniformDetector state: {len(layers)} layers, {len(spheres)} sphere "
                f"sets and score statistics of widths {len(mean)} and {len(std)}, expected "
                f"{len(names)}"
            )
        if self.model is not None:
            resolve_layers(self.model, layers)  # raises ValueError for unknown layers
            if input_shape is not None:
                self._check_model(layers, input_shape, [s.in_dim for s in spheres], num_classes)
        self._restore_hyperparameters(hyper)
        device = self._target_device()
        self.layers_, self.num_classes_, self.rivals_ = layers, num_classes, rivals
        self.input_shape_ = input_shape
        self.spheres_ = spheres.to(device)
        self.score_mean_, self.score_std_ = mean.to(device), std.to(device)
        return self

    def _check_model(self, layers, input_shape, in_dims, num_classes) -> None:
        """Refuse a state whose layers this model lacks or has with other sizes."""
        probe = torch.zeros((1, *input_shape), device=self._target_device())
        saved = self.layers_
        self.layers_ = layers
        try:
            feats, logits = self.extract(probe.to(self._model_dtype()))
        except Exception as e:
            raise ValueError(
                f"the state was fitted for inputs of shape {input_shape}, which this "
                f"model cannot process: {e}"
            ) from e
        finally:
            self.layers_ = saved
        got = [f.shape[1] for f in feats]
        if got != in_dims or logits.shape[1] != num_classes:
            raise ValueError(
                f"the state was fitted for a model with layer sizes {in_dims} and "
                f"{num_classes} classes, this model has {got} and {logits.shape[1]}"
            )

    def __repr__(self) -> str:
        fitted = f", fitted on {self.num_classes_} classes" if self.spheres_ is not None else ""
        layers = self.layers_ or self.layers
        return f"UniformDetector(layers={layers}, nu={self.nu}, rivals={self.rivals}{fitted})"


def _pooled_classes(
    zs: list[Tensor], y: Tensor, missing: list[int], gen: torch.Generator
) -> tuple[list[Tensor], Tensor]:
    """The rows ``zs``, ``y`` plus, for each class in ``missing``, a seeded sample of all rows
    relabelled as that class (as many rows as the largest class has, at most all of them)."""
    n = min(len(y), int(torch.bincount(y).max()))
    pick = torch.randperm(len(y), generator=gen)[:n].to(y.device)
    zs = [torch.cat([z, *(z[pick] for _ in missing)]) for z in zs]
    extra = [torch.full((n,), k, dtype=y.dtype, device=y.device) for k in missing]
    return zs, torch.cat([y, *extra])
