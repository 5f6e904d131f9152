"""R2-AD2: anomaly detection on the raw gradient of training snapshots (Răduţoiu et al.)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
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
from uniad_plugin.detectors.gradients import _check_label_range, _iter_batches, _model_outputs
from uniad_plugin.nn.pergrad import last_layer_params, per_sample_grad_features, resolve_params

log = logging.getLogger(__name__)

_STATE_VERSION = 1
#: alarm sizes of the authors' code: (LSTM, LSTM, Dense, Dense)
ALARM_BIG = (1000, 500, 200, 75)
ALARM_SMALL = (100, 50, 25, 10)
#: names accepted by ``alarm_dims``
_ALARMS = {"small": ALARM_SMALL, "big": ALARM_BIG}
#: standardised gradients are clipped to this magnitude (numerical safety for extreme inputs)
_CLIP = 1e4


def _predicted_label_ce(out: Tensor, _target: Tensor | None) -> Tensor:
    """Cross-entropy of the logits w.r.t. the model's own predicted class (no label needed)."""
    return nn.functional.cross_entropy(out, out.argmax(-1).detach())


def _reconstruction_bce(out: Tensor, x: Tensor) -> Tensor:
    """Mean binary cross-entropy of a reconstruction ``out`` in (0, 1) and the input ``x``.

    Written out (as Keras computes it, predictions clipped to ``[1e-7, 1 - 1e-7]``) so that
    inputs outside [0, 1], e.g. the Gaussian counter-examples, are allowed.
    """
    p = out.reshape(x.shape).clamp(1e-7, 1 - 1e-7)
    return -(x * p.log() + (1 - x) * (1 - p).log()).mean()


def default_gradient_params(model: nn.Module, max_param_size: int = 2**12) -> list[str]:
    """R2AD2's default parameter selection: the last two parametrised layers.

    Parameter tensors with more than ``max_param_size`` elements are skipped, except those of
    the last layer, so that the raw gradient stays small enough for the LSTM alarm network
    (e.g. for LeNet: the bias of the penultimate ``Linear`` and the whole last ``Linear``).

    :raises ValueError: if the model has no parameters
    """
    last = set(last_layer_params(model, 1))
    return [
        n
        for n in last_layer_params(model, 2)
        if n in last or model.get_parameter(n).numel() <= max_param_size
    ]


