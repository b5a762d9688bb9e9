"""Compression variants of the sampling network: what each does, its size, save and load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from genpar_models.config import PipelineConfig
from genpar_models.infer import compress
from genpar_models.models.export import build_model


@pytest.fixture(params=["vae", "dcgan"])
def model(request: pytest.FixtureRequest, tiny: PipelineConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = tiny.model.model_copy(update={"name": request.param, "base_channels": 16})
    return build_model(cfg, (1, 8, 8)).eval()


def _sample(m: torch.nn.Module, n: int = 16) -> torch.Tensor:
    return m.sample(n, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["fp32", "bf16", "int8", "prune50"])
def test_variants_sample_like_the_original(model: torch.nn.Module, name: str) -> None:
    variant = compress.build_variant(model, name)
    x, ref = _sample(variant), _sample(model)
    assert x.dtype == torch.float32 and x.shape == ref.shape
    assert float((x - ref).abs().max()) <= (0.0 if name == "fp32" else 0.6)
    assert float((x - ref).abs().mean()) < {"fp32": 1e-9, "bf16": 0.02, "int8": 0.05}.get(name, 1)
    assert torch.equal(_sample(model), ref)  # the original is untouched


def test_sizes_and_sparsity(model: torch.nn.Module) -> None:
    net = lambda m: getattr(m, compress.sampling_net_name(m))  # noqa: E731
    fp32, _ = compress.size_bytes(net(model))
    assert compress.size_bytes(net(compress.build_variant(model, "bf16")))[0] < 0.6 * fp32
    assert compress.size_bytes(net(compress.build_variant(model, "int8")))[0] < fp32
    pruned = net(compress.build_variant(model, "prune70"))
    weights = [m.weight for m, _ in compress.prunable(pruned)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.7, abs=0.01)
    size, gz = compress.size_bytes(pruned)
    assert size == fp32 and gz < 0.6 * compress.size_bytes(net(model))[1]  # zeros compress


def test_fine_tuning_keeps_the_sparsity(model: torch.nn.Module, tiny: PipelineConfig) -> None:
    images = np.random.default_rng(0).integers(0, 256, (64, 1, 8, 8), dtype=np.uint8)
    pruned = compress.pruned_model(model, 0.5, tiny, images, steps=3)
    net = getattr(pruned, compress.sampling_net_name(pruned))
    weights = [m.weight for m, _ in compress.prunable(net)]
    assert sum(int((w == 0).sum()) for w in weights) >= 0.5 * sum(w.numel() for w in weights) - 1
    assert not any(n.endswith("_orig") for n, _ in pruned.named_parameters())  # made permanent


@pytest.mark.parametrize("name", ["bf16", "int8", "prune30"])
def test_saved_variant_loads_back_identically(
    model: torch.nn.Module, name: str, tmp_path: Path
) -> None:
    variant = compress.build_variant(model, name)
    compress.save_variant(tmp_path / name, model, variant, name, {"samples_per_s_b256": 1.0})
    loaded, meta = compress.load_variant(tmp_path / name)
    assert meta["compression"]["variant"] == name
    assert torch.equal(_sample(loaded), _sample(variant))


def test_best_variant_respects_the_budget() -> None:
    rows = [
        {"variant": "fp32", "samples_per_s_b256": 100.0, "size_gzip_bytes": 10, "delta_fid": 0.0},
        {"variant": "int8", "samples_per_s_b256": 150.0, "size_gzip_bytes": 8, "delta_fid": 0.5},
        {"variant": "prune70", "samples_per_s_b256": 300.0, "size_gzip_bytes": 4, "delta_fid": 4.0},
    ]
    assert compress.choose_best(rows, 1.0)["variant"] == "int8"
    assert compress.choose_best(rows, 10.0)["variant"] == "prune70"
    assert compress.choose_best(rows, 0.0)["variant"] == "fp32"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_half_precision_variants_on_the_gpu(model: torch.nn.Module, name: str) -> None:
    variant = compress.build_variant(model, name, device="cuda")
    x = _sample(variant)  # the latents come from a CPU generator: the same as on CPU
    assert x.device.type == "cuda" and x.dtype == torch.float32
    assert float((x.cpu() - _sample(model)).abs().mean()) < 0.02


def test_interleaved_timing_reports_every_variant(model: torch.nn.Module) -> None:
    variants = {name: compress.build_variant(model, name) for name in ("fp32", "int8")}
    timings = compress.time_sampling(variants, latency_repeats=5, throughput_batches=2, seed=0)
    assert set(timings) == {"fp32", "int8"}
    for t in timings.values():
        assert 0 < t["latency_ms_p50"] <= t["latency_ms_p95"]
        assert t["samples_per_s_b1"] > 0 and t["samples_per_s_b256"] > 0 and t["warmup_s"] > 0


@pytest.mark.parametrize("loss", ["hinge", "bce"])
def test_fine_tuning_a_gan_uses_the_configured_loss(tiny: PipelineConfig, loss: str) -> None:
    """A GAN rebuilt from its spec (as `genpar compress` loads it) does not know its loss; the
    fine-tuning of its pruned variants trains with the config's model.gan_loss, so it lands
    where a model built from that config lands, and away from the other loss."""
    from genpar_models.models.export import build_model_from_spec

    images = np.random.default_rng(0).integers(0, 256, (64, 1, 8, 8), dtype=np.uint8)
    mcfg = tiny.model.model_copy(
        update={"name": "dcgan", "base_channels": 8, "likelihood": "logistic_mixture"}
    )
    results = {}
    for kind in ("hinge", "bce"):
        torch.manual_seed(0)
        built = build_model(mcfg.model_copy(update={"gan_loss": kind}), (1, 8, 8))
        cfg = tiny.model_copy(update={"model": mcfg.model_copy(update={"gan_loss": kind})})
        results[kind] = compress.pruned_model(built, 0.3, cfg, images, steps=3)
        if kind == loss:
            rebuilt = build_model_from_spec(built.model_spec())
            rebuilt.load_state_dict(built.state_dict())
            assert rebuilt.gan_loss == "bce"  # the class default: the spec names no loss
            from_spec = compress.pruned_model(rebuilt, 0.3, cfg, images, steps=3)
    other = "bce" if loss == "hinge" else "hinge"
    for name, p in from_spec.generator.state_dict().items():
        torch.testing.assert_close(p, results[loss].generator.state_dict()[name])
    differ = any(
        not torch.allclose(p, results[other].generator.state_dict()[name])
        for name, p in from_spec.generator.state_dict().items()
    )
    assert differ
