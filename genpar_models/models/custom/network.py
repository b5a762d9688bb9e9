"""The adapters that make your own network a family's network: `CustomVAE` around a
VAE-like class, `CustomGAN` holding a GAN-like class's generator and discriminator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from genpar_models.errors import ConfigError
from genpar_models.models.custom.loader import GAN_MODULES, VAE_METHODS, construct
from genpar_models.models.layers import draw_normal, to_range
from genpar_models.models.likelihoods import gaussian_kl, importance_weighted_bound


class CustomVAE(nn.Module):
    """A user's VAE-like network (`net`) with what genpar's VAE steps and scorecard ask:
    the ELBO terms, the loss, samples, reconstructions and the importance-weighted bound."""

    input_range = (0.0, 1.0)

    def __init__(
        self, *, name: str, image_shape: Sequence[int], latent_dim: int, options: Mapping
    ) -> None:
        super().__init__()
        self.name, self.image_shape = name, tuple(int(d) for d in image_shape)
        self.latent_dim = int(latent_dim)
        self.net, self.options = construct(name, self.image_shape, self.latent_dim, options)
        self.compute_dtype = torch.float32  # compression's bf16/fp16 variants cast `net`

    def model_spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "options": dict(self.options),
        }

    def to_model_range(self, x01: Tensor) -> Tensor:
        return to_range(x01, self.input_range)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net.encode(x.to(self.compute_dtype))
        return mu.float(), logvar.float()

    def _decode(self, z: Tensor) -> Any:
        return self.net.decode(z.to(self.compute_dtype))

    def _nll(self, x: Tensor, out: Any) -> Tensor:
        return self.net.loss(x.to(self.compute_dtype), out).float()

    def _image(self, out: Any) -> Tensor:
        return self.net.mean(out).float().clamp(0.0, 1.0)

    def forward(
        self, x: Tensor, *, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        """One-sample ELBO terms of x in [0, 1]: {"recon", "kl", "elbo"}, (N,) nats each."""
        _unconditional(labels)
        mu, logvar = self.encode(x)
        eps = draw_normal(
            mu.shape,
            generator=generator,
            device=mu.device,
            dtype=mu.dtype,
            default_device=mu.device,
        )
        z = mu + torch.exp(0.5 * logvar) * eps  # the reparameterisation trick
        recon = self._nll(x, self._decode(z))
        kl = gaussian_kl(mu, logvar)
        return {"recon": recon, "kl": kl, "elbo": -(recon + kl)}

    def loss(self, out: dict[str, Tensor], kl_weight: float) -> Tensor:
        return (out["recon"] + kl_weight * out["kl"]).mean()

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> Tensor:
        _unconditional(labels)
        device = _device(self)
        z = draw_normal(
            (n, self.latent_dim), generator=generator, device=device, dtype=torch.float32
        )
        return self._image(self._decode(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        _unconditional(labels)
        mu, _ = self.encode(x)
        return self._image(self._decode(mu))

    @torch.no_grad()
    def importance_weighted_bound(
        self,
        x: Tensor,
        k: int,
        *,
        generator: torch.Generator | None = None,
        chunk: int = 16,
        labels: Tensor | None = None,
    ) -> Tensor:
        """The k-sample IWAE bound on log p(x), (N,) nats, as the vae family computes it
        (likelihoods.importance_weighted_bound)."""
        _unconditional(labels)
        return importance_weighted_bound(
            x,
            k,
            encode=self.encode,
            log_likelihood=lambda x_rep, z, c: -self._nll(x_rep, self._decode(z)),
            latent_dim=self.latent_dim,
            generator=generator,
            chunk=chunk,
        )


class CustomGAN(nn.Module):
    """A user's GAN-like network's `generator` and `discriminator`, as the dcgan family's
    steps train them (images in [-1, 1] inside; `sample` returns [0, 1])."""

    input_range = (-1.0, 1.0)
    gan_loss = "hinge"  # how it is trained (the family's build sets model.gan_loss)

    def __init__(
        self, *, name: str, image_shape: Sequence[int], latent_dim: int, options: Mapping
    ) -> None:
        super().__init__()
        self.name, self.image_shape = name, tuple(int(d) for d in image_shape)
        self.latent_dim = int(latent_dim)
        net, self.options = construct(name, self.image_shape, self.latent_dim, options)
        missing = [m for m in GAN_MODULES if not isinstance(getattr(net, m, None), nn.Module)]
        if missing:
            raise ConfigError(
                f"model.name={name!r}: {type(net).__name__} is GAN-like but its instances have "
                f"no {' or '.join(missing)} submodule (a GAN-like network sets "
                f"self.generator and self.discriminator, nn.Modules; a VAE-like one defines "
                f"{', '.join(VAE_METHODS)}; see genpar_models/models/custom/)"
            )
        self.generator, self.discriminator = net.generator, net.discriminator
        if getattr(self.discriminator, "uses_batch_statistics", None) is None:
            self.discriminator.uses_batch_statistics = any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.discriminator.modules()
            )

    def model_spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image_shape": list(self.image_shape),
            "latent_dim": self.latent_dim,
            "options": dict(self.options),
        }

    def to_model_range(self, x01: Tensor) -> Tensor:
        return to_range(x01, self.input_range)

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """n images in [0, 1], the generator in eval mode (restored afterwards)."""
        _unconditional(labels)
        device = _device(self.generator)
        z = draw_normal(
            (n, self.latent_dim), generator=generator, device=device, dtype=torch.float32
        )
        was_training = self.generator.training
        self.generator.eval()
        try:
            images = self.generator(z)
        finally:
            self.generator.train(was_training)
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def _unconditional(labels: Tensor | None) -> None:
    """Your own networks are unconditional: callers pass labels=None (or nothing)."""
    if labels is not None:
        raise ValueError("your own network is unconditional: it takes no labels")


def _device(module: nn.Module) -> torch.device:
    """Where the module's tensors are (int8 variants hold packed weights, no parameters)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


ADAPTERS: dict[str, type[nn.Module]] = {"vae": CustomVAE, "gan": CustomGAN}


def half_vae(model: nn.Module, dtype: torch.dtype) -> None:
    """Compression's bf16/fp16 variants: the whole user network in `dtype`."""
    model.net.to(dtype)
    model.compute_dtype = dtype
