"""The uniform framework of Zhao et al.: per-class hyperspheres on hidden activations."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from pytorch_ood.api import (
    Paper,
    StructuredDetector,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import Self

from uniad_plugin._utils import seeded_generator
from uniad_plugin.detectors import _base
from uniad_plugin.detectors._base import UniadDetector, hp
from uniad_plugin.detectors._uniform_bound import UniformBound
from uniad_plugin.detectors._uniform_roles import UniformRoles
from uniad_plugin.detectors._uniform_state import UniformState
from uniad_plugin.nn.pvalues import log_survival, survival_knots
from uniad_plugin.nn.rivals import as_ranked, compact_ranking, kept_ranking, rival_scores
from uniad_plugin.nn.sampling import (
    BoundedSample,
    content_keys,
    stratified_holdout,
)
from uniad_plugin.nn.svdd import SVDDTraining, fit_layer_spheres, layer_scores
from uniad_plugin.nn.taps import LayerTaps, default_layers, pool, resolve_layers

__all__ = ["PAPER", "UniformDetector"]

log = logging.getLogger(__name__)

#: the paper of the uniform framework (also cited by the unified benchmark)
PAPER = Paper(
    title="A Uniform Framework for Anomaly Detection in Deep Neural Networks",
    venue="Neural Processing Letters",
    year=2022,
    url="https://arxiv.org/abs/2110.03092",
)


class UniformDetector(UniformBound, UniformRoles, UniformState, UniadDetector, StructuredDetector):
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

    with :math:`\\mu_l, \\sigma_l` the mean and standard deviation of :math:`s_l` on ID inputs
    held out from fitting the spheres (``fusion="fisher"``: :math:`-\\sum_l \\log p_l(x)`,
    :math:`p_l(x)` the fraction of those inputs scoring at least :math:`s_l(x)`, see
    :mod:`uniad_plugin.nn.pvalues`). Larger is more anomalous.

    In every tapped layer but ``log_softmax`` and ``softmax`` (``contrast``), a second score
    contrasts the predicted class's sphere with the nearest of the spheres of the ``rivals``
    classes ranked next by logit, :math:`\\log (s_{l\\hat{k}}(x) / \\min_j s_{lj}(x))`, fused like the others:
    an input pushed across a decision boundary often still sits closer to its source class.

    The softmax layer's spheres (``encoder_free``) have no encoder: :math:`\\phi` is the
    identity there, the centre is the class's mean probability vector. Feature maps are
    averaged over a grid of up to 4 x 4 regions (``pooling="grid"``).

    Stated by the paper: per-class one-class hyperspheres with a soft boundary and
    :math:`\\nu = 0.1` on representations from inside the frozen network, fitted on ID data
    only, no input preprocessing, no knowledge of OOD sets or attacks. Our design choices
    (layers, pooling, whitening, encoder, sphere at test time, rival contrasts, score, fusion)
    are listed on the `docs page
    <../detectors/uniform.md#what-the-paper-states-and-what-we-chose>`_; layers, pooling,
    whitening, encoder and score are varied in ``benchmarks/uniform_ablation.py``, the fusion,
    the pooling, the softmax layer's spheres and the rival contrasts in
    ``benchmarks/uniform_fusion.py``, the sphere at test time in ``uniform_defaults.py``.

    :param model: the frozen, pre-trained classifier (never modified; run in eval mode)
    :param layers: layer names (``"name"`` for a module's output, ``"name:input"`` for its input,
        ``"logits"`` for the output, ``"log_softmax"`` / ``"softmax"`` for its log-softmax /
        softmax) or modules; ``None``
        picks them from the model
    :param nu: soft-boundary :math:`\\nu`, the fraction of ID samples allowed outside a sphere
    :param hidden: hidden widths of each encoder :math:`\\phi`
    :param rep_dim: output dimension of each encoder
    :param epochs: training epochs of the spheres
    :param warmup_epochs: epochs with :math:`R = 0` (one-class objective) before radii are set;
        ``None``: ``min(5, epochs // 2)``, recomputed at every fit
    :param lr: Adam learning rate
    :param weight_decay: Adam weight decay
    :param batch_size: samples per class in each batched training step
    :param score: ``"ratio"`` (:math:`d^2/R^2`) or ``"difference"`` (:math:`d^2-R^2`)
    :param holdout: fraction of ID fit data held out to standardise the per-layer scores
    :param pooling: how feature maps become vectors (:func:`~uniad_plugin.nn.taps.pool`):
        ``"grid"`` (means over up to 4 x 4 regions, at most 1,024 features; the default),
        ``"gridstd"`` (and each region's standard deviation), ``"avg"`` or ``"avgmax"``
    :param encoder_free: names of layers whose spheres sit on the raw activations: no encoder
        and no whitening, each class's centre is its mean activation and :math:`R^2` the
        :math:`(1-\\nu)`-quantile of its squared distances. ``None`` (the default): the
        ``"softmax"`` layer if it is tapped; a sequence must name tapped layers
    :param contrast: names of layers whose predicted-class score is also contrasted with the
        nearest rival class's sphere (:mod:`uniad_plugin.nn.rivals`), one more fused score per
        layer. ``None`` (the default): every tapped layer but ``"log_softmax"`` and
        ``"softmax"``; a sequence must name tapped layers
    :param rivals: how many classes, ranked next by logit after the predicted one, are
        searched for the nearest rival sphere (at most ``K - 1``; ``0``: no contrast). Scoring
        costs one more pass of the contrasted layers' spheres per rival
    :param whiten: normalisation of each layer before the encoders: ``"full"`` (whitening with
        the tied within-class covariance) or ``"diag"`` (per-feature standardisation)
    :param fusion: how the layers' scores are combined: ``"zsum"`` (the sum of z-scores; the
        default) or ``"fisher"`` (the sum of :math:`-\\log p_l`, the earlier default)
    :param max_fit_rows: the most ID samples the fit keeps (``None``: all of them). Beyond it, a
        seeded sample of each class is kept: the same number :math:`c` of each class (classes
        with fewer samples whole), the largest :math:`c` that keeps at most ``max_fit_rows`` in
        all; the hold-out rows come from that sample. The default, 100,000, keeps all of MNIST,
        CIFAR-10/100 and the digits, and 100 images per class of ImageNet. The extraction pass
        of :meth:`fit` holds at most about 1.5 times ``max_fit_rows`` rows of activations at
        once. See :mod:`uniad_plugin.nn.sampling` (our choice; the paper fits on all data)
    :param seed: seed of every random choice (hold-out split, initialisation, minibatches,
        the sample of ``max_fit_rows``)
    """

    requires_fit = True

    info = _base.classification_info(PAPER)

    #: what :class:`~pytorch_ood.utils.GridSearch` may tune: 12 fits, over the options the
    #: validation splits showed to matter (the soft boundary, the grid's standard deviations,
    #: the rival contrasts); the first value of each is the default
    hyperparameter_space = {
        "nu": [0.1, 0.05, 0.2],
        "pooling": ["grid", "gridstd"],
        "rivals": [3, 0],
    }

    fitted_attribute = "spheres"

    hyperparameters = {
        "nu": hp.real(0.0, 1.0, high_open=False),
        "hidden": hp.positive_ints(),
        "rep_dim": hp.integer(1),
        "epochs": hp.integer(1),
        "warmup_epochs": hp.integer(0, optional=True),
        "lr": hp.real(0.0),
        "weight_decay": hp.real(0.0, low_open=False),
        "batch_size": hp.integer(1),
        "score": hp.choice("ratio", "difference"),
        "holdout": hp.real(0.0, 1.0),
        "pooling": hp.choice("grid", "gridstd", "avg", "avgmax"),
        "encoder_free": hp.names(optional=True),
        "contrast": hp.names(optional=True),
        "rivals": hp.integer(0),
        "whiten": hp.choice("full", "diag"),
        "fusion": hp.choice("zsum", "fisher"),
        "max_fit_rows": hp.integer(1, optional=True),
        "seed": hp.integer(None),
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
        pooling: str = "grid",
        encoder_free: Sequence[str] | None = None,
        contrast: Sequence[str] | None = None,
        rivals: int = 3,
        whiten: str = "full",
        fusion: str = "zsum",
        max_fit_rows: int | None = 100_000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._set_model(model, layers=layers)
        self.layers: list[str] | None = None
        if layers is not None:
            self.layers = [s.name for s in resolve_layers(model, layers)]
        self._init_hyperparameters(locals())
        # fitted state
        self.spheres: nn.ModuleList | None = None
        self.fusion_mean: Tensor | None = None
        self.fusion_std: Tensor | None = None
        self.fusion_knots: Tensor | None = None
        self.fusion_slope: Tensor | None = None
        #: the fused scores' names and the rivals searched at fit time (the held-out
        #: statistics belong to them)
        self.fitted_scores: tuple[list[str], int] | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.num_classes: int | None = None

    def _derive(self) -> None:
        """The warm-up in effect: ``warmup_epochs``, or ``min(5, epochs // 2)`` for ``None``."""
        warmup = self.warmup_epochs
        if warmup is None:
            warmup = min(5, self.epochs // 2)
        if not 0 <= warmup <= self.epochs:
            raise ValueError(
                f"expected epochs >= 1 and 0 <= warmup_epochs <= epochs, got {self.epochs}, "
                f"{warmup}"
            )
        self._warmup_epochs = warmup

    # ------------------------------------------------------------------ helpers
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
            with _base.eval_mode(model):
                self.layers = default_layers(model, x[:2])
            log.info("UniformDetector layers: %s", self.layers)
        with _base.eval_mode(model):
            logits, feats = self._taps()(x)
        if logits.dim() != 2:
            raise ValueError(
                f"expected the model to return logits of shape (B, classes), got {tuple(logits.shape)}"
            )
        return feats, logits

    # ------------------------------------------------------------------ fitting
    def fit(self, data_loader: DataLoader) -> Self:
        """Fit the hyperspheres on in-distribution data.

        One extraction pass (:meth:`collect_fit_inputs`), then :meth:`fit_collected`.

        :param data_loader: yields ``(x, y)`` batches of ID inputs and class labels
            ``0..K-1`` (every class must occur); samples with labels < 0 are ignored with a
            warning, since this detector is fitted on ID data only
        :return: self
        :raises ValueError: for an empty loader, NaN/inf inputs, labels out of range, a class
            without samples or an invalid hyperparameter
        """
        self._require_model()
        self._check_hyperparameters()
        return self.fit_collected(self.collect_fit_inputs(data_loader))

    def collect_fit_inputs(self, data_loader: DataLoader) -> dict[str, Any]:
        """The extraction pass of :meth:`fit`: the tapped layers' activations, labels and
        predicted classes of a bounded sample of the loader's ID samples (labels >= 0).

        Memory is bounded by ``max_fit_rows``, not by the data: each sample gets a key hashed
        from its input bytes and label under ``seed`` (:func:`~uniad_plugin.nn.sampling.content_keys`),
        and of each class only the samples with the smallest keys are kept while the batches
        stream in (:class:`~uniad_plugin.nn.sampling.BoundedSample`); every sample is kept, in
        the loader's order, while there are at most ``max_fit_rows``.

        The tensors' rows can be concatenated across loaders (a distributed fit extracts one
        shard per process and gathers them, ``class_counts`` gaining one row per shard) before
        :meth:`fit_collected`, which takes the sample again from the union: the same rows as
        one pass over all the shards' samples, in any order.

        :return: ``{"features": [(n, D_l), ...], "y": (n,), "logits": (n, 1 + m) the predicted
            class and the ``m`` rival classes ranked next by logit (see ``rivals``), or ``(n,)``
            the predicted classes where no ranking is needed,
            "keys": (n,) int64 sampling keys, "class_counts": (1, K) ID samples per class seen
            (kept or not), "num_classes": K, "input_shape": shape of one input}``
        """
        self._require_model()
        self._check_hyperparameters()
        device = self._target_device()
        sample: BoundedSample | None = None
        unknown = 0  # samples with labels < 0, for the warning about known anomalies
        num_classes = input_shape = None
        for x, y in self._iter_batches(data_loader):
            known = y >= 0  # known anomalies are never forwarded: ID batches stay as given
            if not bool(known.all()):
                unknown += int((~known).sum())
                x, y = x[known.to(x.device)], y[known]
            if len(x) == 0:
                continue
            x = x.to(device)
            feats, logits = self.extract(x)
            if sample is None:  # a bad name fails before the whole pass, not after
                self._encoder_free()
                self._contrast_layers()
            num_classes = logits.shape[1]
            input_shape = tuple(x.shape[1:])
            _base.check_label_range(y, num_classes, "UniformDetector")
            if sample is None:
                sample = BoundedSample(num_classes, self.max_fit_rows)
            keys = content_keys(x, y, self.seed).cpu()
            ranked = compact_ranking(logits, self._rivals_in_effect(num_classes))
            sample.add(keys, y.cpu(), [ranked.cpu(), *(f.cpu() for f in feats)])
        if unknown:
            warnings.warn(
                f"UniformDetector is fitted on in-distribution data only; ignoring {unknown} "
                "samples with labels < 0",
                stacklevel=3,
            )
        if sample is None:
            raise ValueError("UniformDetector: expected ID samples with labels >= 0, got none")
        keys, y, (preds, *features) = sample.finish()
        return {
            "features": features,
            "y": y,
            "logits": preds,
            "keys": keys,
            "class_counts": sample.counts[None, :].clone(),
            "num_classes": num_classes,
            "input_shape": input_shape,
        }

    def fit_collected(self, inputs: dict[str, Any], *, split_work: bool = False) -> Self:
        """Fit on the output of :meth:`collect_fit_inputs` (possibly gathered over processes).

        ``max_fit_rows`` is applied again to the gathered rows, with the class counts summed
        over the shards.

        :param split_work: the inputs are the same on every process of a distributed run
            (see :mod:`uniad_plugin.distributed`): each process trains the spheres of a share
            of the layers and they are exchanged; the state equals a single process's
        :return: self
        """
        inputs = dict(inputs)
        input_shape = inputs.pop("input_shape", None)
        self.fit_structured(**inputs, split_work=split_work)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
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
        split_work: bool = False,
        **deprecated: Any,
    ) -> Self:
        """Fit on pre-extracted activations (one extraction can serve many detectors).

        Beyond ``max_fit_rows`` samples, the fit keeps a seeded sample of each class (see the
        class's parameters), chosen by ``keys``.

        :param features: one tensor per layer, ``(N, D_l)`` or ``(N, C_l, H, W)`` (pooled
            here), as returned by :meth:`extract`
        :param y: class labels ``(N,)``; labels < 0 are ignored with a warning
        :param logits: the classifier's logits ``(N, K)`` for the same inputs, or ranked
            classes ``(N, c)`` as :meth:`collect_fit_inputs` returns, or predicted classes
            ``(N,)``; used to pick the sphere (and the rivals, see ``rivals``) when
            standardising scores on held-out data, as at test time. Defaults to ``y``.
            Predicted classes (or ``y``) suffice only where the rivals need no ranking
            (``rivals=0``, or ``rivals >= K - 1``: every other class); otherwise a
            ``ValueError`` asks for the logits. ``pred=`` is a deprecated alias
        :param num_classes: number of classes :math:`K`; defaults to ``y.max() + 1``.
            ``n_classes=`` is a deprecated alias
        :param keys: ``(N,)`` int64 sampling keys of the rows (the smallest of each class are
            kept beyond ``max_fit_rows``); ``None``: keys drawn from ``seed`` by position
            (:func:`~uniad_plugin.nn.sampling.position_keys`). :meth:`fit` hashes them from the
            inputs instead, so the two pick different samples once the bound applies
        :param class_counts: ID samples per class of the data the rows were sampled from,
            ``(K,)`` or ``(shards, K)`` (summed); ``None``: the rows themselves are all the data
        :param split_work: the inputs are the same on every process of a distributed run:
            each process trains the spheres of a share of the layers (the generator skips the
            others' draws) and every sphere is then sent from the process that trained it, so
            the state equals a single process's. Ignored in a single process
        :return: self
        """
        who = "UniformDetector"
        num_classes = _base.renamed_kwarg(
            {k: deprecated.pop(k) for k in ("n_classes",) if k in deprecated},
            "n_classes",
            "num_classes",
            num_classes,
            who,
        )
        logits = _base.renamed_kwarg(deprecated, "pred", "logits", logits, who)
        self._check_hyperparameters()
        zs, y, pred, K, keys = self._fit_inputs(features, y, logits, num_classes, keys)
        zs, y, pred = self._bounded(zs, y, pred, K, keys, class_counts)
        device = self._target_device()
        gen = seeded_generator(self.seed)
        held = stratified_holdout(y, K, self.holdout, gen)
        if int(held.sum()) < 2:
            warnings.warn(
                f"UniformDetector: {len(y)} ID samples are too few to hold out {self.holdout:.0%} "
                "of each class; the layer scores are standardised on the samples the spheres "
                "are fitted on (an optimistic scale: fit on more samples per class)",
                stacklevel=2,
            )
            held = torch.ones_like(held)
            fit_idx = torch.arange(len(y))
        else:
            fit_idx = torch.nonzero(~held).flatten()
        if (torch.bincount(y[fit_idx], minlength=K) == 0).any():
            fit_idx = torch.arange(len(y))  # tiny classes: use all data for the spheres
        fit_z, fit_y = [z[fit_idx] for z in zs], y[fit_idx]
        missing = torch.nonzero(torch.bincount(y, minlength=K) == 0).flatten().tolist()
        if missing:
            warnings.warn(
                f"UniformDetector: no ID samples of class(es) {missing} in the fit data; their "
                "spheres are fitted on a sample of all classes' samples pooled, and inputs the "
                "model assigns to them are scored against those",
                stacklevel=2,
            )
            fit_z, fit_y = _pooled_classes(fit_z, fit_y, missing, gen)

        shared = ("nu", "epochs", "lr", "weight_decay", "batch_size", "whiten")
        training = SVDDTraining(
            warmup_epochs=self._warmup_epochs, **{name: getattr(self, name) for name in shared}
        )
        fit_rows = [z.to(device) for z in fit_z]
        free = set(self._encoder_free())
        spheres = fit_layer_spheres(
            fit_rows,
            fit_y.to(device),
            K,
            self.hidden,
            self.rep_dim,
            training,
            generator=gen,
            split=split_work,
            encoders=[name not in free for name in self.layers],
        )
        self.spheres = spheres
        self.num_classes = K
        # standardisation of each layer's score on the held-out ID data
        held_idx = torch.nonzero(held).flatten()
        raw = torch.cat(  # in chunks: the rival contrasts repeat every row per rival
            [
                self._layer_scores([z[i].to(device) for z in zs], pred[i].to(device))
                for i in held_idx.split(4096)
            ]
        )
        self.fusion_mean = raw.mean(0)
        self.fusion_std = raw.std(0).clamp_min(1e-12)
        self.fusion_knots, self.fusion_slope = survival_knots(raw)
        self.fitted_scores = (self.score_names, self._rivals_in_effect(K))
        return self

    def _fit_inputs(self, zs, y, pred, num_classes, keys=None):
        """Checked, pooled ID activations, labels, predicted classes, the class count and the
        sampling keys (``None`` if not given)."""
        if len(zs) == 0:
            raise ValueError("expected at least one layer of activations, got none")
        y = _base.check_labels(y, len(zs[0]))
        zs = [pool(_base.check_inputs(z, None, "activations"), self.pooling).float() for z in zs]
        if any(len(z) != len(y) for z in zs):
            raise ValueError(
                f"expected every layer to have {len(y)} rows, got {[len(z) for z in zs]}"
            )
        if keys is not None:
            if not isinstance(keys, Tensor) or keys.dtype != torch.int64 or keys.shape != y.shape:
                got = (keys.dtype, tuple(keys.shape)) if isinstance(keys, Tensor) else type(keys)
                raise ValueError(f"expected int64 keys of shape ({len(y)},), got {got}")
            keys = keys.to(y.device)
        if self.layers is None:
            self.layers = [f"layer{i}" for i in range(len(zs))]
        if len(self.layers) != len(zs):
            raise ValueError(
                f"expected {len(self.layers)} layers of activations ({self.layers}), got {len(zs)}"
            )
        self._encoder_free()  # bad names fail before the training, not after
        self._contrast_layers()
        extra = [t for t in (pred, keys) if t is not None]
        split, y = _base.split_known([*zs, *extra], y, "UniformDetector")
        zs, extra = split[: len(zs)], split[len(zs) :]
        pred = extra.pop(0) if pred is not None else None
        keys = extra.pop(0) if keys is not None else None
        if len(y) < 2:
            raise ValueError(
                f"UniformDetector: expected at least 2 ID samples with labels >= 0, got {len(y)}"
            )
        K = int(num_classes) if num_classes is not None else int(y.max()) + 1
        _base.check_label_range(y, K, "UniformDetector")
        pred = kept_ranking(y if pred is None else pred, K, self._rivals_in_effect(K))
        return zs, y, pred, K, keys

    # ------------------------------------------------------------------ scoring
    def _layer_scores(self, zs: Sequence[Tensor], classes: Tensor) -> Tensor:
        """Raw scores ``(B, L + C)``: each layer's under the predicted class's sphere, then
        each contrasted layer's rival contrast. ``classes``: logits ``(B, K)``, ranked
        classes ``(B, c)`` or predicted classes ``(B,)`` (see :func:`~uniad_plugin.nn.rivals.as_ranked`)."""
        K = self.num_classes
        ranked = as_ranked(classes, K, self._rivals_in_effect(K)).clamp(0, K - 1)
        zs = [z.float() for z in zs]
        idx = self._contrast_layers()
        if ranked.shape[1] < 2 or not idx:
            return layer_scores(self.spheres, zs, ranked[:, 0], self.score)
        # the contrasted layers: predicted class and rivals in one grouped pass
        own, contrast = rival_scores([self.spheres[i] for i in idx], [zs[i] for i in idx], ranked)
        kept = idx if self.score == "ratio" else []  # "difference" scores them again
        rest = [i for i in range(len(zs)) if i not in kept]
        parts = [own] if kept else []
        if rest:
            parts.append(
                layer_scores(
                    [self.spheres[i] for i in rest], [zs[i] for i in rest], ranked[:, 0], self.score
                )
            )
        raw = torch.cat(parts, dim=1)
        if kept + rest != sorted(kept + rest):  # back to the layers' order
            raw = raw[:, torch.argsort(torch.tensor(kept + rest, device=raw.device))]
        return torch.cat([raw, contrast], dim=1)

    @torch.no_grad()
    def layer_scores(self, x: Tensor) -> Tensor:
        """Per-layer scores on the fusion's scale (``-log p`` or z-scores), one column per name
        in :attr:`score_names` (the layers, then their rival contrasts); :meth:`predict` is
        their row sum."""
        self._require_fitted()
        x = _base.check_inputs(x, self.input_shape, dtype=self._model_dtype())
        x = x.to(self._target_device())
        if len(x) == 0:
            return torch.empty(0, len(self.score_names), device=x.device)
        feats, logits = self.extract(x)
        # activations that overflow (huge inputs) make NaN distances: most anomalous
        return torch.nan_to_num(self._fused(feats, logits), nan=float("inf"))

    def differentiable_score(self, x: Tensor) -> Tensor:
        """:meth:`predict` with autograd enabled, for white-box (adaptive) attacks.

        The hypersphere is still chosen by the predicted class and the rivals by the logits'
        ranking (piecewise constant choices); everything else is differentiable with respect
        to ``x``.
        """
        self._require_fitted()
        x = _base.check_inputs(x, self.input_shape, dtype=self._model_dtype())
        feats, logits = self._extract(x.to(self._target_device()))
        return self._fused(feats, logits).sum(dim=1)

    def _fused(self, zs: Sequence[Tensor], classes: Tensor) -> Tensor:
        """Per-layer scores on one scale: ``-log p`` (``fusion="fisher"``) or z-scores
        (``"zsum"``), both against the held-out ID scores; the detector's score is their sum."""
        self._check_scores_as_fitted()
        raw = self._layer_scores(zs, classes)
        if self.fusion == "fisher":
            if self.fusion_knots is None:
                raise ValueError(
                    "fusion 'fisher' needs the held-out scores of a fit; this state was saved "
                    "before the Fisher fusion (it has none): refit, or use fusion='zsum'"
                )
            return -log_survival(self.fusion_knots, self.fusion_slope, raw)
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
    def predict_structured(
        self, features: Sequence[Tensor], logits: Tensor | None = None
    ) -> Tensor:
        """Outlier scores from pre-extracted activations.

        :param features: one tensor per fitted layer, ``(B, D_l)`` or ``(B, C_l, H, W)``, as
            returned by :meth:`extract`
        :param logits: the classifier's logits ``(B, K)`` or predicted classes ``(B,)``
            (required: they pick the hypersphere, and the logits rank the rivals; predicted
            classes suffice only where the rivals need no ranking, ``rivals=0`` or
            ``rivals >= K - 1``)
        :return: scores of shape ``(B,)``
        """
        self._require_fitted()
        zs = features
        if logits is None:
            raise ValueError("expected the classifier's logits or predicted classes, got None")
        if len(zs) != len(self.spheres):
            raise ValueError(
                f"expected {len(self.spheres)} layers of activations ({self.layers}), got {len(zs)}"
            )
        device = self._target_device()
        zs = [pool(_base.check_inputs(z, None, "activations"), self.pooling).to(device) for z in zs]
        for z, sphere, name in zip(zs, self.spheres, self.layers):
            if z.shape[1] != sphere.in_dim:
                raise ValueError(
                    f"expected {sphere.in_dim} features for layer {name!r}, got {z.shape[1]}"
                )
        if logits.dim() == 2 and logits.shape[1] != self.num_classes:
            raise ValueError(
                f"expected logits of {self.num_classes} classes (as fitted), got {logits.shape[1]}"
            )
        if len(logits) != len(zs[0]):
            raise ValueError(f"expected {len(zs[0])} logits or classes, got {len(logits)}")
        return self._fused(zs, logits.to(device)).sum(dim=1)

    # ------------------------------------------------------------------ state
    def __repr__(self) -> str:
        fitted = f", fitted on {self.num_classes} classes" if self.spheres is not None else ""
        return f"UniformDetector(layers={self.layers}, nu={self.nu}, score={self.score!r}{fitted})"


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
