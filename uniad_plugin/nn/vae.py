"""A3's optional anomaly network: a small fully connected VAE whose samples lie far from the data.

As in the authors' code, counter-examples are :math:`\\tilde x = \\mathrm{dec}(\\mu(x) + 5\\epsilon)`,
:math:`\\epsilon \\sim N(0, I)`. The widths follow the authors' ``[800, 400, 100]`` with latent
size 25 for 784 input features, scaled down proportionally for smaller inputs
(:func:`scaled_vae_dims`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uniad_plugin._utils import minibatches, seeded_generator
from uniad_plugin.nn.alarms import dropout, glorot_

__all__ = ["PAPER_VAE_HIDDEN", "PAPER_VAE_LATENT", "VAE_SAMPLING_STD", "AnomalyVAE", "fit_vae"]

#: the authors' VAE (encoder widths, latent size) for 784-dimensional MNIST inputs
PAPER_VAE_HIDDEN: tuple[int, ...] = (800, 400, 100)
PAPER_VAE_LATENT = 25
#: the paper's counter-example spread in the VAE's latent space: z = mu(x) + 5 eps
VAE_SAMPLING_STD = 5.0


def scaled_vae_dims(input_dim: int) -> tuple[list[int], int]:
    """The authors' encoder widths and latent size, scaled by ``input_dim / 784`` (at most 1)."""
    s = min(1.0, input_dim / 784)
    return [max(16, round(w * s)) for w in PAPER_VAE_HIDDEN], max(2, round(PAPER_VAE_LATENT * s))


class AnomalyVAE(nn.Module):
    """Small fully connected VAE used as A3's "anomaly network" (``anomaly="vae"``).

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
                glorot_(lin, generator)

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
            h = dropout(h, 0.1, generator)
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


@torch.enable_grad()  # trains under an outer torch.no_grad() too
def fit_vae(
    x: Tensor,
    epochs: int,
    batch_size: int,
    device: torch.device,
    generator: torch.Generator,
    shuffle_seed: int,
) -> AnomalyVAE:
    """Train an :class:`AnomalyVAE` of :func:`scaled_vae_dims` on the inputs ``x`` (Adam 1e-3).

    Binary cross-entropy if ``x`` lies in [0, 1], otherwise squared error. Initialisation, noise
    and dropout draw from ``generator``; the minibatch order from a CPU generator seeded with
    ``shuffle_seed``. The returned VAE is in eval mode, without gradients.
    """
    bounded = bool(x.min() >= 0 and x.max() <= 1)
    hidden, latent = scaled_vae_dims(math.prod(x.shape[1:]))
    vae = AnomalyVAE(x.shape[1:], hidden, latent, bounded).to(device=device, dtype=x.dtype)
    vae.reset_parameters(generator)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    vae.train()
    cpu_gen = seeded_generator(shuffle_seed)
    for idx in minibatches(len(x), batch_size, epochs, cpu_gen):
        loss = vae.loss(x[idx].to(device), generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return vae.eval().requires_grad_(False)
