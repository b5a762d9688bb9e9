"""Model families: one folder per family, registered by name, and the layers they share.

    family.py       what a family is: `Family`, the trainer's `StepTools`, the `Steps` contract
    registry.py     model.name -> Family (built-ins imported on first use; plugins)
    export.py       a trained network as safetensors + JSON, and building one from its spec
    layers.py       conv down/up paths, the resolution plan, seeded noise
    likelihoods.py  decoder likelihoods and KL, in nats
    vae/            the convolutional VAE family ("vae")
    gan/            the DCGAN family ("dcgan")
    custom/         your own network ("package.module:ClassName"), adapted to the vae or gan
                    family's steps

Importing this package, or a family (its registration), is cheap: no torch until a network is
built. A family's folder is imported when the registry is first asked for it.
"""

from genpar_models.models.registry import (
    check_model_config,
    family_names,
    get_family,
    register_family,
)

__all__ = ["check_model_config", "family_names", "get_family", "register_family"]
