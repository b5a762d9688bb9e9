"""The `model` section: which model family to build (`model.name`), its size and its options.

`name` names a registered family (genpar_models/models/registry.py): the built-ins `vae` and
`dcgan`, one a plugin registers, or your own network's class as "package.module:ClassName"
(genpar_models/models/custom/), built with `options`. Whether the name is known is checked
against the registry before any work (`check_model_config`), not here, so that reading a
config never imports torch. Fields that only one family reads say so; setting one for another
family is refused there too.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from genpar_models.config.base import Section

# What every family reads; the other fields belong to the families that list them.
SHARED_FIELDS = ("name", "latent_dim", "base_channels")


class ModelConfig(Section):
    """Which generative model to build, by family name, and its size."""

    name: str = Field(
        "vae",
        pattern=r"^[A-Za-z_][\w.-]*(:[A-Za-z_]\w*)?$",
        description="Model family: vae (convolutional VAE), dcgan (DCGAN-style GAN), rvae "
        "(recurrent VAE for data.modality sequences), a family a plugin registers, or your own "
        'network as "package.module:ClassName": an nn.Module class implementing the VAE-like '
        'or GAN-like interface (README, "Your own network"), built with model.options.',
        json_schema_extra={"examples": ["vae", "dcgan", "rvae", "examples.custom_vae:TinyVAE"]},
    )
    latent_dim: int = Field(16, ge=1, le=1024, description="Size of the latent vector z.")
    base_channels: int = Field(
        32, ge=4, le=512, description="Channels of the first conv layer; doubled per level."
    )
    arch: Literal["dcgan", "resnet"] = Field(
        "dcgan",
        description="vae and dcgan: the network inside the family. dcgan: a stride-2 4x4 "
        "conv per level (transposed in the decoder/generator), as genpar always built; "
        "resnet: a pre-activation residual block per level (two 3x3 convs, a 1x1 skip where "
        "the channels change; nearest up-sampling in the decoder/generator, average-pool "
        "down-sampling in the encoder/discriminator, which sum-pools into its logit), with "
        "model.norm in the generator and model.spectral_norm on the discriminator. Both take "
        "their depth from data.image_size (one level per halving, at most 5) and their width "
        "from model.base_channels; resnet steps take about 3x as long (64x64 RGB on a CPU).",
    )
    likelihood: Literal["bernoulli", "gaussian", "logistic_mixture"] = Field(
        "logistic_mixture",
        description="vae: the decoder's likelihood. gaussian: discretised over the 256 pixel "
        "levels with a learned per-channel scale; logistic_mixture: a discretised mixture of "
        "model.mixture_components logistics per pixel (PixelCNN++); both are distributions "
        "over 8-bit pixels, so bits/dim is a code length. bernoulli: pixel intensities as "
        "probabilities, a distribution over binary pixels: bits/dim is reported only with "
        "data.binarize static or dynamic.",
    )
    mixture_components: int = Field(
        5, ge=1, le=32, description="vae with logistic_mixture: logistics per pixel."
    )
    norm: Literal["group", "pixel", "batch", "none"] = Field(
        "group",
        description="dcgan: the generator's normalisation (and the discriminator's without "
        "spectral norm). group and pixel use no batch statistics, so a batch gives the same "
        "outputs on one rank or several; batch is the DCGAN paper's (and genpar 0.1's), whose "
        "outputs depend on how DDP splits the batch.",
    )
    spectral_norm: bool = Field(
        True,
        description="dcgan: spectral normalisation of every discriminator layer (Miyato et al. "
        "2018) instead of a normalisation layer.",
    )
    gan_loss: Literal["bce", "hinge", "wgan_gp"] = Field(
        "hinge",
        description="dcgan: the adversarial loss. bce: the DCGAN paper's (and genpar <= 0.2's) "
        "cross-entropy with the non-saturating generator loss; hinge: the hinge loss of "
        "SN-GAN/BigGAN (Miyato et al. 2018), the recommended recipe with spectral norm and "
        "model.ema_decay; wgan_gp: the Wasserstein critic with a gradient penalty (Gulrajani "
        "et al. 2017, weight train.gp_weight), usually with train.n_critic 5 and "
        "model.spectral_norm false.",
    )
    ema_decay: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="dcgan: keep an exponential moving average of the generator's weights with "
        "this decay (warmed up as min(decay, (1 + step) / (10 + step))); evaluation, "
        "generation, compression and the registry use the average, and the raw generator is "
        "scored once beside it (eval/fid_raw). null: off. 0.999 suits a few thousand steps.",
    )
    conditional: bool = Field(
        False,
        description="vae and dcgan: a class-conditional model on labelled data (the number of "
        "classes comes from the shard manifest). vae: a CVAE, whose encoder sees the label as "
        "one-hot channels beside the image and whose decoder sees a label embedding beside z; "
        "dcgan: the generator takes a label embedding beside z and the discriminator is a "
        "projection discriminator (Miyato & Koyama 2018: logit + <embed(y), the features the "
        "linear head reads>). "
        "Adds intra-class FID and the classification accuracy score (CAS) to the scorecard "
        "and `genpar generate --label K / --labels`. Refused on unlabelled data.",
    )
    rnn: Literal["gru", "lstm"] = Field(
        "gru", description="rvae: the recurrent cell of its encoder and decoder."
    )
    hidden_dim: int = Field(64, ge=4, le=4096, description="rvae: units of each recurrent layer.")
    rnn_layers: int = Field(1, ge=1, le=8, description="rvae: stacked recurrent layers.")
    decoder_input: Literal["latent", "latent_and_previous"] = Field(
        "latent",
        description="rvae: what the decoder reads at every step. latent: z alone, every step "
        "(non-autoregressive: nothing to drift from when it runs free); latent_and_previous: "
        "z and the previous step (teacher-forced in training, its own output when sampling: "
        "the classic RVAE, Fabius & van Amersfoort 2014).",
    )
    input_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="rvae with latent_and_previous: the chance that a previous step the decoder "
        "reads is replaced by zeros in training (word dropout, Bowman et al. 2016), so it must "
        "rely on z.",
    )
    free_bits: float = Field(
        0.0,
        ge=0.0,
        description="rvae: nats per latent dimension below which its KL is not pushed down "
        "(free bits, Kingma et al. 2016, arXiv 1606.04934); 0: off.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description='Your own network (model.name "package.module:ClassName"): keyword '
        "arguments of its constructor besides image_shape and latent_dim, as JSON; the class "
        "validates them (its error is shown with model.options before any training) and they "
        "are stored in the model's spec. Other families: empty.",
    )

    def __hash__(self) -> int:
        # Frozen sections hash their values; model.options is a dict, so hash the JSON form
        # (configs stayed hashable, as they were before model.options).
        return hash(json.dumps(self.model_dump(mode="json"), sort_keys=True))
