"""Faults injected for real: servers that vanish, processes killed mid-write, full disks,
two pipelines at once. docs/RELIABILITY.md lists each with its behaviour."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from genpar_models.config import PipelineConfig, load_config
from genpar_models.errors import StorageError
from genpar_models.models.export import load_exported
from genpar_models.train import checkpoint
from genpar_models.train.runspec import RunSpec, TrackingTarget
from genpar_models.util.atomic import STAGING_PREFIX
from genpar_models.util.paths import shards_root
from tasks import mlflow_store as store
from tasks.launcher import TrainingFailed
from tasks.preprocess import preprocess
from tests.conftest import TINY
from tests.helpers import MlflowServer, free_port, launch, make_shard_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _long_tiny(steps: int = 300) -> PipelineConfig:
    return load_config(
        TINY,
        [
            f"train.max_steps={steps}",
            "train.checkpoint_every_steps=25",
            "train.log_every_steps=5",
            "train.val_every_steps=100",
            "train.max_restarts=0",
        ],
    )


def _when(path_glob: Path, then, timeout: float = 180) -> threading.Thread:
    def watch() -> None:
        deadline = time.time() + timeout
        while time.time() < deadline and not list(path_glob.parent.glob(path_glob.name)):
            time.sleep(0.02)
        then()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


# --------------------------------------------------------------------------- tracking server


def test_unreachable_tracking_server_fails_before_any_work(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A password inline in MLFLOW_TRACKING_URI moves to its own variable: the error names
    the server (not a 'Name or service not known' of user:password@ as a host) and no secret."""
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:s3cret@127.0.0.1:{port}")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(store.TrackingError) as exc:
        store.connect(store.resolve_uri(load_config(TINY)))
    message = str(exc.value)
    assert f"http://127.0.0.1:{port} is unreachable" in message and "s3cret" not in message
    assert "Name or service not known" not in message
    assert not shards_root().exists()


