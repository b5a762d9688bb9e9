"""Warm start (`RunSpec.init_model_dir`): weights from an exported model, checkpoints still win."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genpar_models.config import PipelineConfig
from genpar_models.errors import CheckpointError
from genpar_models.models.export import load_exported
from genpar_models.train.loop import train
from genpar_models.train.runspec import RunSpec
from tests.helpers import CPU, make_shard_set


def _spec(tmp: Path, cfg: PipelineConfig, shards: Path, run: str, **train_update) -> RunSpec:
    init = train_update.pop("init", None)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=train_update)})
    return RunSpec(
        config=cfg,
        shards_dir=str(shards),
        run_dir=str(tmp / run),
        train_key="k",
        init_model_dir=str(tmp / init / "model") if init else None,
    )


def _weights(tmp: Path, run: str) -> dict[str, torch.Tensor]:
    return load_exported(tmp / run / "model")[0]


def test_training_starts_from_the_init_model(tmp_path: Path, tiny: PipelineConfig) -> None:
    shards = make_shard_set(tmp_path / "shards", tiny)
    train(_spec(tmp_path, tiny, shards, "champion", max_steps=10), CPU)
    # one step at a negligible learning rate: the weights stay where they started
    train(_spec(tmp_path, tiny, shards, "warm", max_steps=1, lr=1e-9, init="champion"), CPU)
    train(_spec(tmp_path, tiny, shards, "cold", max_steps=1, lr=1e-9), CPU)
    champion, warm, cold = (_weights(tmp_path, r) for r in ("champion", "warm", "cold"))
    assert all(torch.allclose(warm[k], champion[k], atol=1e-6) for k in champion)
    assert not all(torch.allclose(cold[k], champion[k], atol=1e-3) for k in champion)


def test_a_checkpoint_wins_over_the_init_model(tmp_path: Path, tiny: PipelineConfig) -> None:
    """Resume precedence: an interrupted warm-started run continues from its own checkpoint."""
    shards = make_shard_set(tmp_path / "shards", tiny)
    train(_spec(tmp_path, tiny, shards, "other", max_steps=10, lr=0.01), CPU)
    train(_spec(tmp_path, tiny, shards, "straight", max_steps=20), CPU)
    train(_spec(tmp_path, tiny, shards, "resumed", max_steps=10), CPU)
    result = train(_spec(tmp_path, tiny, shards, "resumed", max_steps=20, init="other"), CPU)
    assert result["resumed_from_step"] == 10
    a, b = _weights(tmp_path, "straight"), _weights(tmp_path, "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_init_model_of_another_shape_is_refused(tmp_path: Path, tiny: PipelineConfig) -> None:
    shards = make_shard_set(tmp_path / "shards", tiny)
    train(_spec(tmp_path, tiny, shards, "small", max_steps=2), CPU)
    wider = tiny.model_copy(update={"model": tiny.model.model_copy(update={"latent_dim": 8})})
    with pytest.raises(CheckpointError, match="train.init_from: .* does not fit"):
        train(_spec(tmp_path, wider, shards, "wide", max_steps=2, init="small"), CPU)
