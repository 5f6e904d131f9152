"""R2-AD2: anomaly detection on the raw gradient of training snapshots (Răduţoiu et al.)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
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

from uniad_plugin._utils import minibatches, seeded_generator
from uniad_plugin.detectors import _base
from uniad_plugin.detectors._base import UniadDetector, hp
from uniad_plugin.nn.alarms import ALARM_SMALL, GradientAlarm
from uniad_plugin.nn.pergrad import (
    LossFn,
    default_gradient_params,
    per_sample_grad_features,
    resolve_params,
)
from uniad_plugin.nn.snapshots import (
    as_state,
    predicted_label_ce,
    reconstruction_bce,
    train_snapshots,
)

log = logging.getLogger(__name__)

__all__ = ["R2AD2"]

#: Adam learning rate of the snapshot training (the paper's value)
SNAPSHOT_LR = 1e-3
#: minibatch size of the snapshot training (our choice)
SNAPSHOT_BATCH_SIZE = 256
#: share of the ID samples held out from the snapshot training for the alarm (the authors'
#: 75/25 split)
ALARM_FRACTION = 0.25
#: parameter tensors above this size outside the last layer are skipped by
#: :func:`~uniad_plugin.nn.pergrad.default_gradient_params` (our choice)
MAX_PARAM_SIZE = 2**12
#: the alarm's sizes ``(lstm1, lstm2, dense1, dense2)``: the paper's small alarm
ALARM_DIMS = ALARM_SMALL
#: dropout of the alarm network (the paper's value)
DROPOUT = 0.4
#: minibatch size of the alarm network, plus as many counter-examples (the paper's value)
BATCH_SIZE = 256
#: mean and standard deviation of the Gaussian counter-examples (the paper's values)
NOISE_MEAN, NOISE_STD = 0.5, 1.0
#: samples per vectorised per-sample-gradient chunk, which bounds the memory (our choice)
CHUNK_SIZE = 256


_NO_SNAPSHOTS = "expected snapshots of the model: pass snapshots=... or call fit(loader) first"


def _input_reconstruction_bce(out: Tensor, x: Tensor | None) -> Tensor:
    """:func:`~uniad_plugin.nn.snapshots.reconstruction_bce` as a per-sample-gradient loss:
    an autoencoder's target is its input, which is always passed."""
    assert x is not None, "the autoencoder's target is its input"
    return reconstruction_bce(out, x)


class _Fitted(NamedTuple):
    """What scoring and :meth:`R2AD2.state_dict` read of a fitted :class:`R2AD2`."""

    alarm: GradientAlarm
    snapshots: list[dict[str, Tensor]]
    input_shape: tuple[int, ...]


