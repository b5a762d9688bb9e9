"""The recurrent VAE: a GRU/LSTM encoder to a Gaussian latent, a recurrent decoder fed z.

Fabius & van Amersfoort 2014 (arXiv 1412.6581), Bowman et al. 2016 (arXiv 1511.06349). Series
come in as float (N, T, C), standardised, NaN after each series' length: the mask is where the
first channel is not NaN. The encoder's state after each series' last step gives q(z|x). The
decoder starts from a state made from z and reads z at every step, plus, with decoder_input
latent_and_previous, the previous step (teacher forcing in training with word dropout; its
own mean output when sampling). With decoder_input latent it never reads its own output, so
running free it cannot drift (the fix TimeVAE, arXiv 2111.08095, makes by decoding
non-autoregressively). The likelihood per step is a Gaussian with
a learned per-channel scale, summed over the steps inside each series and the channels.
Sampling draws lengths from the training split's length histogram (a buffer, fitted once).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from genpar_models.models.likelihoods import gaussian_kl

NAME = "rvae"
LOG_2PI = math.log(2 * math.pi)


def split_padding(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(values with NaN padding set to 0, mask (N, T) bool, lengths (N,) int64) of x (N, T, C)."""
    mask = ~torch.isnan(x[..., 0])
    return torch.nan_to_num(x, nan=0.0), mask, mask.sum(dim=1)


def _rnn(kind: str) -> type[nn.Module]:
    return nn.GRU if kind == "gru" else nn.LSTM


class Decoder(nn.Module):
    """z (N, D) -> per-step means (N, T, C); `prev` (N, T, C) only for latent_and_previous."""

    def __init__(
        self,
        *,
        steps: int,
        channels: int,
        latent_dim: int,
        hidden_dim: int,
        rnn: str,
        layers: int,
        autoregressive: bool,
    ) -> None:
        super().__init__()
        self.steps, self.channels, self.layers = steps, channels, layers
        self.autoregressive, self.lstm = autoregressive, rnn == "lstm"
        self.init = nn.Linear(latent_dim, layers * hidden_dim)
        width = latent_dim + (channels if autoregressive else 0)
        self.rnn = _rnn(rnn)(width, hidden_dim, layers, batch_first=True)
        self.out = nn.Linear(hidden_dim, channels)
        self.compute_dtype = torch.float32  # bf16/fp16 compression variants cast it (family.half)

    def _state(self, z: Tensor) -> Any:
        h = torch.tanh(self.init(z)).view(z.shape[0], self.layers, -1).transpose(0, 1)
        h = h.contiguous()  # (layers, N, H)
        return (h, torch.zeros_like(h)) if self.lstm else h

    def forward(self, z: Tensor, prev: Tensor | None = None, steps: int | None = None) -> Tensor:
        """Means (N, T, C) in float32, whatever dtype the decoder computes in."""
        z = z.to(self.compute_dtype)
        prev = None if prev is None else prev.to(self.compute_dtype)
        return self._decode(z, prev, steps or self.steps).float()

    def _decode(self, z: Tensor, prev: Tensor | None, steps: int) -> Tensor:
        zs = z[:, None, :].expand(-1, steps, -1)  # (N, D) -> (N, T, D)
        if not self.autoregressive:
            return self.out(self.rnn(zs, self._state(z))[0])
        if prev is not None:  # teacher forcing: prev[t] is step t - 1 (zeros at t = 0)
            return self.out(self.rnn(torch.cat([zs, prev], dim=2), self._state(z))[0])
        state, step, outs = self._state(z), z.new_zeros(z.shape[0], 1, self.channels), []
        for t in range(steps):  # free running: each step reads the mean the last one gave
            h, state = self.rnn(torch.cat([zs[:, t : t + 1], step], dim=2), state)
            step = self.out(h)
            outs.append(step)
        return torch.cat(outs, dim=1)


