"""Inference compression of the sampling network (VAE decoder, GAN generator): the variants.

Each variant is a copy of the trained model whose sampling network is transformed:

    fp32      the baseline, unchanged
    bf16      weights and activations in bfloat16 (the VAE decoder's last conv stays fp32, as
              in training); fp16 the same in float16, CUDA only
    compile   torch.compile of the network (inductor; compile time is reported separately)
    int8      dynamic int8 quantization of the linear and recurrent (GRU/LSTM) layers (torch.ao;
              convolutions stay fp32)
    pruneNN   global L1 magnitude pruning of conv and linear weights to NN% sparsity
              (Han et al. 2015, https://arxiv.org/abs/1506.02626), optionally fine-tuned
              for a few steps with the masks held, then made permanent

A variant is stored as the fp32 weights it derives from (for pruned variants, the pruned and
fine-tuned weights) plus its name: `build_variant` re-derives bf16 and int8 weights from them
exactly, so nothing but tensors and JSON is ever written or read.
"""

from __future__ import annotations

import copy
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from genpar_models.config import PipelineConfig
from genpar_models.models.export import build_model_from_spec, export_model, load_exported
from genpar_models.models.family import Family
from genpar_models.models.layers import Cast
from genpar_models.models.registry import get_family
from genpar_models.train.dist import DistContext
from genpar_models.train.tools import step_tools
from genpar_models.util import seeding

_PRUNE = re.compile(r"^prune(\d\d)$")


def family_of(model: nn.Module) -> Family:
    """The family of a built network (from its model spec)."""
    return get_family(model.model_spec()["name"])


def sampling_net_name(model: nn.Module) -> str:
    """The attribute holding the network that turns latents into samples."""
    return family_of(model).sampling_net


def sparsity_of(name: str) -> float | None:
    m = _PRUNE.match(name)
    return int(m.group(1)) / 100.0 if m else None


class _Halved(nn.Sequential):
    """Cast(dtype), the network in dtype, Cast(float32): a Sequential (the same state_dict
    keys) whose first input is cast and whose other inputs (a conditional generator's int64
    labels) pass through to the network as they are."""

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        to_half, net, to_float = self
        return to_float(net(to_half(x), *rest))


def _half(model: nn.Module, dtype: torch.dtype) -> None:
    family = family_of(model)
    if family.half is not None:  # the family knows which layers must stay fp32
        family.half(model, dtype)
        return
    net = getattr(model, family.sampling_net)
    setattr(model, family.sampling_net, _Halved(Cast(dtype), net.to(dtype), Cast(torch.float32)))


def prunable(net: nn.Module) -> list[tuple[nn.Module, str]]:
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    return [(m, "weight") for m in net.modules() if isinstance(m, kinds)]


def apply_pruning(net: nn.Module, sparsity: float) -> None:
    """Global magnitude pruning: masks (held during fine-tuning) on every conv/linear weight."""
    prune.global_unstructured(prunable(net), pruning_method=prune.L1Unstructured, amount=sparsity)


def finish_pruning(net: nn.Module) -> None:
    for module, name in prunable(net):
        if prune.is_pruned(module):
            prune.remove(module, name)


def pruned_model(
    model: nn.Module, sparsity: float, cfg: PipelineConfig, train_u8: np.ndarray, steps: int
) -> nn.Module:
    """A copy of `model` pruned to `sparsity`, fine-tuned for `steps` with the masks held."""
    out = copy.deepcopy(model)
    apply_pruning(getattr(out, sampling_net_name(out)), sparsity)
    if steps > 0:
        finetune(out, cfg, train_u8, steps)
    finish_pruning(getattr(out, sampling_net_name(out)))
    return out.eval()


def finetune(model: nn.Module, cfg: PipelineConfig, train_u8: np.ndarray, steps: int) -> None:
    """A few training steps of the whole model (pruning masks stay in force), trained as the
    config says: a GAN's `gan_loss` is not in its stored spec, so a model rebuilt from one
    carries its class default until the family's `train_settings` sets the config's."""
    ctx = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    family = family_of(model)
    if family.train_settings is not None:
        family.train_settings(model, cfg.model)
    trainer = family.make_steps(model, cfg.train, step_tools(ctx, cfg.train))
    rng = np.random.default_rng(cfg.seed)
    noise = torch.Generator().manual_seed(cfg.seed)
    batch = min(cfg.train.batch_size_per_rank, len(train_u8))
    for _ in range(steps):
        x = torch.from_numpy(train_u8[rng.integers(0, len(train_u8), batch)])
        trainer.step(family.to_input(x, cfg.data.binarize, noise), noise)
    model.eval()


