"""The `model` section: which model family to build (`model.name`), its size and its options.

`name` names a registered family (genpar_models/models/registry.py): the built-ins `vae` and
`dcgan`, or one a plugin registers. Whether the name is known is checked against the registry
before any work (`check_model_config`), not here, so that reading a config never imports torch.
Fields that only one family reads say so; setting one for another family is refused there too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genpar_models.config.base import Section

# What every family reads; the other fields belong to the families that list them.
SHARED_FIELDS = ("name", "latent_dim", "base_channels")


class ModelConfig(Section):
    """Which generative model to build, by family name, and its size."""

    name: str = Field(
        "vae",
        pattern=r"^[A-Za-z_][\w.-]*(:[A-Za-z_]\w*)?$",
        description="Model family: vae (convolutional VAE), dcgan (DCGAN-style GAN), or a "
        "family a plugin registers.",
        json_schema_extra={"examples": ["vae", "dcgan"]},
    )
    latent_dim: int = Field(16, ge=1, le=1024, description="Size of the latent vector z.")
    base_channels: int = Field(
        32, ge=4, le=512, description="Channels of the first conv layer; doubled per level."
    )
    likelihood: Literal["bernoulli", "gaussian"] = Field(
        "bernoulli",
        description="vae: the decoder's likelihood, bernoulli (pixel intensities as "
        "probabilities) or gaussian (discretised over 256 levels with a learned per-channel "
        "scale).",
    )
