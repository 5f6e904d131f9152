"""A3: Activation Anomaly Analysis (Sperl, Schulze & Böttinger, ECML-PKDD 2020).

..  autoclass:: uniad_plugin.detectors.a3.A3
    :members:
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
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

from uniad_plugin.nn.taps import LayerTaps, resolve_layers

log = logging.getLogger(__name__)

__all__ = ["A3", "AlarmNet", "AnomalyVAE", "ACTIVATION_TYPES", "default_hidden"]

#: module types whose outputs count as "hidden activation layers" when ``layers=None``
#: (softmax-like output normalisations are deliberately not in the list)
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Threshold,
    nn.GLU,
)

#: the authors' alarm network for MNIST-sized targets
PAPER_HIDDEN: tuple[int, ...] = (1000, 500, 200, 75)
#: activation size at and above which the alarm network gets the authors' full widths
FULL_SIZE_ACTIVATIONS = 2000
#: the authors' VAE (encoder widths, latent size) for 784-dimensional MNIST inputs
PAPER_VAE_HIDDEN: tuple[int, ...] = (800, 400, 100)
PAPER_VAE_LATENT = 25
#: the paper's counter-example spread in the VAE's latent space: z = mu(x) + 5 eps
VAE_SAMPLING_STD = 5.0
#: scale floor, as a fraction of the layer's mean ID standard deviation (see class docstring)
MIN_SCALE_FRACTION = 0.1
#: standardised activations are clipped to +-this bound (a numerical guard for extreme inputs;
#: normal data and counter-examples stay far inside it)
ACTIVATION_CLIP = 1e4


def default_hidden(activation_size: int) -> list[int]:
    """Alarm-network widths scaled to the size of the concatenated activations.

    The authors' widths ``[1000, 500, 200, 75]`` are used when there are at least
    ``2000`` activations; below that every width is multiplied by ``activation_size / 2000``
    (so the first layer is never wider than half the input) and floored at 8.

    :param activation_size: total number of activations :math:`D = \\sum_l D_l`
    :return: list of hidden widths
    """
    if activation_size < 1:
        raise ValueError(f"expected a positive activation size, got {activation_size}")
    s = min(1.0, activation_size / FULL_SIZE_ACTIVATIONS)
    return [max(8, round(w * s)) for w in PAPER_HIDDEN]


def _scaled_vae_dims(input_dim: int) -> tuple[list[int], int]:
    s = min(1.0, input_dim / 784)
    return [max(16, round(w * s)) for w in PAPER_VAE_HIDDEN], max(2, round(PAPER_VAE_LATENT * s))


def _dropout(h: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    keep = torch.rand(h.shape, generator=generator, device=h.device) >= p
    return h * keep / (1.0 - p)


def _glorot_(linear: nn.Linear, generator: torch.Generator | None) -> None:
    # Keras defaults, as in the authors' code: Glorot-uniform kernel, zero bias
    nn.init.xavier_uniform_(linear.weight, generator=generator)
    nn.init.zeros_(linear.bias)


class AlarmNet(nn.Module):
    """The alarm network: ``Linear -> ReLU`` per hidden width, dropout, ``Linear -> 1``.

    As in the authors' code, dropout sits once, after the last hidden layer. The forward pass
    returns the logit; dropout masks are drawn from ``generator`` (only in training mode).

    :param in_dim: number of (concatenated) activations
    :param hidden: hidden widths
    :param dropout: dropout probability before the output layer
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], dropout: float = 0.1) -> None:
        super().__init__()
        dims = [in_dim, *hidden]
        self.hidden = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.out = nn.Linear(dims[-1], 1)
        self.p = float(dropout)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Glorot-uniform weights and zero biases, drawn from ``generator``."""
        with torch.no_grad():
            for lin in [*self.hidden, self.out]:
                _glorot_(lin, generator)

    def forward(self, h: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for lin in self.hidden:
            h = F.relu(lin(h))
        if self.training and self.p > 0:
            h = _dropout(h, self.p, generator)
        return self.out(h).squeeze(1)


class AnomalyVAE(nn.Module):
    """Small fully connected VAE used as the "anomaly network" (``anomaly="vae"``).

    Encoder ``Linear -> ReLU`` per width in ``hidden``, then mean and log-variance heads;
    decoder mirrors the encoder, applies dropout 0.1 and a linear output layer (sigmoid applied
    in :meth:`decode` when the data lie in [0, 1]). As in the authors' code, counter-examples
    are :math:`\\tilde x = \\mathrm{dec}(\\mu(x) + 5\\epsilon)`, :math:`\\epsilon \\sim N(0, I)`.

    :param input_shape: shape of one input (without batch axis)
    :param hidden: encoder widths
    :param latent: latent dimension
    :param bounded: inputs lie in [0, 1] (sigmoid output and binary cross-entropy); otherwise a
        linear output and squared error
    """

    def __init__(
        self, input_shape: Sequence[int], hidden: Sequence[int], latent: int, bounded: bool
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        d = math.prod(self.input_shape)
        dims = [d, *hidden]
        self.enc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.mu = nn.Linear(dims[-1], latent)
        self.logvar = nn.Linear(dims[-1], latent)
        rdims = [latent, *reversed(hidden)]
        self.dec = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(rdims[:-1], rdims[1:], strict=True)
        )
        self.dec_out = nn.Linear(rdims[-1], d)
        self.bounded = bool(bounded)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            for lin in [*self.enc, self.mu, self.logvar, *self.dec, self.dec_out]:
                _glorot_(lin, generator)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x.flatten(1)
        for lin in self.enc:
            h = F.relu(lin(h))
        return self.mu(h), self.logvar(h)

    def decode_logits(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        h = z
        for lin in self.dec:
            h = F.relu(lin(h))
        if self.training:
            h = _dropout(h, 0.1, generator)
        return self.dec_out(h)

    def decode(self, z: Tensor) -> Tensor:
        out = self.decode_logits(z)
        out = torch.sigmoid(out) if self.bounded else out
        return out.view(-1, *self.input_shape)

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Negative ELBO per sample, averaged over the batch."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        out = self.decode_logits(z, generator)
        target = x.flatten(1)
        if self.bounded:
            rec = F.binary_cross_entropy_with_logits(out, target, reduction="none").sum(1)
        else:
            rec = 0.5 * (out - target).pow(2).sum(1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        return (rec + kl).mean()

    @torch.no_grad()
    def counter_examples(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """:math:`\\mathrm{dec}(\\mu(x) + 5\\epsilon)` for a batch ``x``."""
        mu, _ = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        return self.decode(mu + VAE_SAMPLING_STD * eps)


@contextmanager
def _eval_mode(model: nn.Module):
    """Put every submodule in eval mode, restore each one's own flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _check_finite(t: Tensor, what: str) -> None:
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"expected finite values in {what}, got NaN or inf")


