"""A3: Activation Anomaly Analysis (Sperl, Schulze & Böttinger, ECML-PKDD 2020)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from pytorch_ood.api import (
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
from uniad_plugin.nn.alarms import AlarmNet, default_hidden
from uniad_plugin.nn.taps import LayerTaps, activation_taps, resolve_layers
from uniad_plugin.nn.vae import AnomalyVAE, fit_vae

log = logging.getLogger(__name__)

__all__ = ["A3"]

#: dropout probability before the alarm's output layer (the paper's value)
DROPOUT = 0.1
#: labelled samples per training step, plus as many counter-examples (the paper's value)
BATCH_SIZE = 256
#: mean and standard deviation of the Gaussian counter-examples (the paper's values)
NOISE_MEAN, NOISE_STD = 0.5, 1.0
#: weight w of the counter-example loss (the paper's value)
ANOMALY_WEIGHT = 1.0
#: weight of the loss terms of known anomalies, as that of normal samples (our choice)
KNOWN_ANOMALY_WEIGHT = 1.0
#: scale floor, as a fraction of the layer's mean ID standard deviation (see the docs page)
MIN_SCALE_FRACTION = 0.1
#: standardised activations are clipped to +-this bound (a numerical guard for extreme inputs;
#: normal data and counter-examples stay far inside it)
ACTIVATION_CLIP = 1e4
#: rows per chunk when the ID statistics are streamed
_CHUNK = 1024


def _check_finite(t: Tensor, what: str) -> None:
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"expected finite values in {what}, got NaN or inf")


class _Fitted(NamedTuple):
    """What scoring and :meth:`A3.state_dict` read of a fitted :class:`A3`."""

    alarm: AlarmNet
    mean: Tensor
    scale: Tensor
    layer_names: list[str]
    layer_dims: list[int]
    input_shape: tuple[int, ...]


class A3(UniadDetector, StructuredDetector):
    """A3, *Activation Anomaly Analysis* (Sperl, Schulze & Böttinger, ECML-PKDD 2020).

    The frozen *target* network :math:`f` (here: the classifier) is observed through its hidden
    activations :math:`a(x)`, the outputs of every hidden activation layer, flattened and
    concatenated. An *alarm* network :math:`s` (an MLP with a sigmoid output,
    :class:`~uniad_plugin.nn.alarms.AlarmNet`) is trained on :math:`a(x)` to separate normal
    data (label 0) from anomalies (label 1). Because real anomalies are usually missing, an
    *anomaly network* generates counter-examples :math:`\\tilde x` in the input space (Gaussian
    noise :math:`N(0.5, 1)`, or a VAE), which are passed through :math:`f` so that their
    activations feed the alarm:

    .. math::

        L = \\mathrm{BCE}(y, s(a(x))) + w \\cdot \\mathrm{BCE}(1, s(a(\\tilde x)))

    with :math:`y = 0` for normal and :math:`y = 1` for known anomalies. Only :math:`s` is
    trained; :math:`f` is never modified. The score is the alarm's logit, larger = more
    anomalous. What the paper states and what this implementation chooses (layers,
    standardisation, alarm widths, learning rate, score, VAE) is listed on the
    `A3 docs page <../detectors/a3.md#design-choices-in-detail>`_.

    Fixed: dropout 0.1 before the alarm's output layer, batches of 256 labelled samples plus
    as many counter-examples, Gaussian counter-examples :math:`N(0.5, 1)`, counter-example
    weight :math:`w = 1` (the paper's values); known anomalies weigh as much as normal
    samples in the loss (our choice).

    :param model: the pre-trained classifier (the target network); it is used in eval mode
        and restored to its previous train/eval flags afterwards
    :param layers: module names (or modules, or ``"name:input"``/``"logits"`` as understood by
        :class:`~uniad_plugin.nn.taps.LayerTaps`) whose outputs form :math:`a(x)`; ``None``
        finds all hidden activation modules
    :param hidden: alarm network widths, ``None`` for :func:`~uniad_plugin.nn.alarms.default_hidden`
    :param epochs: training epochs of the alarm network
    :param lr: Adam learning rate of the alarm network
    :param anomaly: ``"gaussian"`` (noise :math:`N(0.5, 1)` in input space) or ``"vae"``
    :param known_anomalies: train on the rows of the fit data with labels < 0 as known
        anomalies (the paper's semi-supervised option); ``False`` (the default): they are
        ignored with a warning, as by every detector of this package and pytorch-ood's
        built-ins
    :param vae_epochs: training epochs of the VAE (only ``anomaly="vae"``). The default, 3, is
        the best of 1, 3, 10 and 30 on the digits' validation split; a VAE trained longer
        decodes counter-examples so close to real digits that the alarm learns to pass noise
        (30 epochs: noise AUROC 0.06). Measured on the digits only
        (``experiments/a3_vae_epochs.py``)
    :param seed: seed of every random choice made while fitting (initialisation, counter-examples,
        shuffling, dropout, VAE); the global torch RNG is also seeded for the duration of
        :meth:`fit`, so a shuffling loader without its own generator is reproducible too
    :param device: device to fit and score on (the model is moved there, as by
        :meth:`to`); ``None`` keeps the model's device
    """

    info = _base.classification_info(
        Paper(
            title="Activation Anomaly Analysis",
            venue="ECML-PKDD",
            year=2020,
            url="https://arxiv.org/abs/2003.01801",
            code="https://github.com/Fraunhofer-AISEC/A3",
        )
    )

    requires_fit = True

    hyperparameter_space = {
        "lr": [1e-5, 1e-4, 1e-3],
        "epochs": [20, 60],
    }

    fitted_attribute = "alarm"

    hyperparameters = {
        "hidden": hp.positive_ints(optional=True),
        "epochs": hp.integer(1),
        "lr": hp.real(0.0),
        "anomaly": hp.choice("gaussian", "vae"),
        "known_anomalies": hp.flag(),
        "vae_epochs": hp.integer(0),
        "seed": hp.integer(None),
    }

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str | nn.Module] | None = None,
        *,
        hidden: Sequence[int] | None = None,
        epochs: int = 60,
        lr: float = 1e-4,
        anomaly: str = "gaussian",
        known_anomalies: bool = False,
        vae_epochs: int = 3,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self._set_model(model, required=True)
        if layers is not None:
            if isinstance(layers, (str, nn.Module)):
                layers = [layers]
            resolve_layers(model, layers)  # fail early on unknown names
            layers = list(layers)

        self.layers = layers
        self._init_hyperparameters(locals())

        # fitted state
        self.alarm: AlarmNet | None = None
        self.vae: AnomalyVAE | None = None
        self.mean: Tensor | None = None  #: per-activation ID mean
        self.scale: Tensor | None = None  #: per-activation ID scale (floored std)
        self.layer_names: list[str] | None = None  #: tapped layers, in forward order
        self.layer_dims: list[int] | None = None  #: flattened size of each tapped layer
        self.input_shape: tuple[int, ...] | None = None  #: input shape seen in fit
        self.num_classes: int | None = None  #: number of model outputs seen in fit
        self._taps: LayerTaps | None = None
        if device is not None:
            self.to(device)

    # -- helpers -------------------------------------------------------------------------------

    def _resolve(self, example: Tensor) -> tuple[list[str], list[int], int | None, LayerTaps]:
        """Find the tapped layers with one probe forward pass (see
        :func:`~uniad_plugin.nn.taps.activation_taps`)."""
        return activation_taps(self._require_model(), self.layers, example)

    def _fitted(self) -> _Fitted:
        """The fitted alarm, statistics, layers and input shape.

        :raises RequiresFittingException: before fitting
        """
        alarm, mean, scale = self.alarm, self.mean, self.scale
        names, dims, input_shape = self.layer_names, self.layer_dims, self.input_shape
        if (
            alarm is None
            or mean is None
            or scale is None
            or names is None
            or dims is None
            or input_shape is None
        ):
            self._require_fitted()  # raises before the fit, with the package's message
            raise RequiresFittingException("A3: the fitted state is incomplete")
        return _Fitted(alarm, mean, scale, names, dims, input_shape)

    def _tapped_dims(self) -> list[int]:
        """The flattened sizes of the tapped layers, which a fit resolves before it uses them."""
        assert self.layer_dims is not None, "the tapped layers are resolved first"
        return self.layer_dims

    def _activations(self, x: Tensor) -> Tensor:
        """Raw concatenated activations of a batch (one forward pass, model in eval mode)."""
        assert self._taps is not None
        with torch.no_grad(), _base.eval_mode(self._require_model()):
            _, feats = self._taps(x)
        return torch.cat([f.float() for f in feats], dim=1)

    def _standardise(self, a: Tensor) -> Tensor:
        mean, scale = self.mean, self.scale
        assert mean is not None and scale is not None, "the ID statistics are computed first"
        z = (a - mean) / scale
        z = torch.nan_to_num(
            z, nan=ACTIVATION_CLIP, posinf=ACTIVATION_CLIP, neginf=-ACTIVATION_CLIP
        )
        return z.clamp(-ACTIVATION_CLIP, ACTIVATION_CLIP)

    def _check_acts(self, acts: Sequence[Tensor], fitted: bool) -> Tensor:
        if isinstance(acts, Tensor) or not isinstance(acts, (list, tuple)):
            raise TypeError(
                f"expected a list of per-layer activation tensors, got {type(acts).__name__}"
            )
        if len(acts) == 0:
            raise ValueError("expected at least one layer of activations, got an empty list")
        for i, a in enumerate(acts):
            if not isinstance(a, Tensor):
                raise TypeError(f"expected tensors in acts, got {type(a).__name__} at index {i}")
        n = acts[0].shape[0]
        flat = [a.reshape(a.shape[0], -1) for a in acts]
        if any(a.shape[0] != n for a in flat):
            raise ValueError(
                f"expected the same number of rows in every layer, got {[a.shape[0] for a in acts]}"
            )
        if fitted and self.layer_dims is not None:
            dims = [a.shape[1] for a in flat]
            if dims != self.layer_dims:
                raise ValueError(
                    f"expected activations of layers {self.layer_names} with sizes "
                    f"{self.layer_dims}, got sizes {dims}"
                )
        out = torch.cat([a.float() for a in flat], dim=1)
        _check_finite(out, "the activations")
        return out

    def _check_fit_labels(self, y: Tensor, n: int) -> Tensor:
        """Checked labels (whole numbers, see :func:`~uniad_plugin.detectors._base.check_labels`)."""
        if not isinstance(y, Tensor):
            raise TypeError(f"expected labels as a torch.Tensor, got {type(y).__name__}")
        y = _base.check_labels(y, n)
        if not (y >= 0).any():
            raise ValueError(
                "expected normal samples (targets >= 0) to fit on, got only known anomalies"
            )
        return y

    def _set_stats(self, mean: Tensor, var: Tensor) -> None:
        std = var.clamp_min(0).sqrt()
        floors = []
        start = 0
        for d in self._tapped_dims():
            layer_std = std[start : start + d]
            floors.append(
                torch.full_like(layer_std, MIN_SCALE_FRACTION * float(layer_std.mean()) or 1.0)
            )
            start += d
        floor = torch.cat(floors)
        self.mean = mean.float()
        self.scale = torch.maximum(std, floor).float()

    def _build_alarm(self) -> AlarmNet:
        d = sum(self._tapped_dims())
        hidden = self.hidden if self.hidden is not None else default_hidden(d)
        return AlarmNet(d, hidden, DROPOUT)

    # -- representation ------------------------------------------------------------------------

    @torch.no_grad()
    def extract(self, x: Tensor) -> tuple[list[Tensor]]:
        """The representation :meth:`predict_structured` reads: ``(activations,)``.

        ``predict(x)`` equals ``predict_structured(*extract(x))``.

        :param x: model inputs
        :return: a 1-tuple holding one flattened ``(B, D_l)`` tensor per tapped layer, from ONE
            forward pass (the layers are resolved from ``x`` if the detector is not fitted)
        """
        self._check_input(x)
        x = x.to(device=self._target_device(), dtype=self._model_dtype())
        if self._taps is None:
            self._taps = self._resolve(x[:2])[3]
        with _base.eval_mode(self._require_model()):
            _, feats = self._taps(x)
        return ([f.float() for f in feats],)

    def _check_input(self, x: Tensor) -> None:
        _base.check_inputs(x, self.input_shape, "the inputs")

    # -- fitting ---------------------------------------------------------------------------------

    def fit(self, data_loader: DataLoader | Iterable) -> Self:
        """Fit the alarm network on a loader of ``(x, y)`` batches.

        Targets ``y >= 0`` are normal data (the class label itself is not used). Targets
        ``y < 0`` are known anomalies: with ``known_anomalies=True`` they enter the alarm's loss
        with label 1, otherwise they are ignored with a warning. The model is only run
        forward, in eval mode, without gradients.

        :param data_loader: yields ``(x, y)`` with ``x`` of shape :math:`B \\times \\ldots`
        :return: self
        :raises ValueError: for an empty loader, non-finite inputs, inconsistent shapes, no
            normal samples or an invalid hyperparameter
        """
        self._check_hyperparameters()
        with torch.random.fork_rng(devices=[]):
            # a shuffling loader without its own generator draws from the global RNG
            torch.manual_seed(self.seed)
            batches = [(x.detach().cpu(), y.cpu()) for x, y in self._iter_batches(data_loader)]
        x = torch.cat([b[0] for b in batches])
        y = self._check_fit_labels(torch.cat([b[1] for b in batches]), len(x))
        (x,), y = _base.split_known([x], y, "A3", self.known_anomalies)
        return self._fit(x=x, y=y, acts=None)

    def fit_structured(
        self,
        features: Sequence[Tensor],
        y: Tensor,
        *,
        inputs: Tensor | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> Self:
        """Fit on pre-extracted activations (as returned by :meth:`extract`).

        Counter-examples still live in the input space and are passed through the model, so
        the detector needs the input shape (``inputs.shape[1:]``, ``input_shape``, or that of a
        previous fit) and, for ``anomaly="vae"``, the ``inputs`` themselves.

        :param features: one tensor per tapped layer (in the order of :attr:`layer_names`, as
            produced by :meth:`extract`), each of shape :math:`N \\times D_l`
        :param y: targets of shape :math:`N`; ``>= 0`` normal, ``< 0`` known anomalies (used
            with ``known_anomalies=True``, otherwise ignored with a warning)
        :param inputs: the model inputs the activations came from, shape :math:`N \\times \\ldots`
        :param input_shape: shape of one model input, if ``inputs`` is not given
        :return: self
        """
        self._check_hyperparameters()
        a = self._check_acts(features, fitted=False)
        y = self._check_fit_labels(y, a.shape[0])
        if inputs is not None:
            if not isinstance(inputs, Tensor) or inputs.shape[0] != a.shape[0]:
                raise ValueError(
                    f"expected inputs as a tensor with {a.shape[0]} rows, got "
                    f"{getattr(inputs, 'shape', type(inputs).__name__)}"
                )
            _check_finite(inputs, "the inputs")
            input_shape = tuple(inputs.shape[1:])
            (a, inputs), y = _base.split_known([a, inputs], y, "A3", self.known_anomalies)
        else:
            (a,), y = _base.split_known([a], y, "A3", self.known_anomalies)
        if input_shape is None:
            input_shape = self.input_shape
        if input_shape is None:
            raise ValueError(
                "expected inputs= or input_shape= (counter-examples are drawn in the model's "
                "input space), got neither"
            )
        if self.anomaly == "vae" and inputs is None:
            raise ValueError("anomaly='vae' trains on the model inputs; expected inputs=, got None")
        return self._fit(x=inputs, y=y, acts=a, input_shape=tuple(int(s) for s in input_shape))

    def _fit(
        self,
        x: Tensor | None,
        y: Tensor,
        acts: Tensor | None,
        input_shape: tuple[int, ...] | None = None,
    ) -> Self:
        device = self._target_device()
        dtype = self._model_dtype()
        if x is not None:
            x = x.to(dtype)
        input_shape = tuple(x.shape[1:]) if x is not None else input_shape
        assert input_shape is not None, "fit_structured passes the shape of the inputs it lacks"
        gen = seeded_generator(self.seed, device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            example = (
                x[:2].to(device)
                if x is not None
                else torch.full((2, *input_shape), NOISE_MEAN, device=device, dtype=dtype)
            )
            names, dims, n_out, self._taps = self._resolve(example)
            if n_out is not None and int(y.max()) >= n_out:
                raise ValueError(
                    f"expected targets below {n_out} (class indices of the model's {n_out} "
                    f"outputs) or negative for known anomalies, got {int(y.max())}"
                )
            if acts is not None and acts.shape[1] != sum(dims):
                raise ValueError(
                    f"expected activations of layers {names} with sizes {dims} "
                    f"(total {sum(dims)}), got total size {acts.shape[1]}"
                )
            self.layer_names, self.layer_dims, self.input_shape = names, dims, input_shape
            self.num_classes = n_out

            def raw_acts(idx: Tensor) -> Tensor:
                if acts is not None:
                    return acts[idx].to(device)
                assert x is not None, "fit passes the inputs whenever it passes no activations"
                return self._activations(x[idx].to(device))

            normal_idx = torch.nonzero(y >= 0).flatten()
            self._id_statistics(raw_acts, normal_idx, device)
            self.vae = None
            if self.anomaly == "vae":
                assert x is not None, "fit_structured requires inputs for anomaly='vae'"
                self.vae = fit_vae(
                    x[normal_idx], self.vae_epochs, BATCH_SIZE, device, gen, self.seed + 2
                )
            self.alarm = self._train_alarm(x, y, acts, input_shape, gen)
        return self

    def _id_statistics(
        self, raw_acts: Callable[[Tensor], Tensor], normal_idx: Tensor, device: torch.device
    ) -> None:
        """Mean and floored scale of the activations (float64 sums over normal samples)."""
        s1 = torch.zeros(sum(self._tapped_dims()), dtype=torch.float64, device=device)
        s2 = torch.zeros_like(s1)
        for idx in torch.split(normal_idx, _CHUNK):
            a = raw_acts(idx).double()
            s1 += a.sum(0)
            s2 += a.pow(2).sum(0)
        m = len(normal_idx)
        mean = s1 / m
        var = (s2 / m - mean.pow(2)) * (m / max(m - 1, 1))
        self._set_stats(mean, var)

    def _counter_examples(
        self, x: Tensor | None, idx: Tensor, input_shape: tuple[int, ...], gen: torch.Generator
    ) -> Tensor:
        device = self._target_device()
        if self.vae is not None:
            assert x is not None, "the VAE is trained on inputs, which the fit then passes"
            return self.vae.counter_examples(x[idx].to(device), gen)
        shape = (len(idx), *input_shape)
        x_tilde = torch.randn(shape, generator=gen, device=device, dtype=self._model_dtype())
        return x_tilde * NOISE_STD + NOISE_MEAN

    @torch.enable_grad()  # the alarm trains under an outer torch.no_grad() too
    def _train_alarm(
        self,
        x: Tensor | None,
        y: Tensor,
        acts: Tensor | None,
        input_shape: tuple[int, ...],
        gen: torch.Generator,
    ) -> AlarmNet:
        """Train the alarm on labelled batches plus as many counter-examples per step."""
        device = self._target_device()
        cpu_gen = seeded_generator(self.seed + 1)
        normal = y >= 0
        alarm = self._build_alarm().to(device)
        alarm.reset_parameters(gen)
        opt = torch.optim.Adam(alarm.parameters(), lr=self.lr)
        target = (~normal).float().to(device)
        weight = torch.where(normal, 1.0, KNOWN_ANOMALY_WEIGHT).to(device)
        alarm.train()
        for idx in minibatches(len(y), BATCH_SIZE, self.epochs, cpu_gen):
            b = len(idx)
            x_tilde = self._counter_examples(x, idx, input_shape, gen)
            if acts is None:
                assert x is not None, "fit passes the inputs whenever it passes no activations"
                both = self._activations(torch.cat([x[idx].to(device), x_tilde]))
                a_pos, a_neg = both[:b], both[b:]
            else:
                a_pos, a_neg = acts[idx].to(device), self._activations(x_tilde)
            logits = alarm(self._standardise(torch.cat([a_pos, a_neg])), gen)
            loss_lab = F.binary_cross_entropy_with_logits(
                logits[:b], target[idx], weight=weight[idx]
            )
            loss_anom = F.binary_cross_entropy_with_logits(logits[b:], torch.ones_like(logits[b:]))
            loss = loss_lab + ANOMALY_WEIGHT * loss_anom
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return alarm.eval().requires_grad_(False)

    # -- scoring -----------------------------------------------------------------------------

    @torch.no_grad()
    def predict_structured(self, features: Sequence[Tensor]) -> Tensor:
        """Alarm logits for pre-extracted activations.

        :param features: one tensor per tapped layer (see :meth:`extract`), each
            :math:`B \\times D_l`
        :return: outlier scores of shape :math:`B`, larger = more anomalous
        :raises RequiresFittingException: before fitting
        """
        fitted = self._fitted()
        a = self._check_acts(features, fitted=True)
        device = fitted.mean.device
        return fitted.alarm(self._standardise(a.to(device)))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Alarm logits for raw inputs (one forward pass through the model with hooks).

        :param x: inputs of the shape seen in :meth:`fit`, :math:`B \\times \\ldots`
        :return: outlier scores of shape :math:`B`, larger = more anomalous
        :raises RequiresFittingException: before fitting
        :raises ValueError: for inputs of another shape or with NaN/inf
        """
        fitted = self._fitted()
        self._check_input(x)
        device = fitted.mean.device
        if x.shape[0] == 0:
            return torch.empty(0, device=device)
        a = self._activations(x.to(device=device, dtype=self._model_dtype()))
        return fitted.alarm(self._standardise(a))

    # -- persistence -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything scoring needs, as tensors and primitives (``torch.load(weights_only=True)``
        compatible). The model itself is not included; the VAE is not needed for scoring and is
        not saved.

        :raises RequiresFittingException: before fitting
        """
        fitted = self._fitted()
        alarm = fitted.alarm
        return self._pack_state(
            {
                "layer_names": list(fitted.layer_names),
                "layer_dims": list(fitted.layer_dims),
                "input_shape": list(fitted.input_shape),
                "num_classes": self.num_classes,
                "alarm_hidden": [lin.out_features for lin in alarm.hidden],
                "alarm_dropout": alarm.p,
                "mean": fitted.mean.detach().cpu().clone(),
                "scale": fitted.scale.detach().cpu().clone(),
                "alarm": {k: v.detach().cpu().clone() for k, v in alarm.state_dict().items()},
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> Self:
        """Restore a fitted detector from :meth:`state_dict` (for the same model architecture).

        :raises ValueError: if the state is not an A3 state (of this format version) or belongs
            to a model whose tapped activations differ (names or sizes)
        """
        hyper, state = self._unpack_state(state)
        required = "layer_names layer_dims input_shape num_classes alarm_hidden alarm_dropout"
        missing = [k for k in [*required.split(), "mean", "scale", "alarm"] if k not in state]
        if missing:
            raise ValueError(f"expected a complete A3 state, keys {missing} are missing")
        input_shape = tuple(int(s) for s in state["input_shape"])
        device = self._target_device()
        probe = torch.full((2, *input_shape), 0.5, device=device, dtype=self._model_dtype())
        # the layers the state was fitted on, not whatever this instance was configured with
        saved_layers, self.layers = self.layers, list(state["layer_names"])
        try:
            names, dims, n_out, taps = self._resolve(probe)
        except (RuntimeError, ValueError) as err:
            self.layers = saved_layers
            raise ValueError(
                f"the state was fitted for layers {state['layer_names']} and inputs of shape "
                f"{input_shape}, which this model cannot process: {err}"
            ) from err
        if (
            names != list(state["layer_names"])
            or dims != list(state["layer_dims"])
            or n_out != state["num_classes"]
        ):
            self.layers = saved_layers
            raise ValueError(
                f"expected a state for this model (activations {names} with sizes {dims}, "
                f"{n_out} outputs), got one fitted on a model with layers "
                f"{state['layer_names']} of sizes {state['layer_dims']} and "
                f"{state['num_classes']} outputs"
            )
        alarm = AlarmNet(sum(dims), state["alarm_hidden"], state["alarm_dropout"])
        alarm.load_state_dict(state["alarm"])
        alarm.to(device).eval().requires_grad_(False)
        self.layer_names, self.layer_dims, self.input_shape = names, dims, input_shape
        self.num_classes, self._taps = n_out, taps
        self.mean = state["mean"].to(device)
        self.scale = state["scale"].to(device)
        self.alarm = alarm
        self._restore_hyperparameters(hyper)
        return self
