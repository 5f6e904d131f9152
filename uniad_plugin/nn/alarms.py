"""The alarm networks of A3 (an MLP on activations) and R2-AD2 (LSTMs on gradient sequences).

Both follow the authors' Keras code; their size tables are defined here once:
:data:`ALARM_BIG` is A3's MLP alarm for MNIST-sized targets and R2-AD2's big alarm,
:data:`ALARM_SMALL` R2-AD2's alarm for small data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uniad_plugin._utils import minibatches, seeded_generator

__all__ = [
    "ALARMS",
    "ALARM_BIG",
    "ALARM_SMALL",
    "FULL_SIZE_ACTIVATIONS",
    "AlarmNet",
    "GradientAlarm",
    "binary_mlp",
    "default_hidden",
    "dropout",
    "glorot_",
    "lstm_sequence",
    "train_binary_mlp",
]

#: the authors' alarm sizes (A3's MLP widths; R2-AD2's big LSTM, LSTM, Dense, Dense sizes)
ALARM_BIG: tuple[int, ...] = (1000, 500, 200, 75)
#: R2-AD2's alarm sizes for small data
ALARM_SMALL: tuple[int, ...] = (100, 50, 25, 10)
#: names accepted for R2-AD2's ``alarm_dims``
ALARMS = {"small": ALARM_SMALL, "big": ALARM_BIG}
#: activation size at and above which A3's alarm network gets the authors' full widths
FULL_SIZE_ACTIVATIONS = 2000
#: standardised gradients are clipped to this magnitude (numerical safety for extreme inputs)
GRADIENT_CLIP = 1e4


def default_hidden(activation_size: int) -> list[int]:
    """A3's alarm-network widths scaled to the size of the concatenated activations.

    The authors' widths ``[1000, 500, 200, 75]`` are used when there are at least
    ``2000`` activations; below that every width is multiplied by ``activation_size / 2000``
    (so the first layer is never wider than half the input) and floored at 8.

    :param activation_size: total number of activations :math:`D = \\sum_l D_l`
    :return: list of hidden widths
    """
    if activation_size < 1:
        raise ValueError(f"expected a positive activation size, got {activation_size}")
    s = min(1.0, activation_size / FULL_SIZE_ACTIVATIONS)
    return [max(8, round(w * s)) for w in ALARM_BIG]


def dropout(h: Tensor, p: float, generator: torch.Generator | None) -> Tensor:
    """Inverted dropout with masks drawn from ``generator``."""
    keep = torch.rand(h.shape, generator=generator, device=h.device) >= p
    return h * keep / (1.0 - p)


def glorot_(linear: nn.Linear, generator: torch.Generator | None) -> None:
    """Keras defaults, as in the authors' code: Glorot-uniform kernel, zero bias."""
    nn.init.xavier_uniform_(linear.weight, generator=generator)
    nn.init.zeros_(linear.bias)


class AlarmNet(nn.Module):
    """A3's alarm network: ``Linear -> ReLU`` per hidden width, dropout, ``Linear -> 1``.

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
                glorot_(lin, generator)

    def forward(self, h: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for lin in self.hidden:
            h = F.relu(lin(h))
        if self.training and self.p > 0:
            h = dropout(h, self.p, generator)
        return self.out(h).squeeze(1)


def lstm_sequence(lstm: nn.LSTM, x: Tensor) -> Tensor:
    """Run a one-layer, unidirectional, ``batch_first`` ``nn.LSTM`` on ``(B, T, D)`` -> ``(B, T, H)``.

    Same result as ``lstm(x)[0]``, written out with the module's own weights: the input
    projection of all time steps is one matrix product, then a loop over the (few) time steps.
    Kept because the committed R2-AD2 results were produced with it; ``lstm(x)[0]`` computes
    the same up to float rounding.
    """
    # layer 0's weight_ih, weight_hh, bias_ih, bias_hh (typed, unlike ``lstm.weight_ih_l0``)
    weight_ih, weight_hh, bias_ih, bias_hh = lstm.all_weights[0]
    xi = nn.functional.linear(x, weight_ih, bias_ih + bias_hh)
    h = x.new_zeros(x.shape[0], lstm.hidden_size)
    c = torch.zeros_like(h)
    outs = []
    for t in range(x.shape[1]):
        gates = xi[:, t] + h @ weight_hh.T
        i, f, g, o = gates.chunk(4, dim=1)  # PyTorch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, dim=1)


class GradientAlarm(nn.Module):
    """R2-AD2's alarm network on gradient sequences ``(B, T, D)``.

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

    @property
    def dims(self) -> list[int]:
        """The sizes ``(lstm1, lstm2, dense1, ...)`` this alarm was built with."""
        dense = [m.out_features for m in self.head if isinstance(m, nn.Linear)][:-1]
        return [self.lstm1.hidden_size, self.lstm2.hidden_size, *dense]

    def normalise(self, g: Tensor) -> Tensor:
        """Shared batch normalisation over ``(B, T, D)``, clipped to ``±1e4``."""
        B, T, D = g.shape
        return self.norm(g.reshape(B * T, D)).reshape(B, T, D).clamp(-GRADIENT_CLIP, GRADIENT_CLIP)

    def forward(self, g: Tensor) -> Tensor:
        """Alarm logits ``(B,)`` for gradient sequences ``(B, T, D)``."""
        h = lstm_sequence(self.lstm1, self.drop(self.normalise(g)))
        h = lstm_sequence(self.lstm2, self.drop(h))
        return self.head(h[:, -1]).squeeze(1)


def binary_mlp(in_dim: int, hidden: int) -> nn.Sequential:
    """The 2-layer fully connected binary classifier ``Linear -> ReLU -> Linear -> 1``."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def train_binary_mlp(
    z: Tensor,
    target: Tensor,
    hidden: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> nn.Sequential:
    """Train :func:`binary_mlp` with class-balanced BCE (Adam) to tell ``target`` 0 from 1.

    Initialisation and minibatch order are seeded with ``seed``; the result is in eval mode,
    without gradients.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = binary_mlp(z.shape[1], hidden)
    clf = clf.to(device)
    z, target = z.float().to(device), target.to(device)
    n_pos = float(target.sum())
    pos_weight = torch.tensor((len(target) - n_pos) / max(n_pos, 1.0), device=device)
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for idx in minibatches(len(z), batch_size, epochs, seeded_generator(seed), device):
            loss = F.binary_cross_entropy_with_logits(
                clf(z[idx]).squeeze(1), target[idx], pos_weight=pos_weight
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return clf.eval().requires_grad_(False)