def test_tracking_server_away_mid_run_then_back(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """Training carries on while the server is down; buffered metrics arrive once it is back."""
    cfg = load_config(
        TINY,
        [
            # Long enough to outlast the server's restart (10-30 s on 2 cores) with margin:
            # at 1,500 steps the run once ended while the server was still down. 100
            # checkpoints, all kept, so those written while it was down can be found.
            "train.max_steps=4000",
            "train.checkpoint_every_steps=40",
            "train.log_every_steps=5",
            "train.val_every_steps=500",
            "train.keep_checkpoints=100",
            "train.max_restarts=0",
        ],
    )
    client = MlflowClient(mlflow_server.uri)
    run_id = client.create_run(client.create_experiment("away")).info.run_id
    spec = RunSpec(
        config=cfg,
        shards_dir=str(make_shard_set(tmp_path / "shards", cfg, n=600)),
        run_dir=str(tmp_path / "run"),
        train_key="k",
        tracking=TrackingTarget(uri=mlflow_server.uri, run_id=run_id),
    )
    window: dict[str, float] = {}

    def bounce() -> None:
        window["down"] = time.time()
        mlflow_server.stop()
        mlflow_server.start()  # ~10-30 s on 2 cores: many checkpoints happen meanwhile
        window["up"] = time.time()

    ckpts = tmp_path / "run" / "checkpoints"
    watcher = _when(ckpts / "ckpt-00000040.json", bounce)
    launch(spec)
    watcher.join(timeout=120)
    result = json.loads(spec.result_path.read_text())
    assert result["step"] == 4000 and result["metrics_flushed"] is True
    during = [
        p
        for p in ckpts.glob("ckpt-*.json")
        if window["down"] < p.stat().st_mtime < window.get("up", float("inf"))
    ]
    assert during, "no checkpoint was written while the server was down"
    steps = [
        m.step for m in MlflowClient(mlflow_server.uri).get_metric_history(run_id, "train/loss")
    ]
    assert steps == list(range(5, 4001, 5))  # nothing lost, nothing twice


def test_tracking_server_gone_at_the_end_keeps_everything(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    cfg = _long_tiny(200)
    client = MlflowClient(mlflow_server.uri)
    run_id = client.create_run(client.create_experiment("gone")).info.run_id
    spec = RunSpec(
        config=cfg,
        shards_dir=str(make_shard_set(tmp_path / "shards", cfg, n=600)),
        run_dir=str(tmp_path / "run"),
        train_key="k",
        tracking=TrackingTarget(uri=mlflow_server.uri, run_id=run_id),
    )
    _when(tmp_path / "run" / "checkpoints" / "ckpt-00000025.json", mlflow_server.stop)
    launch(spec)  # training itself succeeds
    result = json.loads(spec.result_path.read_text())
    assert result["step"] == 200 and result["metrics_flushed"] is False
    assert checkpoint.list_checkpoints(spec.checkpoint_dir)[0][0] == 200
    with pytest.raises(store.TrackingError, match="could not reach MLflow") as exc:
        store.log_pending(
            mlflow_server.uri,
            run_id,
            result["pending_metrics"],
            where=spec.result_path,
            delays_s=(0.2,),
        )
    assert str(spec.result_path) in str(exc.value)
    mlflow_server.start()
    store.log_pending(mlflow_server.uri, run_id, result["pending_metrics"], where=spec.result_path)
    steps = [
        m.step for m in MlflowClient(mlflow_server.uri).get_metric_history(run_id, "train/loss")
    ]
    assert steps == list(range(5, 201, 5))


# --------------------------------------------------------------------------- killed mid-write


def _run_python(code: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).parents[2],
    )


def test_killed_while_writing_shards_leaves_nothing_visible(home: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src = tmp_path / "imgs"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(1500):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(
                src / cls / f"{i}.png"
            )
    overrides = [
        "data.source=folder",
        f"data.path={src}",
        "data.shard_size=100",
        "data.max_samples=null",
        "compute.dask_workers=2",
        "data.parallel=dask",  # a cluster even where this process alone would be quicker
    ]
    env = {**os.environ, "GENPAR_HOME": str(home)}
    proc = _run_python(
        f"""
        from genpar_models.config import load_config
        from tasks.preprocess import preprocess
        preprocess.fn(load_config({str(TINY)!r}, {overrides!r}))
        """,
        env,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards_root().glob(f"{STAGING_PREFIX}*/*.npy"))) < 4:
        assert proc.poll() is None, "preprocessing ended before it could be killed"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # flow, Dask scheduler and workers: a power cut
    proc.wait()
    committed = [p for p in shards_root().iterdir() if not p.name.startswith(STAGING_PREFIX)]
    assert committed == []  # readers only ever see committed sets: there is none
    final = preprocess.fn(load_config(TINY, overrides))  # the next run completes
    assert json.loads((Path(final) / "manifest.json").read_text())["splits"]
    assert not list(shards_root().glob(f"{STAGING_PREFIX}*"))  # the dead staging dir is gone


def test_killed_while_writing_checkpoints_never_exposes_a_partial_one(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = f"""
        import torch
        from pathlib import Path
        from genpar_models.train import checkpoint
        from genpar_models.config import load_config
        from genpar_models.models.export import build_model
        cfg = load_config({str(TINY)!r}, ["model.base_channels=256", "model.latent_dim=64"])
        model = build_model(cfg.model, (1, 8, 8))
        opt = torch.optim.Adam(model.parameters())
        meta = {{"model_spec": model.model_spec(), "train_key": "k"}}
        step = max([s for s, _ in checkpoint.list_checkpoints(Path({str(tmp_path)!r}))] or [0])
        while True:
            step += 1
            checkpoint.save_checkpoint(Path({str(tmp_path)!r}), step=step, modules={{"m": model}},
                                       optimizers={{"m": opt}}, meta=meta, keep=3)
        """
    rng = random.Random(0)
    for _ in range(6):
        before = {p.name for p in tmp_path.glob("ckpt-*.json")}
        proc = _run_python(code, env)
        deadline = time.time() + 120
        while (
            time.time() < deadline and not {p.name for p in tmp_path.glob("ckpt-*.json")} - before
        ):
            assert proc.poll() is None, "the checkpoint writer died on its own"
            time.sleep(0.01)
        time.sleep(rng.random() * 0.3)  # then kill at a random point of some later write
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for _, path in checkpoint.list_checkpoints(tmp_path):
            if path.with_suffix(".json").exists():
                checkpoint.read_verified(path)  # every complete-looking checkpoint is whole
    assert checkpoint.list_checkpoints(tmp_path), "no checkpoint was ever written"


# --------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_preprocessing(small_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENPAR_HOME", str(small_disk / "home"))
    cfg = load_config(
        TINY,
        [
            "data.source=mnist5k",
            "data.image_size=28",
            "data.max_samples=null",
            "data.shard_size=500",
            "compute.dask_workers=2",
            "data.parallel=dask",  # the error comes back from a worker
        ],
    )
    with pytest.raises(StorageError) as exc:  # 5,000 x 784 bytes of shards cannot fit in 3 MB
        preprocess.fn(cfg)
    assert "No space left on device" in str(exc.value) and ".npy" in str(exc.value)
    assert list(shards_root().iterdir()) == []  # staging removed, nothing committed


def test_disk_full_while_checkpointing(
    small_disk: Path, tmp_path: Path, tiny: PipelineConfig
) -> None:
    cfg = load_config(
        TINY,
        [
            "model.base_channels=96",
            "train.max_steps=40",
            "train.checkpoint_every_steps=10",
            "train.keep_checkpoints=5",
            "train.max_restarts=0",
        ],
    )
    spec = RunSpec(
        config=cfg,
        shards_dir=str(make_shard_set(tmp_path / "shards", cfg)),
        run_dir=str(small_disk / "run"),
        train_key="k",
    )
    with pytest.raises(TrainingFailed) as exc:
        launch(spec)
    assert "No space left on device" in str(exc.value) and "ckpt-" in str(exc.value)
    listed = checkpoint.list_checkpoints(spec.checkpoint_dir)
    assert listed, "the checkpoints that fitted are kept"
    complete = [p for _, p in listed if p.with_suffix(".json").exists()]
    for path in complete:
        checkpoint.read_verified(path)


# --------------------------------------------------------------------------- concurrency


def test_two_pipelines_at_once_do_not_corrupt_each_other(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    genpar = str(Path(sys.executable).with_name("genpar"))
    procs = []
    for i in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env.update(
            GENPAR_HOME=str(home),
            PREFECT_HOME=str(tmp_path / f"prefect{i}"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        procs.append(
            subprocess.Popen(
                [genpar, "run", str(TINY), "--set", "compute.cpu_procs=1"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    committed = [p for p in (home / "shards").iterdir() if not p.name.startswith("_")]
    assert len(committed) == 1  # one shard set; the slower writer adopted the winner's
    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        model_dir = Path(r.data.tags["genpar.run_dir"]) / "model"
        load_exported(model_dir)  # each run's own model, intact


def _blocked_store(tmp_path: Path, mlflow_template: Path) -> tuple[MlflowClient, str, Path]:
    """A run whose (local) artifact store cannot be written: its directory's parent is a file.
    Removing `blocker` brings the store back."""
    (tmp_path / "mlflow.db").write_bytes(mlflow_template.read_bytes())
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    blocker = tmp_path / "store"
    blocker.write_text("not a directory")
    exp = client.create_experiment("uploads", artifact_location=f"file://{blocker}/artifacts")
    run_id = client.create_run(exp).info.run_id
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "report.json").write_text("{}")
    return client, run_id, blocker


def test_an_upload_waits_for_the_artifact_store_to_come_back(
    tmp_path: Path, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import uploads

    client, run_id, blocker = _blocked_store(tmp_path, mlflow_template)
    monkeypatch.setenv(uploads.ARTIFACT_RETRY_ENV, "30")
    threading.Timer(2.0, blocker.unlink).start()  # the store is back after 2 s
    t0 = time.monotonic()
    uploads.upload(client, run_id, tmp_path / "files", "eval")
    assert 2.0 <= time.monotonic() - t0 < 20
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/report.json"]


def test_an_artifact_store_still_away_fails_in_the_budget_naming_it(
    tmp_path: Path, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks import uploads

    client, run_id, _ = _blocked_store(tmp_path, mlflow_template)
    monkeypatch.setenv(uploads.ARTIFACT_RETRY_ENV, "3")
    monkeypatch.setenv(uploads.ARTIFACT_STORE_ENV, "s3://team-bucket at https://s3.internal")
    t0 = time.monotonic()
    with pytest.raises(uploads.ArtifactStoreError) as raised:
        uploads.upload(client, run_id, tmp_path / "files" / "report.json", "eval", kept="/runs/x")
    assert time.monotonic() - t0 < 10  # the budget, not MLflow's own retry schedule
    message = str(raised.value)
    assert message.startswith("the artifact store (s3://team-bucket at https://s3.internal, behind")
    assert "did not take eval/report.json in 3 s" in message and f"MLflow run {run_id}" in message
    assert "stay in /runs/x" in message and uploads.ARTIFACT_RETRY_ENV in message
    # a file that is not there is the caller's mistake: no retries, no store blamed
    with pytest.raises(FileNotFoundError):
        uploads.upload(client, run_id, tmp_path / "missing.json", "eval")
    monkeypatch.setenv(uploads.ARTIFACT_RETRY_ENV, "soon")
    with pytest.raises(Exception, match="GENPAR_ARTIFACT_RETRY_S='soon' is not a number"):
        uploads.upload(client, run_id, tmp_path / "files" / "report.json")
