"""Sequences through the real stages: Dask preprocessing, 2-rank gloo torchrun training with an
exact resume (tiny-sequences config: 64 sines, an RVAE of a few thousand parameters)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genpar_models.config import PipelineConfig, load_config
from genpar_models.data.shards import open_shard_set
from genpar_models.train.runspec import RunSpec
from tests.conftest import REPO
from tests.helpers import launch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY_SEQ = REPO / "configs" / "tiny-sequences.yaml"


@pytest.fixture(scope="module")
def tiny_seq() -> PipelineConfig:
    return load_config(TINY_SEQ)


def _digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.npy"))
    }


def test_sequence_shards_are_the_same_on_dask_or_here(home: Path, tiny_seq: PipelineConfig) -> None:
    from tasks.preprocess import build_shards

    digests = {}
    for where in ("dask", "local"):
        data = tiny_seq.data.model_copy(update={"parallel": where})
        built = build_shards(tiny_seq.model_copy(update={"data": data}), rebuild=True)
        digests[where] = _digests(built)
    assert len(digests["dask"]) == 3 * 2 * 3  # 2 partitions x 3 splits x values/labels/lengths
    assert digests["dask"] == digests["local"]
    shardset = open_shard_set(built)
    assert shardset.manifest.image_shape == (24, 5) and shardset.manifest.total == 64
    assert (shardset.lengths("train") == 24).all()


def _weights(spec: RunSpec) -> str:
    return json.loads((spec.model_dir / "model.json").read_text())["sha256"]


def test_rvae_trains_on_two_ranks_and_resumes_exactly(
    home: Path, tmp_path: Path, tiny_seq: PipelineConfig
) -> None:
    """Ten steps, then a second launch to twenty, equals twenty straight, bit for bit: the KL
    ramp, the word-dropout masks and the data order all continue from the checkpoint."""
    from tasks.preprocess import build_shards

    model = tiny_seq.model.model_copy(
        update={
            "rnn": "lstm",
            "decoder_input": "latent_and_previous",
            "input_dropout": 0.3,
            "free_bits": 0.1,
        }
    )
    cfg = tiny_seq.model_copy(update={"model": model})
    shards_dir = str(build_shards(cfg))
    half = cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": 10})})
    resumed = RunSpec(
        config=half, shards_dir=shards_dir, run_dir=str(tmp_path / "r"), train_key="k"
    )
    lines: list[str] = []
    launch(resumed, lines.append)
    assert json.loads(resumed.result_path.read_text())["step"] == 10
    resumed = resumed.model_copy(update={"config": cfg})
    launch(resumed, lines.append)
    result = json.loads(resumed.result_path.read_text())
    assert result["step"] == 20 and result["resumed_from_step"] == 10
    assert result["global_batch_size"] == 32  # 2 ranks x 16
    assert np.isfinite(result["metrics"]["val/elbo"])
    assert 0 < result["metrics"]["train/kl_weight"] <= 1.0
    straight = RunSpec(
        config=cfg, shards_dir=shards_dir, run_dir=str(tmp_path / "s"), train_key="k"
    )
    launch(straight)
    assert _weights(straight) == _weights(resumed)


def test_sines_nightly_end_to_end_with_the_sequence_scorecard(
    prefect_server, tracked_home: Path, tmp_path: Path, tiny_seq: PipelineConfig
) -> None:
    """The nightly retrain of a sequence config (its first night runs the whole pipeline:
    Dask shards, 2-rank torchrun, the sequence scorecard with its plots, denormalised samples
    with lengths, one MLflow run, registered and promoted); the next night on unchanged data
    trains nothing; `genpar generate` from the champion and the registered version served as
    an MLflow pyfunc model give the same series; `genpar compress` measures the recurrent
    decoder's variants. One training serves every assertion (CI time)."""
    import mlflow
    from mlflow import MlflowClient

    from flows.nightly import nightly_retrain
    from genpar_models.util.paths import default_tracking_uri

    night = nightly_retrain(tiny_seq)
    assert night["decision"]["action"] == "promoted", night["decision"]
    uri = default_tracking_uri()
    client = MlflowClient(uri)
    run = client.get_run(night["run_id"])
    assert run.info.status == "FINISHED"
    summary = {"run_id": night["run_id"], "run_dir": run.data.tags["genpar.run_dir"]}
    m = run.data.metrics
    for key in (
        "train/loss",
        "train/kl_weight",
        "val/elbo",
        "val/nats_per_step",
        "eval/elbo",
        "eval/elbo_per_step",
        "eval/iw_bound",
        "eval/iw_bound_per_step",
        "eval/elbo_per_step_gap",
        "eval/fid",
        "eval/fid_ci_low",
        "eval/fid_ci_high",
        "eval/fid_floor",
        "eval/discriminative_score",
        "eval/discriminative_score_ci_low",
        "eval/predictive_mae",
        "eval/predictive_mae_real",
        "eval/predictive_mae_ci_high",
        "gen/samples_per_s",
    ):
        assert key in m and np.isfinite(m[key]), key
    assert 0 <= m["eval/discriminative_score"] <= 0.5
    assert m["eval/iw_bound"] >= m["eval/elbo"] - 1.0
    artifacts = set()
    stack = [""]
    while stack:
        for item in client.list_artifacts(run.info.run_id, stack.pop() or None):
            (stack.append(item.path) if item.is_dir else artifacts.add(item.path))
    assert {"eval/real_vs_generated.png", "eval/pca.png", "samples/grid.png"} <= artifacts
    assert json.loads(run.data.tags["genpar.protocol.quality.json"])["extractor"] == (
        "sequence-encoder"
    )
    samples = Path(summary["run_dir"]) / "samples"
    info = json.loads((samples / "samples.json").read_text())
    values = np.concatenate([np.load(samples / c["file"]) for c in info["chunks"]])
    lengths = np.concatenate([np.load(samples / c["lengths_file"]) for c in info["chunks"]])
    assert values.shape == (32, 24, 5) and (lengths == 24).all()
    # denormalised: in the sines' units, near their range [0.5, 1], not standardised
    assert 0.3 < float(np.nanmean(values)) < 1.1
    # genpar compress: int8 (GRU + linears) and bf16 variants measured on a child run
    from flows.compress import compress_flow

    small = [
        "compress.variants=[int8, bf16]",
        "compress.latency_repeats=5",
        "compress.throughput_batches=2",
    ]
    squeezed = compress_flow(summary["run_id"], overrides=small)
    assert [r["variant"] for r in squeezed["rows"]] == ["fp32", "int8", "bf16"]
    rows = {r["variant"]: r for r in squeezed["rows"]}
    assert rows["int8"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert all(np.isfinite(r["fid"]) and np.isfinite(r["elbo"]) for r in rows.values())
    # the second night: unchanged data, config and code -> nothing trained, nothing registered
    again = nightly_retrain(tiny_seq)
    assert again["decision"]["action"] == "skipped" and again["run_id"] is None
    # genpar generate from the champion, and the same request to the served pyfunc model
    from flows.generate import generate_flow
    from tasks.served_model import global_tracking_uri

    name = tiny_seq.registered_model_name
    out = generate_flow(f"{name}@champion", None, n=10, out=str(tmp_path / "gen"), seed=5)
    gen_info = json.loads((Path(out["out"]) / "samples.json").read_text())
    gen_values = np.concatenate([np.load(Path(out["out"]) / c["file"]) for c in gen_info["chunks"]])
    with global_tracking_uri(uri):
        served = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        (answer,) = served.predict(pd.DataFrame([{"n": 10, "seed": 5}]))
    assert answer["shape"] == [10, 24, 5] and answer["lengths"] == [24] * 10
    assert np.array_equal(np.asarray(answer["series"], np.float32), gen_values)  # bit for bit


def test_generated_series_are_identical_on_dask_workers_or_here(
    home: Path, tmp_path: Path, tiny_seq: PipelineConfig
) -> None:
    """Seeded chunks: the same files from 2 Dask workers or this process; the series
    come back in the source's units with their lengths (a variable-length source)."""
    import torch

    from genpar_models.train.dist import DistContext
    from genpar_models.train.loop import train
    from tasks.generate import generate_to_dir
    from tasks.preprocess import build_shards

    x = np.stack([np.sin(np.arange(12) / (1 + i % 5))[:, None] * 10 + 50 for i in range(64)])
    x = np.concatenate([x, -x + 100], axis=2).astype(np.float32)  # (64, 12, 2), mean 50
    for i in range(0, 64, 3):
        x[i, 6 + i % 6 :] = np.nan  # lengths 6..11 for every third series
    np.save(tmp_path / "x.npy", x)
    data = tiny_seq.data.model_copy(
        update={"source": "array", "path": str(tmp_path / "x.npy"), "series_channels": None}
    )
    train_cfg = tiny_seq.train.model_copy(update={"max_steps": 5})
    cfg = tiny_seq.model_copy(update={"data": data, "train": train_cfg})
    shards_dir = build_shards(cfg)
    spec = RunSpec(
        config=cfg, shards_dir=str(shards_dir), run_dir=str(tmp_path / "r"), train_key="k"
    )
    train(spec, DistContext(0, 0, 1, torch.device("cpu")))
    digests = {}
    # 2 workers against this process alone: one cluster start fewer than 1 and 2 workers
    # (CI time), and any dependence on where a chunk runs shows as a difference here
    for where, workers in (("dask", 2), ("local", None)):
        compute = cfg.compute.model_copy(update={"dask_workers": workers})
        gen = cfg.generate.model_copy(update={"parallel": where})
        c = cfg.model_copy(update={"compute": compute, "generate": gen})
        out = tmp_path / f"gen-{where}{workers or ''}"
        generate_to_dir(c, str(spec.model_dir), out)
        digests[out.name] = _digests(out)
    assert len(digests["gen-dask2"]) == 2 * 4  # 32 series in chunks of 8: values + lengths
    assert digests["gen-dask2"] == digests["gen-local"]
    out = tmp_path / "gen-dask2"
    values = np.concatenate([np.load(p) for p in sorted(out.glob("samples-?????.npy"))])
    lengths = np.concatenate([np.load(p) for p in sorted(out.glob("samples-*.lengths.npy"))])
    assert values.shape == (32, 12, 2) and set(lengths.tolist()) <= set(range(6, 13))
    inside = np.arange(12)[None, :] < lengths[:, None]
    assert np.isfinite(values[inside]).all() and np.isnan(values[~inside]).all()
    assert 30 < float(values[inside].mean()) < 70  # denormalised: source units around 50
    assert (out / "grid.png").read_bytes()[:4] == b"\x89PNG"
    # evaluate.parallel: the scorecard's series drawn on 2 Dask workers are the ones drawn
    # here, and the scorecard of either is the same
    from genpar_models.eval.scorecard import evaluate_model
    from genpar_models.eval.sequence_scorecard import sample_blocks
    from genpar_models.models.export import load_model
    from genpar_models.util import seeding
    from genpar_models.util.threads import torch_threads
    from tasks.evaluate import _generated

    compute = cfg.compute.model_copy(update={"dask_workers": 2})
    c = cfg.model_copy(
        update={
            "compute": compute,
            "evaluate": cfg.evaluate.model_copy(update={"parallel": "dask"}),
        }
    )
    on_dask = _generated(c, str(spec.model_dir), "unused")
    with torch_threads(1):
        here, _ = sample_blocks(load_model(spec.model_dir)[0], 32, seeding.evaluation(0))
    assert on_dask.series.shape == (32, 12, 2)
    np.testing.assert_array_equal(on_dask.series, here)
    a = evaluate_model(spec.model_dir, shards_dir, c, generated=on_dask)["metrics"]
    b = evaluate_model(spec.model_dir, shards_dir, c)["metrics"]
    keys = [k for k in a if "seconds" not in k and "_ms_" not in k]
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


def test_ddp_ranks_keep_equal_rvae_buffers_without_broadcasting_them(tmp_path: Path) -> None:
    """The RVAE turns off DDP's per-forward buffer broadcast (a second collective each step):
    its buffers must then stay equal across ranks on their own, whatever data each rank sees."""
    import torch
    import torch.multiprocessing as mp

    from tests.helpers import ddp_rvae_buffers

    out = str(tmp_path / "rvae")
    mp.spawn(ddp_rvae_buffers, args=(2, str(tmp_path / "init"), out), nprocs=2)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    assert [r["broadcast"] for r in ranks] == [False, False]
    a, b = ranks[0]["buffers"], ranks[1]["buffers"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["steps_taken"]) == 3