def _as_state(snapshot: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(snapshot, nn.Module):
        snapshot = snapshot.state_dict()
    if not isinstance(snapshot, Mapping):
        raise TypeError(
            f"expected snapshots as nn.Modules or state dicts, got {type(snapshot).__name__}"
        )
    return {str(k): v.detach().clone() for k, v in snapshot.items()}


def lstm_sequence(lstm: nn.LSTM, x: Tensor) -> Tensor:
    """Run a one-layer, unidirectional, ``batch_first`` ``nn.LSTM`` on ``(B, T, D)`` -> ``(B, T, H)``.

    Same result as ``lstm(x)[0]``, written out with the module's own weights: the input
    projection of all time steps is one matrix product, then a loop over the (few) time steps.
    Kept because the committed R2-AD2 results were produced with it; ``lstm(x)[0]`` computes
    the same up to float rounding.
    """
    xi = nn.functional.linear(x, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)
    h = x.new_zeros(x.shape[0], lstm.hidden_size)
    c = torch.zeros_like(h)
    outs = []
    for t in range(x.shape[1]):
        gates = xi[:, t] + h @ lstm.weight_hh_l0.T
        i, f, g, o = gates.chunk(4, dim=1)  # PyTorch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, dim=1)


class GradientAlarm(nn.Module):
    """The alarm network of R2-AD2 on gradient sequences ``(B, T, D)``.

    Batch normalisation shared across time steps, dropout on the LSTM inputs, two stacked
    LSTMs (the last hidden state of the second is used), fully connected ReLU layers with
    dropout, and one output logit.

    :param in_dim: gradient dimension :math:`D`
    :param dims: ``(lstm1, lstm2, dense1, ...)``, at least two entries
    :param dropout: dropout probability
    """

    def __init__(self, in_dim: int, dims: Sequence[int] = ALARM_SMALL, dropout: float = 0.4):
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2 or min(dims) < 1 or in_dim < 1:
            raise ValueError(
                f"expected in_dim >= 1 and at least two positive alarm sizes, got {in_dim}, {dims}"
            )
        # Keras defaults of the authors' code: momentum 0.99 (torch: 0.01), epsilon 1e-3
        self.norm = nn.BatchNorm1d(in_dim, eps=1e-3, momentum=0.01)
        self.drop = nn.Dropout(dropout)
        self.lstm1 = nn.LSTM(in_dim, dims[0], batch_first=True)
        self.lstm2 = nn.LSTM(dims[0], dims[1], batch_first=True)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[1:], dims[2:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(dims[-1], 1))
        self.head = nn.Sequential(*layers)

    def normalise(self, g: Tensor) -> Tensor:
        """Shared batch normalisation over ``(B, T, D)``, clipped to ``±1e4``."""
        B, T, D = g.shape
        return self.norm(g.reshape(B * T, D)).reshape(B, T, D).clamp(-_CLIP, _CLIP)

    def forward(self, g: Tensor) -> Tensor:
        """Alarm logits ``(B,)`` for gradient sequences ``(B, T, D)``."""
        h = lstm_sequence(self.lstm1, self.drop(self.normalise(g)))
        h = lstm_sequence(self.lstm2, self.drop(h))
        return self.head(h[:, -1]).squeeze(1)


class R2AD2(ModelMixin, GradientDetector, StructuredDetector):
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
    trained with BCE: ID samples are 0, known anomalies (targets < 0 in the fit loader) and
    Gaussian counter-examples :math:`\\tilde x \\sim \\mathcal{N}(0.5, 1)` drawn in input space
    for every minibatch are 1. The score is the alarm's logit (monotone in its sigmoid output).

    Stated by the paper and the authors' code (github.com/Fraunhofer-AISEC/R2-AD2): snapshots
    made by copying the target, training it further for 5 epochs, copying again (:math:`T = 3`
    in the main variant); gradients of all kernels and biases with dropout off; the alarm
    architecture with sizes (1000, 500, 200, 75), or (100, 50, 25, 10) for small data; Keras
    batch normalisation (momentum 0.99, epsilon 1e-3) whose affine parameters are trained by a
    second Adam optimiser on the labelled data only, while the alarm's optimiser sees the noise
    too with the normalisation in inference mode; Adam with learning rate 1e-3, batch size 256.

    **Adaptations and design choices** (not the paper's; measured in ``benchmarks/``):

    * *Target*: by default (``target="classifier"``) a pre-trained classifier instead of the
      paper's autoencoder. Snapshots are trained with cross-entropy on the ID samples of the fit
      loader (Adam, ``snapshot_lr``); the paper trains an autoencoder with BCE reconstruction
      loss. Alternatively, pass ``snapshots`` (checkpoints saved while training the classifier)
      to use no fit data for this. ``target="autoencoder"`` is the paper's setting: the model
      maps inputs to reconstructions in (0, 1) of the same shape, snapshots are trained and
      gradients taken with the reconstruction BCE, and labels only mark ID (>= 0) and anomalies.
    * *Loss for the gradient* of a classifier: the cross-entropy w.r.t. its own predicted class,
      so no label is needed at inference (the paper's reconstruction loss needs none either).
      Its gradient vanishes for confident predictions, so anomalies the classifier assigns to a
      class with high confidence look like ID data to the alarm; the reconstruction loss of an
      autoencoder has no such blind spot (see ``benchmarks/results/r2ad2_protocol.md``).
    * *Which gradients*: by default the parameter tensors of the last two parametrised layers,
      skipping tensors above ``max_param_size`` elements outside the last layer
      (:func:`default_gradient_params`); the paper uses all layers of a small autoencoder, which
      is not tractable for an LSTM on the gradient of a larger classifier. ``params`` chooses.
    * *Alarm size*: the paper's small sizes ``(100, 50, 25, 10)`` by default
      (``alarm_dims="small"``); the authors switch to the big ones (``"big"``: LSTM 1000 and 500
      on gradients of thousands of entries) for large data sets; on a CPU that alarm is far
      slower to train, so here it is an option.
    * *Epochs*: ``epochs=30`` by default instead of the paper's 100 (CPU budget); the running
      statistics of the normalisation start from the exact statistics of the training
      gradients instead of (0, 1), since few epochs would not let a 0.99 momentum converge.
    * *Dropout on the LSTM inputs* is drawn per element and time step (Keras draws one mask per
      sequence).
    * For :math:`T = 1` the alarm still uses the two LSTMs on a sequence of length one (the
      authors' code switches to dense layers).
    * ``noise_pool``: optionally draw a fixed pool of counter-examples once (their gradients
      computed once) instead of fresh noise every step, which is much cheaper for large targets.

    The model is never modified: snapshot training works on a copy, and gradients are computed
    with the snapshot weights passed to ``torch.func.functional_call`` in eval mode. Scoring
    works under an outer ``torch.no_grad()``.

    :param model: the pre-trained classifier returning logits ``(B, C)`` (or an autoencoder
        with ``target="autoencoder"``)
    :param snapshots: optional checkpoints of the model (modules or state dicts, oldest first)
        to use as the :math:`T` targets instead of training copies
    :param n_snapshots: :math:`T`, the number of snapshots made by :meth:`fit` (the first is
        the model itself)
    :param target: ``"classifier"`` (cross-entropy) or ``"autoencoder"`` (reconstruction BCE)
    :param snapshot_epochs: epochs of further training between two snapshots
    :param snapshot_lr: Adam learning rate of the snapshot training
    :param snapshot_batch_size: minibatch size of the snapshot training
    :param params: names of the parameter tensors whose gradients are used; ``None`` =
        :func:`default_gradient_params`
    :param max_param_size: see :func:`default_gradient_params`
    :param alarm_dims: ``"small"`` (the paper's ``(100, 50, 25, 10)``), ``"big"``
        (``(1000, 500, 200, 75)``) or the alarm sizes ``(lstm1, lstm2, dense1, ...)``
    :param dropout: dropout of the alarm network
    :param epochs: training epochs of the alarm network
    :param lr: Adam learning rate of the alarm network (and of its normalisation)
    :param batch_size: minibatch size of the alarm network (as many counter-examples are added)
    :param noise_mean: mean of the Gaussian counter-examples
    :param noise_std: standard deviation of the Gaussian counter-examples; ``None`` = no
        counter-examples (then known anomalies are required, as in the authors' option)
    :param noise_pool: ``None`` = fresh counter-examples for every minibatch (paper); an int =
        a pool of that many drawn once
    :param chunk_size: samples per vectorised per-sample-gradient chunk (bounds memory)
    :param seed: seed of every random choice (snapshot training, initialisation, minibatches,
        dropout and counter-examples)
    """

    requires_fit = True

    info = DetectorInfo(
        paper=Paper(
            title="R2-AD2: Detecting Anomalies by Analysing the Raw Gradient",
            venue="ECML-PKDD",
            year=2022,
            url="https://arxiv.org/abs/2206.10259",
            code="https://github.com/Fraunhofer-AISEC/R2-AD2",
        ),
        tasks={Task.CLASSIFICATION},
        ai_coded=True,
    )

    hyperparameter_space = {
        "n_snapshots": [3, 1, 2, 4],
        "snapshot_epochs": [5, 1, 2],
        "epochs": [30, 10, 100],
        "dropout": [0.4, 0.1],
    }

    def __init__(
        self,
        model: nn.Module | None,
        snapshots: Sequence[nn.Module | Mapping[str, Tensor]] | None = None,
        *,
        n_snapshots: int = 3,
        target: str = "classifier",
        snapshot_epochs: int = 5,
        snapshot_lr: float = 1e-3,
        snapshot_batch_size: int = 256,
        params: Sequence[str] | None = None,
        max_param_size: int = 2**12,
        alarm_dims: str | Sequence[int] = "small",
        dropout: float = 0.4,
        epochs: int = 30,
        lr: float = 1e-3,
        batch_size: int = 256,
        noise_mean: float = 0.5,
        noise_std: float | None = 1.0,
        noise_pool: int | None = None,
        chunk_size: int | None = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"expected model to be a torch.nn.Module, got {type(model).__name__}")
        for name, value in [
            ("n_snapshots", n_snapshots),
            ("snapshot_batch_size", snapshot_batch_size),
            ("max_param_size", max_param_size),
            ("epochs", epochs),
            ("batch_size", batch_size),
        ]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"expected {name} to be an int >= 1, got {value!r}")
        if not isinstance(snapshot_epochs, int) or snapshot_epochs < 0:
            raise ValueError(f"expected snapshot_epochs to be an int >= 0, got {snapshot_epochs!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"expected dropout in [0, 1), got {dropout}")
        if noise_std is not None and noise_std <= 0:
            raise ValueError(f"expected noise_std > 0 or None, got {noise_std}")
        if target not in ("classifier", "autoencoder"):
            raise ValueError(f"expected target 'classifier' or 'autoencoder', got {target!r}")
        if noise_pool is not None and noise_pool < 1:
            raise ValueError(f"expected noise_pool None or >= 1, got {noise_pool}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"expected chunk_size >= 1 or None, got {chunk_size}")
        if isinstance(alarm_dims, str):
            if alarm_dims not in _ALARMS:
                raise ValueError(
                    f"expected alarm_dims 'small', 'big' or a sequence of sizes, got {alarm_dims!r}"
                )
        elif len(alarm_dims) < 2 or min(int(d) for d in alarm_dims) < 1:
            raise ValueError(f"expected at least two positive alarm sizes, got {alarm_dims}")
        self.model = model
        self.params: list[str] | None = None
        if params is not None:
            if model is None:
                raise ModelNotSetException("params were given but model is None")
            self.params = resolve_params(model, params)
        self.given_snapshots: list[dict[str, Tensor]] | None = None
        if snapshots is not None:
            if model is None:
                raise ModelNotSetException("snapshots were given but model is None")
            if len(snapshots) < 1:
                raise ValueError("expected at least one snapshot, got an empty list")
            self.given_snapshots = [_as_state(s) for s in snapshots]
            for s in self.given_snapshots:
                self._check_snapshot(s)
            n_snapshots = len(self.given_snapshots)
        self.n_snapshots = n_snapshots
        self.target = target
        self.snapshot_epochs = snapshot_epochs
        self.snapshot_lr = snapshot_lr
        self.snapshot_batch_size = snapshot_batch_size
        self.max_param_size = max_param_size
        self.alarm_dims = alarm_dims if isinstance(alarm_dims, str) else tuple(map(int, alarm_dims))
        self.dropout = dropout
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.noise_mean = noise_mean
        self.noise_std = noise_std
        self.noise_pool = noise_pool
        self.chunk_size = chunk_size
        self.seed = int(seed)
        # fitted state
        self.snapshots: list[dict[str, Tensor]] | None = self.given_snapshots
        self.alarm: GradientAlarm | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.n_classes: int | None = None

    # ------------------------------------------------------------------ helpers
    def _require_fitted(self) -> None:
        if self.alarm is None:
            raise RequiresFittingException(
                "R2AD2 must be fitted with fit(loader) or fit_structured(...) first"
            )

    def _param_names(self) -> list[str]:
        if self.params is None:
            self.params = default_gradient_params(self._require_model(), self.max_param_size)
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
        with eval_mode(model):
            g = torch.stack(
                [
                    per_sample_grad_features(
                        model,
                        x,
                        x if ae else None,
                        _reconstruction_bce if ae else _predicted_label_ce,
                        names,
                        reduce="flat",
                        chunk_size=self.chunk_size,
                        state={k: v.to(device) for k, v in snap.items()},
                    )
                    for snap in self.snapshots
                ],
                dim=1,
            )
        big = torch.finfo(g.dtype).max
        return torch.nan_to_num(g, nan=0.0, posinf=big, neginf=-big)

    def features(self, x: Tensor) -> Tensor:
        """The raw gradient sequences ``(B, T, D)`` the alarm network reads.

        :param x: model inputs ``(B, ...)``
        :raises ValueError: for NaN/inf inputs, a shape other than the fitted one, or if no
            snapshots exist yet (pass ``snapshots`` or call :meth:`fit`)
        """
        model = self._require_model()
        if self.snapshots is None:
            raise ValueError(
                "expected snapshots of the model: pass snapshots=... or call fit(loader) first"
            )
        x = check_inputs(x, self.input_shape, dtype=model_dtype(model)).to(self._target_device())
        if len(x) == 0:
            return torch.empty(0, len(self.snapshots), self.gradient_dim, device=x.device)
        return self._gradients(x)

    # ------------------------------------------------------------------ snapshots
    def _train_snapshots(self, x: Tensor, y: Tensor) -> list[dict[str, Tensor]]:
        """Copy the model, train it ``snapshot_epochs`` more epochs, copy, ... (``T`` copies)."""
        model = self._require_model()
        device = self._target_device()
        snaps = [_as_state(model)]
        if self.n_snapshots == 1:
            return snaps
        if len(x) == 0:
            raise ValueError(
                "R2AD2: expected ID samples (labels >= 0) to train snapshots, got none"
            )
        target = copy.deepcopy(model).to(device).train().requires_grad_(True)
        opt = torch.optim.Adam(target.parameters(), lr=self.snapshot_lr)
        gen = torch.Generator().manual_seed(self.seed)
        bs = self.snapshot_batch_size
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(self.seed)
            for _ in range(self.n_snapshots - 1):
                for _ in range(self.snapshot_epochs):
                    perm = torch.randperm(len(x), generator=gen)
                    for s in range(math.ceil(len(x) / bs)):
                        idx = perm[s * bs : (s + 1) * bs]
                        xb = x[idx].to(device)
                        if self.target == "autoencoder":
                            loss = _reconstruction_bce(target(xb), xb)
                        else:
                            loss = nn.functional.cross_entropy(target(xb), y[idx].to(device))
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                snaps.append(_as_state(target))
        return snaps

    # ------------------------------------------------------------------ fitting
    def fit(self, data_loader: DataLoader) -> Self:
        """Make the snapshots (unless given), compute the gradients and train the alarm.

        The loader is read once into memory.

        :param data_loader: yields ``(x, y)``: ID inputs with class labels ``>= 0``, optionally
            known anomalies with labels ``< 0``
        :return: self
        :raises ValueError: for an empty loader, NaN/inf inputs, a changing input shape, labels
            >= the model's number of outputs, or no ID sample
        """
        model = self._require_model()
        xs, ys = [], []
        n_classes = None
        for x, y in _iter_batches(data_loader, "R2AD2", model_dtype(model)):
            if self.target == "classifier":
                if n_classes is None:
                    n_classes = _model_outputs(model, x.to(self._target_device()))
                _check_label_range(y, n_classes, "R2AD2")
            xs.append(x.cpu())
            ys.append(y.cpu())
        x, y = torch.cat(xs), torch.cat(ys)
        known = y >= 0
        if not bool(known.any()):
            raise ValueError("R2AD2: expected ID samples (labels >= 0) in the fit loader, got none")
        self.alarm = None
        self.input_shape = tuple(x.shape[1:])
        self.n_classes = n_classes
        if self.given_snapshots is None:
            self.snapshots = self._train_snapshots(x[known], y[known])
        g = self._gradients(x.to(self._target_device())).cpu()
        return self.fit_structured(g, y)

    def fit_structured(
        self, features: Tensor, y: Tensor, input_shape: Sequence[int] | None = None
    ) -> Self:
        """Train the alarm network on pre-computed gradient sequences.

        The counter-examples are drawn in input space, so the snapshots must exist (given at
        construction or made by :meth:`fit`).

        :param features: gradients ``(N, T, D)`` as returned by :meth:`features`
        :param y: labels ``(N,)``: ``>= 0`` ID, ``< 0`` known anomaly
        :param input_shape: per-sample input shape for the counter-examples (default: the
            fitted one)
        :return: self
        :raises ValueError: for malformed features, missing snapshots or input shape
        """
        self._require_model()
        if self.snapshots is None:
            raise ValueError(
                "expected snapshots of the model: pass snapshots=... or call fit(loader) first"
            )
        T, D = len(self.snapshots), self.gradient_dim
        if not isinstance(features, Tensor) or features.shape[1:] != (T, D):
            raise ValueError(
                f"expected features of shape (N, {T}, {D}), got "
                f"{tuple(features.shape) if isinstance(features, Tensor) else type(features)}"
            )
        y = check_labels(y, len(features))
        if len(y) == 0:
            raise ValueError("R2AD2: expected training samples, got an empty set")
        if torch.isnan(features).any():
            raise ValueError("expected gradient features without NaN, got NaN")
        if input_shape is not None:
            self.input_shape = tuple(int(s) for s in input_shape)
        if self.input_shape is None:
            raise ValueError("expected input_shape for the counter-examples, got None")
        if self.noise_std is None and not bool((y < 0).any()):
            raise ValueError(
                "expected known anomalies (labels < 0) when noise_std=None disables the "
                "counter-examples, got none"
            )
        if self.n_classes is None and self.target == "classifier":
            self.n_classes = _model_outputs(
                self.model, torch.zeros((1, *self.input_shape), device=self._target_device())
            )
        labels = (y < 0).float()
        dims = self.alarm_dims
        if isinstance(dims, str):
            dims = _ALARMS[dims]
        self.alarm = self._train_alarm(features.float(), labels, tuple(dims))
        return self

    def _noise(self, n: int, gen: torch.Generator) -> Tensor:
        noise = torch.randn((n, *self.input_shape), generator=gen)
        return (self.noise_mean + self.noise_std * noise).to(self._target_device())

    def _train_alarm(self, g: Tensor, labels: Tensor, dims: tuple[int, ...]) -> GradientAlarm:
        device = self._target_device()
        gen = torch.Generator().manual_seed(self.seed + 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            alarm = GradientAlarm(g.shape[2], dims, self.dropout).to(device)
            with torch.no_grad():  # exact statistics of the labelled training gradients
                flat = g.reshape(-1, g.shape[2]).double()
                alarm.norm.running_mean.copy_(flat.mean(0).float())
                alarm.norm.running_var.copy_(flat.var(0).float())
            norm_params = set(alarm.norm.parameters())
            opt_alarm = torch.optim.Adam(
                [p for p in alarm.parameters() if p not in norm_params], lr=self.lr
            )
            opt_norm = torch.optim.Adam(alarm.norm.parameters(), lr=self.lr)
            pool = None
            use_noise = self.noise_std is not None
            if use_noise and self.noise_pool is not None:
                pool = self._gradients(self._noise(self.noise_pool, gen))
            g, labels = g.to(device), labels.to(device)
            bs = self.batch_size
            bce = nn.functional.binary_cross_entropy_with_logits
            with torch.enable_grad():
                for _ in range(self.epochs):
                    perm = torch.randperm(len(g), generator=gen).to(device)
                    for s in range(math.ceil(len(g) / bs)):
                        idx = perm[s * bs : (s + 1) * bs]
                        gb, yb = g[idx], labels[idx]
                        if not use_noise:
                            gn = gb[:0]
                        elif pool is None:
                            gn = self._gradients(self._noise(len(idx), gen))
                        else:
                            pick = torch.randint(len(pool), (len(idx),), generator=gen)
                            gn = pool[pick.to(device)]
                        # alarm step: normalisation in inference mode, noise included
                        alarm.train()
                        alarm.norm.eval()
                        out = alarm(torch.cat([gb, gn]))
                        loss = bce(out[: len(idx)], yb)
                        if use_noise:
                            loss = loss + bce(out[len(idx) :], torch.ones_like(yb))
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
        self._require_fitted()
        T, D = len(self.snapshots), self.alarm.norm.num_features
        if not isinstance(features, Tensor) or features.dim() != 3 or features.shape[1:] != (T, D):
            raise ValueError(
                f"expected features of shape (B, {T}, {D}), got "
                f"{tuple(features.shape) if isinstance(features, Tensor) else type(features)}"
            )
        if len(features) == 0:
            return torch.empty(0, device=features.device)
        return self.alarm(features.float().to(self._target_device()))

    def predict(self, x: Tensor) -> Tensor:
        """Outlier scores of shape ``(B,)``; larger is more anomalous.

        :param x: model inputs of the shape seen at fit time
        :raises RequiresFittingException: before fitting
        :raises ValueError: for a wrong shape or NaN/inf values
        """
        self._require_fitted()
        return self.predict_structured(self.features(x))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Fitted state as tensors and primitives only (``torch.load(weights_only=True)`` safe).

        Contains the :math:`T` snapshots (full model state dicts) and the alarm network.
        """
        self._require_fitted()
        dims = [self.alarm.lstm1.hidden_size, self.alarm.lstm2.hidden_size] + [
            m.out_features for m in self.alarm.head if isinstance(m, nn.Linear)
        ][:-1]
        return {
            "version": _STATE_VERSION,
            "detector": "R2AD2",
            "params": list(self._param_names()),
            "input_shape": list(self.input_shape),
            "n_classes": self.n_classes,
            "target": self.target,
            "alarm_dims": dims,
            "dropout": self.dropout,
            "snapshots": [{k: v.detach().cpu() for k, v in s.items()} for s in self.snapshots],
            "alarm": {k: v.detach().cpu() for k, v in self.alarm.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> Self:
        """Restore a state from :meth:`state_dict`, checked against this detector's model.

        :raises ValueError: if the state is malformed, from another version, or was fitted for a
            model with other parameters
        """
        who = "R2AD2"
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
        model = self._require_model()
        try:
            names = [str(n) for n in state["params"]]
            input_shape = tuple(int(s) for s in state["input_shape"])
            n_classes = None if state["n_classes"] is None else int(state["n_classes"])
            target = str(state["target"])
            dims = [int(d) for d in state["alarm_dims"]]
            dropout = float(state["dropout"])
            snapshots = [_as_state(s) for s in state["snapshots"]]
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
        alarm = GradientAlarm(D, dims, dropout)
        try:
            alarm.load_state_dict(alarm_state)
        except RuntimeError as e:
            raise ValueError(f"corrupted {who} state: {e}") from e
        self.params = names
        self.input_shape = input_shape
        self.n_classes = n_classes
        self.target = target
        self.dropout = dropout
        self.snapshots = snapshots
        self.n_snapshots = len(snapshots)
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
