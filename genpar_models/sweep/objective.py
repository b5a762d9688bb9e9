"""Which metrics a trial of a config produces, so a sweep whose objective (or early-stopping
metric) names one it never logs fails before any work instead of ranking nothing.

`val/` and `train/` keys are what the family's own steps return: one training step and one
validation batch of a throwaway network on blank images (milliseconds for genpar's sizes).
`eval/` keys are the scorecard's: sample quality for every family, likelihood figures for a
family with a likelihood, bits/dim only where the likelihood is a code length of the data.
"""

from __future__ import annotations

from genpar_models.config import PipelineConfig
from genpar_models.errors import ConfigError

QUALITY = {
    "eval/fid",
    "eval/fid_ci_low",
    "eval/fid_ci_high",
    "eval/kid",
    "eval/kid_std",
    "eval/kid_ci_low",
    "eval/kid_ci_high",
    "eval/precision",
    "eval/recall",
    "eval/density",
    "eval/coverage",
    "eval/fid_floor",
    "eval/num_parameters",
    "eval/checkpoint_bytes",
    "eval/sample_ms_per_image",
}
LIKELIHOOD = {"eval/recon", "eval/kl", "eval/elbo", "eval/iw_bound", "eval/train_elbo"}
LIKELIHOOD |= {"eval/elbo_gap"}
BITS = {"eval/bits_per_dim", "eval/recon_bits_per_dim", "eval/kl_bits_per_dim"}
BITS |= {"eval/iw_bits_per_dim", "eval/bits_per_dim_gap"}


def step_metrics(config: PipelineConfig) -> set[str]:
    """The train/ and val/ keys the family's steps return for this config."""
    import torch

    from genpar_models.models import check_model_config
    from genpar_models.train.dist import DistContext
    from genpar_models.train.tools import step_tools

    family = check_model_config(config)
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    torch.manual_seed(0)
    model = family.build(config.model, shape, **_classes(config))
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    steps = family.make_steps(model, config.train, step_tools(ctx, config.train))
    rows = 2 * getattr(steps, "batches_per_step", 1) * config.train.grad_accum_steps
    noise = torch.Generator().manual_seed(0)
    x = family.to_input(torch.zeros((rows, *shape), dtype=torch.uint8), "none", noise)
    # a conditional model's steps take labels (any two classes give its metric keys)
    y = {"labels": torch.arange(rows) % 2} if config.model.conditional else {}
    keys = set(steps.step(x, noise, **y))
    keys |= {"train/samples_per_s", "train/lr_factor"}
    keys |= set(steps.validate(x[:2], noise, **{k: v[:2] for k, v in y.items()}))
    return keys


def _classes(config: PipelineConfig) -> dict:
    """A conditional config's build arguments for a network of the same metrics (the real
    number of classes comes from the shards at training)."""
    from genpar_models.models.conditioning import build_kwargs

    return build_kwargs(config.data.num_classes or 10) if config.model.conditional else {}


def produced_metrics(config: PipelineConfig) -> set[str]:
    """Every metric key a pipeline run of `config` logs that can rank trials."""
    from genpar_models.models import get_family

    family = get_family(config.model.name)
    keys = step_metrics(config) | QUALITY
    if config.data.num_classes or config.data.source in ("digits", "mnist5k"):
        keys |= {"eval/inception_score", "eval/extractor_accuracy"}
    if family.likelihood is not None:
        keys |= LIKELIHOOD
    if family.reports_bits_per_dim(_spec(config), config.data.binarize):
        keys |= BITS
    else:
        keys -= {"val/bits_per_dim"}
    if getattr(config.model, "ema_decay", None):
        keys |= {"eval/fid_raw", "eval/kid_raw"}
    if config.model.conditional:  # per-class keys depend on the data: the mean and CAS rank
        keys |= {"eval/intra_fid_mean", "eval/cas", "eval/cas_real_reference", "eval/cas_ratio"}
    return keys


def _spec(config: PipelineConfig) -> dict:
    from genpar_models.models import get_family

    family = get_family(config.model.name)
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    return family.build(config.model, shape, **_classes(config)).model_spec()


def check_metric(config: PipelineConfig, field: str, metric: str) -> None:
    """Raises ConfigError naming `field` when `config`'s family never logs `metric`."""
    known = produced_metrics(config)
    if metric not in known:
        import difflib

        hint = difflib.get_close_matches(metric, sorted(known), n=1)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(
            f"{field}={metric!r}: the {config.model.name} family does not produce this metric"
            f"{suggestion} (it produces: {', '.join(sorted(known))})"
        )