class RVAE(nn.Module):
    """x (N, T, C), NaN-padded -> Gaussian q(z|x) -> recurrent Gaussian decoder."""

    def __init__(
        self,
        *,
        sequence_shape: Sequence[int],
        latent_dim: int,
        hidden_dim: int = 64,
        rnn: str = "gru",
        rnn_layers: int = 1,
        decoder_input: str = "latent",
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        steps, channels = (int(d) for d in sequence_shape)
        self.sequence_shape = [steps, channels]
        self.latent_dim, self.hidden_dim, self.rnn, self.rnn_layers = (
            latent_dim,
            hidden_dim,
            rnn,
            rnn_layers,
        )
        self.decoder_input, self.input_dropout = decoder_input, input_dropout
        self.encoder = _rnn(rnn)(channels, hidden_dim, rnn_layers, batch_first=True)
        self.to_latent = nn.Linear(hidden_dim, 2 * latent_dim)
        self.decoder = Decoder(
            steps=steps,
            channels=channels,
            latent_dim=latent_dim,
            hidden_dim=hidden_dim,
            rnn=rnn,
            layers=rnn_layers,
            autoregressive=decoder_input == "latent_and_previous",
        )
        self.log_scale = nn.Parameter(torch.zeros(channels))  # learned per-channel Gaussian scale
        # lengths seen in training (counts of 1..T steps); all full length until fitted
        self.register_buffer(
            "length_counts", torch.zeros(steps).index_fill_(0, torch.tensor([steps - 1]), 1.0)
        )
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long))  # for KL annealing
        # the shards' per-channel standardisation, so samples can be returned in source units
        self.register_buffer("data_mean", torch.zeros(channels))
        self.register_buffer("data_std", torch.ones(channels))

    def model_spec(self) -> dict[str, Any]:
        return {
            "name": NAME,
            "sequence_shape": self.sequence_shape,
            "latent_dim": self.latent_dim,
            "hidden_dim": self.hidden_dim,
            "rnn": self.rnn,
            "rnn_layers": self.rnn_layers,
            "decoder_input": self.decoder_input,
            "input_dropout": self.input_dropout,
        }

    def fit_lengths(self, lengths: Tensor) -> None:
        """Remember the training split's length histogram (what `sample` draws lengths from)."""
        counts = torch.bincount(lengths.long() - 1, minlength=self.sequence_shape[0]).float()
        self.length_counts.copy_(counts[: self.sequence_shape[0]])

    def fit_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Remember the shards' standardisation (the manifest's), inverted by `denormalise`."""
        self.data_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.data_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def denormalise(self, x: Tensor) -> Tensor:
        """Model units (standardised) -> the source's units; NaN padding stays NaN."""
        return x * self.data_std.to(x.device) + self.data_mean.to(x.device)

    def encode(self, x0: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        # The last layer's state after each series' own last step, read from the padded run's
        # outputs: the steps after a length never reach the earlier outputs, so this is what a
        # packed sequence gives. Not packed: on CPU the packed GRU/LSTM slices its input
        # projection per step, and each slice's backward zero-fills and adds a whole
        # (N x T, 3H) gradient (24 x 1.2 MiB per step at sines-rvae's batch of 64, a fifth of
        # the step's CPU time, and memory traffic two ranks share; issue 20).
        out, _ = self.encoder(x0)  # (N, T, H): the last layer's state after every step
        last = (lengths.clamp(min=1) - 1).to(out.device)
        h = out[torch.arange(out.shape[0], device=out.device), last]
        mu, logvar = self.to_latent(h).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def _previous(self, x0: Tensor, generator: torch.Generator | None) -> Tensor | None:
        if self.decoder_input != "latent_and_previous":
            return None
        prev = torch.cat([torch.zeros_like(x0[:, :1]), x0[:, :-1]], dim=1)  # shift right by one
        if self.training and self.input_dropout > 0:  # word dropout, drawn from the generator
            keep = (
                torch.rand(prev.shape[:2], generator=generator).to(x0.device) >= self.input_dropout
            )
            prev = prev * keep[..., None]
        return prev

    def nll(self, x0: Tensor, mask: Tensor, mean: Tensor) -> Tensor:
        """Gaussian negative log-likelihood per series (N,), nats, over the steps in `mask`."""
        log_s = self.log_scale.float()
        per = 0.5 * ((x0 - mean.float()) * torch.exp(-log_s)) ** 2 + log_s + 0.5 * LOG_2PI
        return (per.sum(dim=2) * mask).sum(dim=1)

    def forward(self, x: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One-sample ELBO terms per series, in nats: recon, kl (and kl per dimension), elbo."""
        x0, mask, lengths = split_padding(x)
        mu, logvar = self.encode(x0, lengths)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = self.nll(x0, mask, self.decoder(z, self._previous(x0, generator), x0.shape[1]))
        kl_dims = 0.5 * (mu.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float())
        kl = gaussian_kl(mu, logvar)
        return {
            "recon": recon,
            "kl": kl,
            "kl_dims": kl_dims,
            "elbo": -(recon + kl),
            "steps": lengths.to(recon.dtype),
        }

    @torch.no_grad()
    def importance_weighted_bound(
        self, x: Tensor, k: int, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """log p(x) >= log mean_k p(x, z_k) / q(z_k | x) per series (Burda et al. 2016), nats."""
        x0, mask, lengths = split_padding(x)
        mu, logvar = self.encode(x0, lengths)
        std = torch.exp(0.5 * logvar)
        weights = []
        for _ in range(k):
            eps = torch.randn(mu.shape, generator=generator).to(mu.device)
            z = mu + std * eps
            log_px = -self.nll(
                x0, mask, self.decoder(z, self._previous(x0, generator), x0.shape[1])
            )
            log_pz = -0.5 * (z**2 + LOG_2PI).sum(dim=1)
            log_qz = -0.5 * (eps**2 + LOG_2PI + logvar).sum(dim=1)
            weights.append(log_px + log_pz - log_qz)
        return torch.logsumexp(torch.stack(weights), dim=0) - math.log(k)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        x0, mask, lengths = split_padding(x)
        mu, _ = self.encode(x0, lengths)
        prev = self._previous(x0, None)
        out = self.decoder(mu, prev, x0.shape[1])
        return out.masked_fill(~mask[..., None], float("nan"))

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """n series (n, T, C) in model units (standardised), NaN after each drawn length."""
        device = self.log_scale.device
        z = torch.randn((n, self.latent_dim), generator=generator)
        lengths = (
            torch.multinomial(self.length_counts.cpu(), n, replacement=True, generator=generator)
            + 1
        )
        mean = self.decoder(z.to(device)).float()
        steps = torch.arange(mean.shape[1], device=device)[None, :]
        return mean.masked_fill((steps >= lengths.to(device)[:, None])[..., None], float("nan"))