class R2AD2(UniadDetector, GradientDetector, StructuredDetector):
    """Raw-gradient anomaly detection with an LSTM over training snapshots.

    Implements *R2-AD2: Detecting Anomalies by Analysing the Raw Gradient* (Răduţoiu, Sagebiel,
    Schulze, Sperl and Böttinger, ECML-PKDD 2022). For :math:`T` snapshots
    :math:`\\theta_1, \\ldots, \\theta_T` of the target network, the input of the alarm network
    is the sequence of raw per-sample gradients

    .. math::

        G(x) = \\big(\\nabla_\\theta \\mathcal{L}(x; \\theta_1), \\ldots,
        \\nabla_\\theta \\mathcal{L}(x; \\theta_T)\\big) \\in \\mathbb{R}^{T \\times |\\theta|}

    computed with :mod:`torch.func` (no loop over samples). The alarm network (shared batch
    normalisation over time, LSTM, LSTM, dense layers with dropout 0.4, sigmoid output) is
    trained with BCE: ID samples are 0, known anomalies (negative targets in the fit loader, with
    ``known_anomalies=True``) and
    Gaussian counter-examples :math:`\\tilde x \\sim \\mathcal{N}(0.5, 1)` drawn in input space
    for every minibatch are 1. The score is the alarm's logit (monotone in its sigmoid output).
    As in the authors' code, the alarm is trained on ID samples the snapshots never saw:
    :meth:`fit` holds out a seeded 25 % of them when it trains the snapshots.

    The alarm is :class:`~uniad_plugin.nn.alarms.GradientAlarm`. What the paper and the
    authors' code state and what this implementation adapts (classifier target, loss for the
    gradient, which gradients, alarm size, epochs, dropout, :math:`T = 1`) is listed on the
    `R2-AD2 docs page <../detectors/r2ad2.md#design-choices-in-detail>`_.
    The model is never modified: snapshot training works on a copy, and gradients are computed
    with the snapshot weights passed to ``torch.func.functional_call`` in eval mode. Scoring
    works under an outer ``torch.no_grad()``.

    Fixed: snapshot training with Adam at learning rate 1e-3 (the paper's value) in
    minibatches of 256 (our choice); 25 % of the ID samples held out from it for the alarm
    when :meth:`fit` trains snapshots (no ``snapshots`` given and ``n_snapshots > 1``; the
    authors' split); the paper's small alarm ``(100, 50, 25, 10)`` with dropout 0.4,
    minibatches of 256 plus as many fresh Gaussian counter-examples :math:`N(0.5, 1)` per step
    (the paper's values); per-sample gradients in chunks of 256 samples (our choice).

    :param model: the pre-trained classifier returning logits ``(B, C)`` (or an autoencoder
        with ``target="autoencoder"``)
    :param snapshots: optional checkpoints of the model (modules or state dicts, oldest first)
        to use as the :math:`T` targets instead of training copies
    :param n_snapshots: :math:`T`, the number of snapshots made by :meth:`fit` (the first is
        the model itself)
    :param target: ``"classifier"`` (cross-entropy) or ``"autoencoder"`` (reconstruction BCE)
    :param snapshot_epochs: epochs of further training between two snapshots
    :param params: names of the parameter tensors whose gradients are used; ``None`` =
        :func:`~uniad_plugin.nn.pergrad.default_gradient_params` (the last two parametrised
        layers, without tensors above 4,096 elements outside the last layer)
    :param epochs: training epochs of the alarm network
    :param lr: Adam learning rate of the alarm network (and of its normalisation)
    :param known_anomalies: train the alarm on the rows of the fit data with labels < 0 as
        known anomalies (the paper's semi-supervised setting); ``False`` (the default): they are
        ignored with a warning, as by every detector of this package and pytorch-ood's
        built-ins
    :param seed: seed of every random choice (snapshot training, initialisation, minibatches,
        dropout and counter-examples)
    """

    requires_fit = True

    info = _base.classification_info(
        Paper(
            title="R2-AD2: Detecting Anomalies by Analysing the Raw Gradient",
            venue="ECML-PKDD",
            year=2022,
            url="https://arxiv.org/abs/2206.10259",
            code="https://github.com/Fraunhofer-AISEC/R2-AD2",
        )
    )

    hyperparameter_space = {
        "n_snapshots": [3, 1, 2, 4],
        "snapshot_epochs": [5, 1],
    }

    fitted_attribute = "alarm"

    hyperparameters = {
        "n_snapshots": hp.integer(1),
        "target": hp.choice("classifier", "autoencoder"),
        "snapshot_epochs": hp.integer(0),
        "epochs": hp.integer(1),
        "lr": hp.real(0.0),
        "known_anomalies": hp.flag(),
        "seed": hp.integer(None),
    }

    def __init__(
        self,
        model: nn.Module | None,
        snapshots: Sequence[nn.Module | Mapping[str, Tensor]] | None = None,
        *,
        n_snapshots: int = 3,
        target: str = "classifier",
        snapshot_epochs: int = 5,
        params: Sequence[str] | None = None,
        epochs: int = 30,
        lr: float = 1e-3,
        known_anomalies: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self._set_model(model, params=params, snapshots=snapshots)
        self.params: list[str] | None = None
        if params is not None:
            self.params = resolve_params(self._require_model(), params)
        self.given_snapshots: list[dict[str, Tensor]] | None = None
        if snapshots is not None:
            if len(snapshots) < 1:
                raise ValueError("expected at least one snapshot, got an empty list")
            self.given_snapshots = [as_state(s) for s in snapshots]
            for s in self.given_snapshots:
                self._check_snapshot(s)
            n_snapshots = len(self.given_snapshots)
        self._init_hyperparameters(locals())
        # fitted state
        self.snapshots: list[dict[str, Tensor]] | None = self.given_snapshots
        self.alarm: GradientAlarm | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.num_classes: int | None = None

    def _derive(self) -> None:
        if self.given_snapshots is not None and self.n_snapshots != len(self.given_snapshots):
            raise ValueError(
                f"expected n_snapshots to equal the {len(self.given_snapshots)} given snapshots, "
                f"got {self.n_snapshots}"
            )

    # ------------------------------------------------------------------ helpers
    def _snapshot_states(self) -> list[dict[str, Tensor]]:
        """:raises ValueError: if no snapshots exist yet (none given, no fit)"""
        if self.snapshots is None:
            raise ValueError(_NO_SNAPSHOTS)
        return self.snapshots

    def _fitted(self) -> _Fitted:
        """The fitted alarm, snapshots and input shape.

        :raises RequiresFittingException: before fitting
        """
        alarm, snapshots, input_shape = self.alarm, self.snapshots, self.input_shape
        if alarm is None or snapshots is None or input_shape is None:
            self._require_fitted()  # raises before the fit, with the package's message
            raise RequiresFittingException("R2AD2: the fitted state is incomplete")
        return _Fitted(alarm, snapshots, input_shape)

    def _param_names(self) -> list[str]:
        if self.params is None:
            self.params = default_gradient_params(self._require_model(), MAX_PARAM_SIZE)
        return self.params

    @property
    def gradient_dim(self) -> int:
        """Dimension :math:`D` of the raw gradient (sum of the selected tensors' sizes)."""
        model = self._require_model()
        return sum(model.get_parameter(n).numel() for n in self._param_names())

    def _check_snapshot(self, state: Mapping[str, Tensor]) -> None:
        own = self._require_model().state_dict()
        if set(state) != set(own):
            raise ValueError(
                f"expected a snapshot with the model's state keys {sorted(own)}, got "
                f"{sorted(state)}"
            )
        bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        if bad:
            raise ValueError(
                f"expected snapshot tensors shaped like the model's, got other shapes for {bad}: "
                f"{[tuple(state[k].shape) for k in bad]} instead of "
                f"{[tuple(own[k].shape) for k in bad]}"
            )

    # ------------------------------------------------------------------ gradients
    def _gradients(self, x: Tensor) -> Tensor:
        """Raw gradients ``(B, T, D)`` of already validated inputs on the target device."""
        model = self._require_model()
        names = self._param_names()
        device = self._target_device()
        ae = self.target == "autoencoder"
        loss_fn: LossFn = _input_reconstruction_bce if ae else predicted_label_ce
        snapshots = self._snapshot_states()
        with _base.eval_mode(model):
            g = torch.stack(
                [
                    per_sample_grad_features(
                        model,
                        x,
                        x if ae else None,
                        loss_fn,
                        names,
                        reduce="flat",
                        chunk_size=CHUNK_SIZE,
                        state={k: v.to(device) for k, v in snap.items()},
                    )
                    for snap in snapshots
                ],
                dim=1,
            )
        big = torch.finfo(g.dtype).max
        return torch.nan_to_num(g, nan=0.0, posinf=big, neginf=-big)

    def extract(self, x: Tensor) -> tuple[Tensor]:
        """The representation :meth:`predict_structured` reads: ``(gradients,)``.

        ``predict(x)`` equals ``predict_structured(*extract(x))``.

        :param x: model inputs ``(B, ...)``
        :return: a 1-tuple holding the raw gradient sequences ``(B, T, D)``
        :raises ValueError: for NaN/inf inputs, a shape other than the fitted one, or if no
            snapshots exist yet (pass ``snapshots`` or call :meth:`fit`)
        """
        self._require_model()
        snapshots = self._snapshot_states()
        x = _base.check_inputs(x, self.input_shape, dtype=self._model_dtype())
        x = x.to(self._target_device())
        if len(x) == 0:
            return (torch.empty(0, len(snapshots), self.gradient_dim, device=x.device),)
        return (self._gradients(x),)

    # ------------------------------------------------------------------ fitting
    def fit(self, data_loader: DataLoader) -> Self:
        """Make the snapshots (unless given), compute the gradients and train the alarm.

        The loader is read once into memory. When snapshots are trained here, a seeded 25 % of
        the ID samples is held out from that training and used, with the known anomalies, for
        the alarm; the rest trains the snapshots only (the authors' 75/25 split). Otherwise the
        alarm is trained on every sample.

        :param data_loader: yields ``(x, y)``: ID inputs with class labels ``>= 0``, optionally
            known anomalies with labels ``< 0`` (used with ``known_anomalies=True``, otherwise
            ignored with a warning)
        :return: self
        :raises ValueError: for an empty loader, NaN/inf inputs, a changing input shape, labels
            >= the model's number of outputs, or too few ID samples to leave some for both the
            snapshots and the alarm
        """
        model = self._require_model()
        self._check_hyperparameters()
        xs, ys = [], []
        num_classes = None
        batches: Iterator[tuple[Tensor, Tensor, int | None]]
        if self.target == "classifier":
            batches = self._iter_classified_batches(data_loader)
        else:
            batches = ((x, y, None) for x, y in self._iter_batches(data_loader))
        for x, y, n_out in batches:
            num_classes = n_out
            xs.append(x.cpu())
            ys.append(y.cpu())
        x, y = torch.cat(xs), torch.cat(ys)
        (x,), y = _base.split_known([x], y, "R2AD2", self.known_anomalies)
        known = y >= 0
        if not bool(known.any()):
            raise ValueError("R2AD2: expected ID samples (labels >= 0) in the fit loader, got none")
        self.alarm = None
        self.input_shape = tuple(x.shape[1:])
        self.num_classes = num_classes
        if self.given_snapshots is None:
            snap_idx, alarm_idx = self._split_id(known)
            x_snap, y_snap = x[snap_idx], y[snap_idx]
            keep = torch.zeros(len(y), dtype=torch.bool)
            keep[alarm_idx] = True
            x, y = x[keep | ~known], y[keep | ~known]
            self.snapshots = train_snapshots(
                model,
                x_snap,
                y_snap,
                self.n_snapshots,
                self.snapshot_epochs,
                SNAPSHOT_LR,
                SNAPSHOT_BATCH_SIZE,
                self.target == "autoencoder",
                self.seed,
                self._target_device(),
            )
        g = self._gradients(x.to(self._target_device())).cpu()
        return self.fit_structured(g, y)

    def _split_id(self, known: Tensor) -> tuple[Tensor, Tensor]:
        """Indices of the ID samples for the snapshot training and for the alarm (sorted).

        A seeded random :data:`ALARM_FRACTION` of the ID samples (``known``) is held out for the
        alarm when snapshots are trained here; without snapshot training (``n_snapshots=1``)
        both get every ID sample.

        :raises ValueError: if a part would be empty
        """
        idx = torch.nonzero(known).flatten()
        if self.n_snapshots == 1:
            return idx, idx
        n_alarm = round(ALARM_FRACTION * len(idx))
        if n_alarm < 1 or n_alarm >= len(idx):
            raise ValueError(
                f"R2AD2: expected enough ID samples to hold out {ALARM_FRACTION:.0%} of them "
                "for the alarm and keep at least one for the snapshots and one for the alarm, "
                f"got {len(idx)} ID samples ({n_alarm} for the alarm); pass snapshots= or "
                "n_snapshots=1 to train the alarm on all of them"
            )
        perm = idx[torch.randperm(len(idx), generator=seeded_generator(self.seed + 2))]
        return perm[n_alarm:].sort().values, perm[:n_alarm].sort().values

    def fit_structured(
        self, features: Tensor, y: Tensor, *, input_shape: Sequence[int] | None = None
    ) -> Self:
        """Train the alarm network on pre-computed gradient sequences.

        The counter-examples are drawn in input space, so the snapshots must exist (given at
        construction or made by :meth:`fit`).

        :param features: gradients ``(N, T, D)`` as returned by :meth:`extract`
        :param y: labels ``(N,)``: ``>= 0`` ID, ``< 0`` known anomaly
        :param input_shape: per-sample input shape for the counter-examples (default: the
            fitted one)
        :return: self
        :raises ValueError: for malformed features, missing snapshots or input shape
        """
        self._require_model()
        self._check_hyperparameters()
        T, D = len(self._snapshot_states()), self.gradient_dim
        if not isinstance(features, Tensor) or features.shape[1:] != (T, D):
            raise ValueError(
                f"expected features of shape (N, {T}, {D}), got "
                f"{tuple(features.shape) if isinstance(features, Tensor) else type(features)}"
            )
        y = _base.check_labels(y, len(features))
        (features,), y = _base.split_known([features], y, "R2AD2", self.known_anomalies)
        if len(y) == 0:
            raise ValueError("R2AD2: expected training samples, got an empty set")
        if torch.isnan(features).any():
            raise ValueError("expected gradient features without NaN, got NaN")
        if input_shape is not None:
            self.input_shape = tuple(int(s) for s in input_shape)
        if self.input_shape is None:
            raise ValueError("expected input_shape for the counter-examples, got None")
        if self.num_classes is None and self.target == "classifier":
            self.num_classes = self._model_outputs(torch.zeros((1, *self.input_shape)))
        labels = (y < 0).float()
        self.alarm = self._train_alarm(features.float(), labels, tuple(ALARM_DIMS))
        return self

    def _noise(self, n: int, gen: torch.Generator) -> Tensor:
        assert self.input_shape is not None, "fit_structured checks it before the alarm trains"
        noise = torch.randn((n, *self.input_shape), generator=gen)
        noise = NOISE_MEAN + NOISE_STD * noise
        return noise.to(device=self._target_device(), dtype=self._model_dtype())

    def _train_alarm(self, g: Tensor, labels: Tensor, dims: tuple[int, ...]) -> GradientAlarm:
        device = self._target_device()
        gen = seeded_generator(self.seed + 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            alarm = GradientAlarm(g.shape[2], dims, DROPOUT).to(device)
            with torch.no_grad():  # exact statistics of the labelled training gradients
                flat = g.reshape(-1, g.shape[2]).double()
                running_mean, running_var = alarm.norm.running_mean, alarm.norm.running_var
                # typed optional by torch; a BatchNorm1d that tracks running statistics has them
                assert running_mean is not None and running_var is not None
                running_mean.copy_(flat.mean(0).float())
                running_var.copy_(flat.var(0).float())
            norm_params = set(alarm.norm.parameters())
            opt_alarm = torch.optim.Adam(
                [p for p in alarm.parameters() if p not in norm_params], lr=self.lr
            )
            opt_norm = torch.optim.Adam(alarm.norm.parameters(), lr=self.lr)
            g, labels = g.to(device), labels.to(device)
            bce = nn.functional.binary_cross_entropy_with_logits
            with torch.enable_grad():
                for idx in minibatches(len(g), BATCH_SIZE, self.epochs, gen, device):
                    gb, yb = g[idx], labels[idx]
                    gn = self._gradients(self._noise(len(idx), gen)).float()
                    # alarm step: normalisation in inference mode, noise included
                    alarm.train()
                    alarm.norm.eval()
                    out = alarm(torch.cat([gb, gn]))
                    loss = bce(out[: len(idx)], yb) + bce(out[len(idx) :], torch.ones_like(yb))
                    opt_alarm.zero_grad(set_to_none=True)
                    loss.backward()
                    opt_alarm.step()
                    # normalisation step: labelled data only, batch statistics
                    alarm.eval()
                    alarm.norm.train()
                    loss_norm = bce(alarm(gb), yb)
                    opt_norm.zero_grad(set_to_none=True)
                    loss_norm.backward()
                    opt_norm.step()
        return alarm.eval().requires_grad_(False)

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def predict_structured(self, features: Tensor) -> Tensor:
        """Outlier scores (alarm logits) from gradient sequences ``(B, T, D)``.

        :raises RequiresFittingException: before fitting
        :raises ValueError: for features of the wrong shape
        """
        fitted = self._fitted()
        T, D = len(fitted.snapshots), fitted.alarm.norm.num_features
        if not isinstance(features, Tensor) or features.dim() != 3 or features.shape[1:] != (T, D):
            raise ValueError(
                f"expected features of shape (B, {T}, {D}), got "
                f"{tuple(features.shape) if isinstance(features, Tensor) else type(features)}"
            )
        if len(features) == 0:
            return torch.empty(0, device=features.device)
        return fitted.alarm(features.float().to(self._target_device()))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Fitted state as tensors and primitives only (``torch.load(weights_only=True)`` safe).

        Contains the :math:`T` snapshots (full model state dicts) and the alarm network.
        """
        fitted = self._fitted()
        return self._pack_state(
            {
                "params": list(self._param_names()),
                "input_shape": list(fitted.input_shape),
                "num_classes": self.num_classes,
                "target": self.target,
                "alarm_dims": fitted.alarm.dims,
                "snapshots": [
                    {k: v.detach().cpu() for k, v in s.items()} for s in fitted.snapshots
                ],
                "alarm": {k: v.detach().cpu() for k, v in fitted.alarm.state_dict().items()},
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> Self:
        """Restore a state from :meth:`state_dict`, checked against this detector's model.

        :raises ValueError: if the state is malformed, from another version, or was fitted for a
            model with other parameters
        """
        who = "R2AD2"
        hyper, state = self._unpack_state(state)
        model = self._require_model()
        try:
            names = [str(n) for n in state["params"]]
            input_shape = tuple(int(s) for s in state["input_shape"])
            num_classes = None if state["num_classes"] is None else int(state["num_classes"])
            target = str(state["target"])
            dims = [int(d) for d in state["alarm_dims"]]
            snapshots = [as_state(s) for s in state["snapshots"]]
            alarm_state = dict(state["alarm"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"expected a complete {who} state dict, missing or bad {e}") from e
        try:
            names = resolve_params(model, names)
        except ValueError as e:
            raise ValueError(
                f"{who}: the state was fitted for a model with other parameters: {e}"
            ) from e
        if not snapshots:
            raise ValueError(f"corrupted {who} state: expected at least one snapshot")
        if target not in ("classifier", "autoencoder"):
            raise ValueError(f"corrupted {who} state: unknown target {target!r}")
        for s in snapshots:
            self._check_snapshot(s)
        D = sum(model.get_parameter(n).numel() for n in names)
        alarm = GradientAlarm(D, dims, DROPOUT)
        try:
            alarm.load_state_dict(alarm_state)
        except RuntimeError as e:
            raise ValueError(f"corrupted {who} state: {e}") from e
        self.given_snapshots = None
        self._restore_hyperparameters({**hyper, "n_snapshots": len(snapshots)})
        self.params = names
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.target = target
        self.snapshots = snapshots
        self.alarm = alarm.to(self._target_device()).eval().requires_grad_(False)
        return self

    def __repr__(self) -> str:
        fitted = ""
        if self.alarm is not None:
            fitted = f", fitted (D={self.alarm.norm.num_features})"
        return (
            f"R2AD2(n_snapshots={self.n_snapshots}, snapshot_epochs={self.snapshot_epochs}, "
            f"params={self.params}{fitted})"
        )
