"""Your own network: `model.name: "package.module:ClassName"` trains a user's `nn.Module`.

The class is imported by its path and wrapped in an adapter family of the kind it implements,
so the built-in VAE or GAN training steps, scorecard, sampling, compression, checkpoints and
registry serve it unchanged. The class is constructed as

    ClassName(image_shape=(C, H, W), latent_dim=model.latent_dim, **model.options)

and validates its own options (raise TypeError or ValueError with a message; genpar shows it
beside `model.options`). It implements one of two interfaces (`genpar_family = "vae"` or
`"gan"` on the class says which; without it, a class with an `encode` method is VAE-like and
any other GAN-like):

VAE-like (`genpar_family = "vae"`), images x (N, C, H, W) in [0, 1]:
    encode(x) -> (mu, logvar)   the diagonal Gaussian posterior q(z|x), each (N, latent_dim)
    decode(z) -> out            anything `loss` and `mean` read, for z (N, latent_dim)
    loss(x, out) -> (N,)        the reconstruction term -log p(x|z) per sample, in nats
    mean(out) -> (N, C, H, W)   the image `out` stands for, in [0, 1] (samples, reconstructions)
  genpar adds the prior N(0, I), the closed-form KL, the ELBO (training minimises recon +
  train.kl_weight * kl), the importance-weighted bound, sampling and reconstruction. Optional
  class attribute `code_length = True`: `loss` is -log of a normalised distribution over the
  256 pixel levels (or binary pixels under data.binarize), so bits/dim is reported.

GAN-like (`genpar_family = "gan"`), images in [-1, 1]:
    self.generator              an nn.Module: z (N, latent_dim) -> images (N, C, H, W)
    self.discriminator          an nn.Module: images (N, C, H, W) -> logits (N,)
  trained by the dcgan family's steps with model.gan_loss, train.n_critic, train.r1_gamma,
  train.gp_weight and model.ema_decay; only these two submodules are kept (their state_dict
  keys are generator.* and discriminator.*). A discriminator with BatchNorm is scored on mixed
  real and fake batches, as the dcgan family's is.

Optional for both: `model_spec()` on the class returning its options as a JSON dict (defaults
filled in, say); what it returns is stored, so a stored model does not change when a default
does. The stored spec is {"name": path, "image_shape", "latent_dim", "options"}; loading it
re-imports the class: the module must be importable wherever the model is trained, evaluated,
generated from or served (an installed package, or a module under the working directory: the
working directory is searched after sys.path, like `python -m` does, and torchrun ranks get
the directory a module was found in on their PYTHONPATH; Dask workers of a LocalCluster inherit
sys.path).

Everything that can go wrong with the class is checked by `check_custom` at config-check and
preflight time, before any training: the module imports, the name is an nn.Module class with
the interface's methods, the options are JSON and accepted, one forward pass has the documented
shapes, and build -> model_spec() -> rebuild gives the same parameter shapes.

    loader.py    import the class by its path, tell its kind, construct it with its options
    network.py   the adapters (CustomVAE, CustomGAN) the built-in steps and scorecard ask
    check.py     the checks before any training (one forward pass, the spec's round trip)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from genpar_models.models.custom.loader import SPEC_KEYS, import_class, kind_of
from genpar_models.models.family import Family

if TYPE_CHECKING:
    from torch import nn

    from genpar_models.config import ModelConfig


def custom_family(path: str) -> Family:
    """The adapter family of the class `path` names (not registered: the registry does).

    Raises:
        ConfigError: the path does not import, is no nn.Module class, or misses a method.
    """
    from genpar_models.models.custom.network import ADAPTERS, half_vae

    cls = import_class(path)
    kind = kind_of(path, cls)
    adapter = ADAPTERS[kind]

    def build(cfg: ModelConfig, image_shape: Sequence[int]) -> nn.Module:
        model = adapter(
            name=path, image_shape=image_shape, latent_dim=cfg.latent_dim, options=cfg.options
        )
        if kind == "gan":
            model.gan_loss = cfg.gan_loss  # how it is trained: not part of the spec
        return model

    def rebuild(spec: Mapping[str, Any]) -> nn.Module:
        extra = sorted(set(spec) - set(SPEC_KEYS))
        missing = sorted({"image_shape", "latent_dim"} - set(spec))
        if extra or missing:
            raise ValueError(
                f"{'unexpected keys ' + str(extra) if extra else 'missing ' + str(missing)} "
                f"(a custom network's spec has {', '.join(SPEC_KEYS)})"
            )
        return adapter(
            name=path,
            image_shape=spec["image_shape"],
            latent_dim=spec["latent_dim"],
            options=spec.get("options") or {},
        )

    summary = f"your own {'VAE' if kind == 'vae' else 'GAN'}-like network {cls.__qualname__}"
    if kind == "vae":
        from genpar_models.models.vae import FAMILY as VAE_FAMILY

        def code_length(spec: Mapping[str, Any], binarize: str) -> bool:
            return bool(getattr(cls, "code_length", False))

        return Family(
            name=path,
            summary=summary,
            build=build,
            rebuild=rebuild,
            make_steps=VAE_FAMILY.make_steps,
            input_range=(0.0, 1.0),
            sampling_net="net",
            options=("options",),
            likelihood=VAE_FAMILY.likelihood,
            reconstruct=VAE_FAMILY.reconstruct,
            half=half_vae,
            code_length=code_length,
        )
    from genpar_models.models.gan import FAMILY as GAN_FAMILY

    return Family(
        name=path,
        summary=summary,
        build=build,
        rebuild=rebuild,
        make_steps=GAN_FAMILY.make_steps,
        input_range=(-1.0, 1.0),
        sampling_net="generator",
        options=("options", "gan_loss", "ema_decay"),
        train_settings=GAN_FAMILY.train_settings,
    )


__all__ = ["custom_family"]