class A3(StructuredDetector):
    """A3, *Activation Anomaly Analysis* (Sperl, Schulze & Böttinger, ECML-PKDD 2020).

    The frozen *target* network :math:`f` (here: the classifier) is observed through its hidden
    activations :math:`a(x)`, the outputs of every hidden activation layer, flattened and
    concatenated. An *alarm* network :math:`s` (an MLP with a sigmoid output) is trained on
    :math:`a(x)` to separate normal data (label 0) from anomalies (label 1). Because real
    anomalies are usually missing, an *anomaly network* generates counter-examples
    :math:`\\tilde x` in the input space, which are passed through :math:`f` so that their
    activations feed the alarm. The loss, as stated by the authors, is

    .. math::

        L = \\mathrm{BCE}(y, s(a(x))) + w \\cdot \\mathrm{BCE}(1, s(a(\\tilde x)))

    with :math:`y = 0` for normal and :math:`y = 1` for known anomalies. Only :math:`s` is
    trained; :math:`f` is never modified.

    **Stated by the paper / authors' code** (github.com/Fraunhofer-AISEC/A3): activations of
    every hidden activation layer, flattened and concatenated; alarm ``[1000, 500, 200, 75]``
    with ReLU, one dropout (0.1) before the sigmoid output; counter-examples from Gaussian
    noise :math:`N(0.5, 1)` per input feature, one fresh noise batch per training batch and of
    the same size (or from a VAE trained on normal data, sampled as
    :math:`\\mathrm{dec}(\\mu(x) + 5\\epsilon)` around the current batch); counter-example loss
    weight 1; known anomalies (if any) enter the labelled batch with label 1; Adam, batch 256,
    lr :math:`10^{-5}`, 60 epochs; Glorot-uniform weights, zero biases.

    **Our design choices** (not the paper's):

    * *Layers*: with ``layers=None``, every module of a type in :data:`ACTIVATION_TYPES` that
      runs in the forward pass, except the one whose output is the model's output. Activations
      applied functionally (``F.relu`` inside ``forward``) are invisible to hooks; pass
      ``layers=`` for such models. A module object that runs more than once per forward pass
      (one ``nn.ReLU`` reused) is refused with a ``ValueError``, since its activations would be
      ambiguous. All layers are collected in one forward pass with
      :class:`~uniad_plugin.nn.taps.LayerTaps`.
    * *Standardisation*: each activation is standardised with the mean and standard deviation
      of the normal training data (known anomalies excluded). Standard deviations below
      ``0.1`` times the mean standard deviation of their layer are raised to that floor, so that
      units that are (almost) dead on normal data do not blow up. The authors feed raw
      activations.
    * *Alarm width*: ``hidden=None`` uses :func:`default_hidden`: the authors' widths when the
      activations have at least 2000 entries, scaled down proportionally below that.
    * *Learning rate*: default ``1e-4`` instead of the paper's ``1e-5``. The paper's 60 epochs
      on all of MNIST are thousands of steps; on smaller training sets (or with fewer epochs)
      ``1e-5`` under-trains the alarm (compare ``python benchmarks/a3_protocol.py --a3-lr
      1e-5`` with the default run, whose results are in
      ``benchmarks/results/a3_protocol.md``). Set ``lr=1e-5`` to follow the paper.
    * *Score*: the alarm's logit (monotone in the sigmoid probability, so same ranking, but
      without saturation at 0 and 1), larger = more anomalous.
    * *VAE*: a fully connected VAE scaled like the authors' ``[800, 400, 100]``, latent 25
      (for 784 input features; scaled down proportionally for smaller inputs), trained for
      ``vae_epochs`` with Adam 1e-3 on the normal training inputs; binary cross-entropy if the
      inputs lie in [0, 1], otherwise squared error.
    * ``fit`` keeps the training *inputs* (not the activations) in memory and recomputes
      activations batch by batch, in one forward pass together with the counter-examples.

    :param model: the pre-trained classifier (the target network); it is used in eval mode
        and restored to its previous train/eval flags afterwards
    :param layers: module names (or modules, or ``"name:input"``/``"logits"`` as understood by
        :class:`~uniad_plugin.nn.taps.LayerTaps`) whose outputs form :math:`a(x)`; ``None``
        finds all hidden activation modules
    :param hidden: alarm network widths, ``None`` for :func:`default_hidden`
    :param dropout: dropout probability before the alarm's output layer
    :param epochs: training epochs of the alarm network
    :param lr: Adam learning rate of the alarm network
    :param batch_size: number of labelled samples per step (plus as many counter-examples)
    :param anomaly: ``"gaussian"`` (noise :math:`N(\\text{noise\\_mean}, \\text{noise\\_std})`
        in input space) or ``"vae"``
    :param noise_mean: mean of the Gaussian counter-examples
    :param noise_std: standard deviation of the Gaussian counter-examples
    :param anomaly_weight: weight :math:`w` of the counter-example loss
    :param known_anomaly_weight: weight of the loss terms of known anomalies (targets < 0)
    :param vae_epochs: training epochs of the VAE (only ``anomaly="vae"``)
    :param seed: seed of every random choice made while fitting (initialisation, counter-examples,
        shuffling, dropout, VAE); the global torch RNG is also seeded for the duration of
        :meth:`fit`, so a shuffling loader without its own generator is reproducible too
    :param device: device to fit and score on (the model is moved there, as by
        :meth:`to`); ``None`` keeps the model's device
    """

    info = DetectorInfo(
        paper=Paper(
            title="Activation Anomaly Analysis",
            venue="ECML-PKDD",
            year=2020,
            url="https://arxiv.org/abs/2003.01801",
            code="https://github.com/Fraunhofer-AISEC/A3",
        ),
        tasks={Task.CLASSIFICATION},
        ai_coded=True,
    )

    requires_fit = True

    hyperparameter_space = {
        "lr": [1e-5, 1e-4, 1e-3],
        "epochs": [20, 60],
        "noise_std": [0.5, 1.0],
    }

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str | nn.Module] | None = None,
        *,
        hidden: Sequence[int] | None = None,
        dropout: float = 0.1,
        epochs: int = 60,
        lr: float = 1e-4,
        batch_size: int = 256,
        anomaly: str = "gaussian",
        noise_mean: float = 0.5,
        noise_std: float = 1.0,
        anomaly_weight: float = 1.0,
        known_anomaly_weight: float = 1.0,
        vae_epochs: int = 30,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if model is None:
            raise ModelNotSetException("A3 needs the target model, got None")
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected model to be a torch.nn.Module, got {type(model).__name__}")
        if anomaly not in ("gaussian", "vae"):
            raise ValueError(f"expected anomaly 'gaussian' or 'vae', got {anomaly!r}")
        if hidden is not None:
            hidden = [int(h) for h in hidden]
            if not hidden or any(h < 1 for h in hidden):
                raise ValueError(f"expected a non-empty list of positive widths, got {hidden}")
        if not 0 <= dropout < 1:
            raise ValueError(f"expected dropout in [0, 1), got {dropout}")
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if int(value) != value or value < 1:
                raise ValueError(f"expected {name} to be a positive integer, got {value}")
        if int(vae_epochs) != vae_epochs or vae_epochs < 0:
            raise ValueError(f"expected vae_epochs to be a non-negative integer, got {vae_epochs}")
        if not lr > 0:
            raise ValueError(f"expected lr > 0, got {lr}")
        if not noise_std > 0:
            raise ValueError(f"expected noise_std > 0, got {noise_std}")
        if anomaly_weight < 0 or known_anomaly_weight < 0:
            raise ValueError(
                "expected non-negative anomaly_weight and known_anomaly_weight, got "
                f"{anomaly_weight} and {known_anomaly_weight}"
            )
        if layers is not None:
            if isinstance(layers, (str, nn.Module)):
                layers = [layers]
            resolve_layers(model, layers)  # fail early on unknown names
            layers = list(layers)

        self.model = model
        self.layers = layers
        self.hidden = hidden
        self.dropout = float(dropout)
        self.epochs = int(epochs)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        self.anomaly = anomaly
        self.noise_mean = float(noise_mean)
        self.noise_std = float(noise_std)
        self.anomaly_weight = float(anomaly_weight)
        self.known_anomaly_weight = float(known_anomaly_weight)
        self.vae_epochs = int(vae_epochs)
        self.seed = int(seed)

        # fitted state
        self.alarm: AlarmNet | None = None
        self.vae: AnomalyVAE | None = None
        self.mean: Tensor | None = None  #: per-activation ID mean
        self.scale: Tensor | None = None  #: per-activation ID scale (floored std)
        self.layer_names: list[str] | None = None  #: tapped layers, in forward order
        self.layer_dims: list[int] | None = None  #: flattened size of each tapped layer
        self.input_shape: tuple[int, ...] | None = None  #: input shape seen in fit
        self.num_outputs: int | None = None  #: number of model outputs seen in fit
        self._taps: LayerTaps | None = None
        if device is not None:
            self.to(device)

    # -- helpers -------------------------------------------------------------------------------

    def _model_device(self) -> torch.device:
        dev = self._infer_value_device(self.model)
        if dev is not None:
            return dev
        return getattr(self, "_device", None) or torch.device("cpu")

    def _model_dtype(self) -> torch.dtype:
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def _resolve(self, example: Tensor) -> tuple[list[str], list[int], int | None, LayerTaps]:
        """Find the tapped layers with one probe forward pass.

        :return: layer names, their flattened sizes, the number of model outputs (``None`` if
            the output is not a ``(B, C)`` matrix) and the taps
        """
        model = self.model
        calls: dict[str, int] = {}
        order: list[str] = []
        last_out: list[tuple[str, Tensor]] = []

        if self.layers is None:
            watched = {
                id(m): n for n, m in model.named_modules() if n and isinstance(m, ACTIVATION_TYPES)
            }
        else:
            specs = resolve_layers(model, self.layers)
            watched = {
                id(m): n
                for n, m in model.named_modules()
                if n in {s.module_name for s in specs if s.module_name}
            }

        def hook(module, _args, output):
            name = watched[id(module)]
            calls[name] = calls.get(name, 0) + 1
            if name not in order:
                order.append(name)
            if isinstance(output, (tuple, list)):
                output = output[0]
            last_out.append((name, output))

        handles = [
            m.register_forward_hook(hook) for m in model.modules() if id(m) in watched.keys()
        ]
        try:
            with torch.no_grad(), _eval_mode(model):
                out = model(example)
        finally:
            for h in handles:
                h.remove()
        if isinstance(out, (tuple, list)):
            out = out[0]
        reused = {n: c for n, c in calls.items() if c > 1}
        if reused:
            raise ValueError(
                "expected every tapped activation module to run once per forward pass, but "
                + ", ".join(f"{n!r} runs {c} times" for n, c in reused.items())
                + " (one module object reused); give each use its own module, or pass layers= "
                "naming modules that run once"
            )
        if self.layers is None:
            output_names = {
                n
                for n, o in last_out
                if isinstance(o, Tensor)
                and o.data_ptr() == out.data_ptr()
                and o.numel() == out.numel()
            }
            layer_names = [n for n in order if n not in output_names]
            if not layer_names:
                types = ", ".join(sorted({t.__name__ for t in ACTIVATION_TYPES[:6]}))
                raise ValueError(
                    "expected the model to contain hidden activation modules (e.g. "
                    f"{types}, ...) that run in forward, found none; activations applied "
                    "functionally cannot be hooked, pass layers= with module names instead"
                )
        else:
            specs = resolve_layers(model, self.layers)
            missing = [s.name for s in specs if s.module_name and s.module_name not in calls]
            if missing:
                raise ValueError(
                    f"expected every layer in layers= to run in the forward pass, {missing} did not"
                )
            layer_names = [s.name for s in specs]
        taps = LayerTaps(model, layer_names, reduce=lambda t: t.flatten(1))
        with torch.no_grad(), _eval_mode(model):
            _, feats = taps(example)
        n_out = int(out.shape[1]) if isinstance(out, Tensor) and out.dim() == 2 else None
        return layer_names, [int(f.shape[1]) for f in feats], n_out, taps

    def _activations(self, x: Tensor) -> Tensor:
        """Raw concatenated activations of a batch (one forward pass, model in eval mode)."""
        assert self._taps is not None
        with torch.no_grad(), _eval_mode(self.model):
            _, feats = self._taps(x)
        return torch.cat([f.float() for f in feats], dim=1)

    def _standardise(self, a: Tensor) -> Tensor:
        z = (a - self.mean) / self.scale
        z = torch.nan_to_num(
            z, nan=ACTIVATION_CLIP, posinf=ACTIVATION_CLIP, neginf=-ACTIVATION_CLIP
        )
        return z.clamp(-ACTIVATION_CLIP, ACTIVATION_CLIP)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a torch.Tensor of inputs, got {type(x).__name__}")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected inputs of shape (B, {', '.join(map(str, self.input_shape))}) as in "
                f"fit, got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"expected floating-point inputs, got dtype {x.dtype}")
        _check_finite(x, "the inputs")

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

    @staticmethod
    def _check_labels(y: Tensor, n: int) -> Tensor:
        if not isinstance(y, Tensor):
            raise TypeError(f"expected labels as a torch.Tensor, got {type(y).__name__}")
        if y.dim() != 1 or y.shape[0] != n:
            raise ValueError(f"expected labels of shape ({n},), got {tuple(y.shape)}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"expected integer class labels, got dtype {y.dtype}")
        if not (y >= 0).any():
            raise ValueError(
                "expected normal samples (targets >= 0) to fit on, got only known anomalies"
            )
        return y.long()

    def _set_stats(self, mean: Tensor, var: Tensor) -> None:
        std = var.clamp_min(0).sqrt()
        floors = []
        start = 0
        for d in self.layer_dims:
            layer_std = std[start : start + d]
            floors.append(
                torch.full_like(layer_std, MIN_SCALE_FRACTION * float(layer_std.mean()) or 1.0)
            )
            start += d
        floor = torch.cat(floors)
        self.mean = mean.float()
        self.scale = torch.maximum(std, floor).float()

    def _build_alarm(self) -> AlarmNet:
        d = sum(self.layer_dims)
        hidden = self.hidden if self.hidden is not None else default_hidden(d)
        return AlarmNet(d, hidden, self.dropout)

    # -- fitting ---------------------------------------------------------------------------------

    def fit(self, data_loader: DataLoader | Iterable) -> Self:
        """Fit the alarm network on a loader of ``(x, y)`` batches.

        Targets ``y >= 0`` are normal data (the class label itself is not used), targets
        ``y < 0`` are known anomalies and enter the alarm's loss with label 1. The model is only
        run forward, in eval mode, without gradients.

        :param data_loader: yields ``(x, y)`` with ``x`` of shape :math:`B \\times \\ldots`
        :return: self
        :raises ValueError: for an empty loader, non-finite inputs, inconsistent shapes, or no
            normal samples
        """
        with torch.random.fork_rng(devices=[]):
            # a shuffling loader without its own generator draws from the global RNG
            torch.manual_seed(self.seed)
            x, y = self._collect(data_loader)
        y = self._check_labels(y, len(x))
        return self._fit(x=x, y=y, acts=None)

    @staticmethod
    def _collect(data_loader: DataLoader | Iterable) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        shape = None
        for i, batch in enumerate(data_loader):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError(
                    f"expected the loader to yield (x, y) pairs, got {type(batch).__name__} "
                    f"in batch {i}"
                )
            x, y = batch[0], batch[1]
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise TypeError(
                    f"expected tensors x and y, got {type(x).__name__} and "
                    f"{type(y).__name__} in batch {i}"
                )
            if shape is None:
                shape = tuple(x.shape[1:])
            elif tuple(x.shape[1:]) != shape:
                raise ValueError(
                    f"expected every batch to have inputs of shape (B, *{shape}), got "
                    f"{tuple(x.shape)} in batch {i}"
                )
            if not x.is_floating_point():
                raise TypeError(f"expected floating-point inputs, got dtype {x.dtype}")
            _check_finite(x, f"the inputs of batch {i}")
            xs.append(x.detach().cpu())
            ys.append(y.detach().cpu().reshape(-1))
        if not xs or sum(len(x) for x in xs) == 0:
            raise ValueError("expected a non-empty data loader, got no samples")
        return torch.cat(xs), torch.cat(ys)

    def fit_structured(
        self,
        acts: Sequence[Tensor],
        y: Tensor,
        *,
        inputs: Tensor | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> Self:
        """Fit on pre-extracted activations.

        Counter-examples still live in the input space and are passed through the model, so
        the detector needs the input shape (``inputs.shape[1:]``, ``input_shape``, or that of a
        previous fit) and, for ``anomaly="vae"``, the ``inputs`` themselves.

        :param acts: one tensor per tapped layer (in the order of :attr:`layer_names`, as
            produced by ``LayerTaps(model, names, reduce=lambda t: t.flatten(1))``), each of
            shape :math:`N \\times D_l`
        :param y: targets of shape :math:`N`; ``>= 0`` normal, ``< 0`` known anomalies
        :param inputs: the model inputs the activations came from, shape :math:`N \\times \\ldots`
        :param input_shape: shape of one model input, if ``inputs`` is not given
        :return: self
        """
        a = self._check_acts(acts, fitted=False)
        y = self._check_labels(y, a.shape[0])
        if inputs is not None:
            if not isinstance(inputs, Tensor) or inputs.shape[0] != a.shape[0]:
                raise ValueError(
                    f"expected inputs as a tensor with {a.shape[0]} rows, got "
                    f"{getattr(inputs, 'shape', type(inputs).__name__)}"
                )
            _check_finite(inputs, "the inputs")
            input_shape = tuple(inputs.shape[1:])
        elif input_shape is None:
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
        device = self._model_device()
        dtype = self._model_dtype()
        if x is not None:
            x = x.to(dtype)
        input_shape = tuple(x.shape[1:]) if x is not None else input_shape
        gen = torch.Generator(device=device).manual_seed(self.seed)
        cpu_gen = torch.Generator().manual_seed(self.seed + 1)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            example = (
                x[:2].to(device)
                if x is not None
                else torch.full((2, *input_shape), self.noise_mean, device=device, dtype=dtype)
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
            self.num_outputs = n_out

            normal = y >= 0
            n = len(y)
            chunk = 1024

            def raw_acts(idx: Tensor) -> Tensor:
                if acts is not None:
                    return acts[idx].to(device)
                return self._activations(x[idx].to(device))

            # ID statistics (float64 sums over normal samples, streamed in chunks)
            normal_idx = torch.nonzero(normal).flatten()
            s1 = torch.zeros(sum(dims), dtype=torch.float64, device=device)
            s2 = torch.zeros_like(s1)
            for idx in torch.split(normal_idx, chunk):
                a = raw_acts(idx).double()
                s1 += a.sum(0)
                s2 += a.pow(2).sum(0)
            m = len(normal_idx)
            mean = s1 / m
            var = (s2 / m - mean.pow(2)) * (m / max(m - 1, 1))
            self._set_stats(mean, var)

            # anomaly network
            self.vae = None
            if self.anomaly == "vae":
                self.vae = self._fit_vae(x[normal_idx], device, gen)

            # alarm network
            alarm = self._build_alarm().to(device)
            alarm.reset_parameters(gen)
            opt = torch.optim.Adam(alarm.parameters(), lr=self.lr)
            target = (~normal).float().to(device)
            weight = torch.where(normal, 1.0, self.known_anomaly_weight).to(device)
            alarm.train()
            bs = self.batch_size
            for _epoch in range(self.epochs):
                perm = torch.randperm(n, generator=cpu_gen)
                for idx in torch.split(perm, bs):
                    b = len(idx)
                    if self.vae is not None:
                        x_tilde = self.vae.counter_examples(x[idx].to(device), gen)
                    else:
                        x_tilde = torch.randn(
                            (b, *input_shape), generator=gen, device=device, dtype=dtype
                        )
                        x_tilde = x_tilde * self.noise_std + self.noise_mean
                    if acts is None:
                        both = self._activations(torch.cat([x[idx].to(device), x_tilde]))
                        a_pos, a_neg = both[:b], both[b:]
                    else:
                        a_pos, a_neg = acts[idx].to(device), self._activations(x_tilde)
                    logits = alarm(self._standardise(torch.cat([a_pos, a_neg])), gen)
                    loss_lab = F.binary_cross_entropy_with_logits(
                        logits[:b], target[idx], weight=weight[idx]
                    )
                    loss_anom = F.binary_cross_entropy_with_logits(
                        logits[b:], torch.ones_like(logits[b:])
                    )
                    loss = loss_lab + self.anomaly_weight * loss_anom
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            alarm.eval()
            for p in alarm.parameters():
                p.requires_grad_(False)
            self.alarm = alarm
        return self

    def _fit_vae(self, x: Tensor, device: torch.device, gen: torch.Generator) -> AnomalyVAE:
        bounded = bool(x.min() >= 0 and x.max() <= 1)
        hidden, latent = _scaled_vae_dims(math.prod(x.shape[1:]))
        vae = AnomalyVAE(x.shape[1:], hidden, latent, bounded).to(device=device, dtype=x.dtype)
        vae.reset_parameters(gen)
        opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
        vae.train()
        cpu_gen = torch.Generator().manual_seed(self.seed + 2)
        for _ in range(self.vae_epochs):
            for idx in torch.split(torch.randperm(len(x), generator=cpu_gen), self.batch_size):
                loss = vae.loss(x[idx].to(device), gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        vae.eval()
        for p in vae.parameters():
            p.requires_grad_(False)
        return vae

    # -- scoring -----------------------------------------------------------------------------

    @torch.no_grad()
    def predict_structured(self, acts: Sequence[Tensor]) -> Tensor:
        """Alarm logits for pre-extracted activations.

        :param acts: one tensor per tapped layer (see :meth:`fit_structured`), each
            :math:`B \\times D_l`
        :return: outlier scores of shape :math:`B`, larger = more anomalous
        :raises RequiresFittingException: before fitting
        """
        if self.alarm is None:
            raise RequiresFittingException("A3 has to be fitted before predict_structured()")
        a = self._check_acts(acts, fitted=True)
        device = self.mean.device
        return self.alarm(self._standardise(a.to(device)))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Alarm logits for raw inputs (one forward pass through the model with hooks).

        :param x: inputs of the shape seen in :meth:`fit`, :math:`B \\times \\ldots`
        :return: outlier scores of shape :math:`B`, larger = more anomalous
        :raises RequiresFittingException: before fitting
        :raises ValueError: for inputs of another shape or with NaN/inf
        """
        if self.alarm is None:
            raise RequiresFittingException("A3 has to be fitted before predict()")
        self._check_input(x)
        device = self.mean.device
        if x.shape[0] == 0:
            return torch.empty(0, device=device)
        a = self._activations(x.to(device=device, dtype=self._model_dtype()))
        return self.alarm(self._standardise(a))

    # -- persistence -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything scoring needs, as tensors and primitives (``torch.load(weights_only=True)``
        compatible). The model itself is not included; the VAE is not needed for scoring and is
        not saved.

        :raises RequiresFittingException: before fitting
        """
        if self.alarm is None:
            raise RequiresFittingException("A3 has to be fitted before state_dict()")
        return {
            "format": "uniad_plugin.A3/1",
            "layer_names": list(self.layer_names),
            "layer_dims": list(self.layer_dims),
            "input_shape": list(self.input_shape),
            "num_outputs": self.num_outputs,
            "hidden": [lin.out_features for lin in self.alarm.hidden],
            "dropout": self.alarm.p,
            "mean": self.mean.detach().cpu().clone(),
            "scale": self.scale.detach().cpu().clone(),
            "alarm": {k: v.detach().cpu().clone() for k, v in self.alarm.state_dict().items()},
            "hyperparameters": {
                "epochs": self.epochs,
                "lr": self.lr,
                "batch_size": self.batch_size,
                "anomaly": self.anomaly,
                "noise_mean": self.noise_mean,
                "noise_std": self.noise_std,
                "anomaly_weight": self.anomaly_weight,
                "known_anomaly_weight": self.known_anomaly_weight,
                "vae_epochs": self.vae_epochs,
                "seed": self.seed,
            },
        }

    def load_state_dict(self, state: dict) -> Self:
        """Restore a fitted detector from :meth:`state_dict` (for the same model architecture).

        :raises ValueError: if the state is not an A3 state or belongs to a model whose tapped
            activations differ (names or sizes)
        """
        if not isinstance(state, dict) or state.get("format") != "uniad_plugin.A3/1":
            raise ValueError(
                "expected a state dict produced by A3.state_dict() (format 'uniad_plugin.A3/1'), "
                f"got {type(state).__name__} with format "
                f"{state.get('format') if isinstance(state, dict) else None!r}"
            )
        required = (
            "layer_names layer_dims input_shape num_outputs hidden dropout mean scale alarm".split()
        )
        missing = [k for k in required if k not in state]
        if missing:
            raise ValueError(f"expected a complete A3 state, keys {missing} are missing")
        input_shape = tuple(int(s) for s in state["input_shape"])
        device = self._model_device()
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
            or n_out != state["num_outputs"]
        ):
            self.layers = saved_layers
            raise ValueError(
                f"expected a state for this model (activations {names} with sizes {dims}, "
                f"{n_out} outputs), got one fitted on a model with layers "
                f"{state['layer_names']} of sizes {state['layer_dims']} and "
                f"{state['num_outputs']} outputs"
            )
        alarm = AlarmNet(sum(dims), state["hidden"], state["dropout"])
        alarm.load_state_dict(state["alarm"])
        alarm.to(device).eval()
        for p in alarm.parameters():
            p.requires_grad_(False)
        self.layer_names, self.layer_dims, self.input_shape = names, dims, input_shape
        self.num_outputs, self._taps = n_out, taps
        self.mean = state["mean"].to(device)
        self.scale = state["scale"].to(device)
        self.alarm = alarm
        hp = state.get("hyperparameters", {})
        for k, v in hp.items():
            if hasattr(self, k):
                setattr(self, k, v)
        return self