def build_variant(model: nn.Module, name: str, device: str = "cpu") -> nn.Module:
    """A copy of `model` with its sampling network transformed as variant `name`."""
    out = copy.deepcopy(model).to(device).eval()
    attr = sampling_net_name(out)
    if name in ("bf16", "fp16"):
        _half(out, torch.bfloat16 if name == "bf16" else torch.float16)
    elif name == "compile":
        setattr(out, attr, torch.compile(getattr(out, attr)))
    elif name == "int8":
        with warnings.catch_warnings():  # torch.ao points at torchao; eager mode still works
            warnings.simplefilter("ignore")
            q = torch.ao.quantization.quantize_dynamic(
                getattr(out, attr), {nn.Linear, nn.GRU, nn.LSTM}, dtype=torch.qint8
            )
        setattr(out, attr, q)
    elif sparsity_of(name) is not None:
        if not _is_sparse(getattr(out, attr), sparsity_of(name)):  # not pruned yet: prune now
            apply_pruning(getattr(out, attr), sparsity_of(name))
            finish_pruning(getattr(out, attr))
    elif name != "fp32":
        raise ValueError(f"unknown compression variant {name!r}")
    return out


def _is_sparse(net: nn.Module, sparsity: float) -> bool:
    weights = [m.weight for m, _ in prunable(net)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros >= sparsity * sum(w.numel() for w in weights) - 1


STORED_AS_BASE = ("int8", "compile")  # stored as fp32 weights, re-derived exactly on load


def save_variant(
    directory: Path, base: nn.Module, variant: nn.Module, name: str, measurements: dict
) -> None:
    """Export a variant: its own tensors (fp32/bf16/fp16/pruned) or its fp32 base (int8,
    compile), with `compression: {variant, measurements}` in model.json."""
    module = base if name in STORED_AS_BASE else variant
    meta = {"compression": {"variant": name, "measurements": measurements}}
    export_model(directory, module=module, spec=base.model_spec(), meta=meta)


def load_variant(directory: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load an exported variant (or a plain model, as fp32) ready to sample."""
    state, meta = load_exported(directory)
    name = meta.get("compression", {}).get("variant", "fp32")
    model = build_model_from_spec(meta["model_spec"]).eval()
    if name in STORED_AS_BASE:
        model.load_state_dict(state, strict=True)
        return build_variant(model, name), meta
    variant = build_variant(model, name if sparsity_of(name) is None else "fp32")
    variant.load_state_dict(state, strict=True)
    return variant.eval(), meta


def disk_tensors(net: nn.Module) -> dict[str, Tensor]:
    """What storing `net` takes: its tensors, quantized ones as int8 + scale + zero point."""
    out: dict[str, Tensor] = {}
    for key, value in net.state_dict().items():
        items = enumerate(value) if isinstance(value, tuple) else [("", value)]
        for i, t in items:
            if not isinstance(t, Tensor):
                continue
            k = f"{key}.{i}" if i != "" else key
            if t.is_quantized:
                out[k] = t.int_repr()
                out[k + ".scale"] = torch.tensor([t.q_scale()])
                out[k + ".zero_point"] = torch.tensor([t.q_zero_point()])
            else:
                out[k] = t.detach()
    return out


def size_bytes(net: nn.Module) -> tuple[int, int]:
    """(safetensors bytes, gzip-compressed bytes) of the sampling network's tensors."""
    import gzip

    from safetensors.torch import save

    blob = save({k: v.contiguous().cpu() for k, v in disk_tensors(net).items()})
    return len(blob), len(gzip.compress(blob, compresslevel=6))


def _timed(model: nn.Module, n: int, gen: torch.Generator) -> float:
    t0 = time.perf_counter()
    model.sample(n, generator=gen)
    return time.perf_counter() - t0


@torch.no_grad()
def time_sampling(
    variants: dict[str, nn.Module], *, latency_repeats: int, throughput_batches: int, seed: int
) -> dict[str, dict[str, float]]:
    """Per variant: batch-1 latency p50/p95, samples/s at batch 1 and 256, warm-up seconds.

    The variants are timed in interleaved rounds (one call of each per round) and summarised
    by medians, so a change in machine load hits every variant alike instead of whichever was
    being timed. warmup_s is the first call at each size (for `compile`: the compilations).
    """
    gen = torch.Generator().manual_seed(seeding.chunk(seed, 0))
    warmup = {name: _timed(m, 1, gen) + _timed(m, 256, gen) for name, m in variants.items()}
    lat: dict[str, list[float]] = {name: [] for name in variants}
    big: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(max(latency_repeats, throughput_batches)):
        for name, m in variants.items():
            if i < latency_repeats:
                lat[name].append(_timed(m, 1, gen))
            if i < throughput_batches:
                big[name].append(_timed(m, 256, gen))
    return {
        name: {
            "latency_ms_p50": 1000 * float(np.percentile(lat[name], 50)),
            "latency_ms_p95": 1000 * float(np.percentile(lat[name], 95)),
            "samples_per_s_b1": 1.0 / float(np.median(lat[name])),
            "samples_per_s_b256": 256.0 / float(np.median(big[name])),
            "warmup_s": warmup[name],
        }
        for name in variants
    }


def choose_best(rows: list[dict[str, Any]], max_fid_increase: float) -> dict[str, Any]:
    """Fastest variant (batch-256 samples/s, then smaller gzip size) within the FID budget."""
    ok = [r for r in rows if r.get("delta_fid", 0.0) <= max_fid_increase]
    return max(ok, key=lambda r: (r["samples_per_s_b256"], -r["size_gzip_bytes"]))
