"""Test helpers shared by unit and integration tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genpar_models.config import SHARED_FIELDS, ModelConfig, PipelineConfig, TrainConfig
from genpar_models.data import shards
from genpar_models.data.manifest import build_manifest
from genpar_models.models import get_family
from genpar_models.models.family import Steps
from genpar_models.train.dist import DistContext
from genpar_models.train.runspec import RunSpec
from genpar_models.train.tools import step_tools
from genpar_models.util import atomic
from tasks.launcher import launch_training, plan_processes


def make_shard_set(
    directory: Path,
    cfg: PipelineConfig,
    n: int = 300,
    seed: int = 0,
    *,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> Path:
    """A committed shard set of n random images shaped like cfg.data (for library tests), or
    of the given uint8 images (N, C, S, S) and labels."""
    rng = np.random.default_rng(seed)
    c, s = cfg.data.channels, cfg.data.image_size
    if images is None:
        images = rng.integers(0, 256, size=(n, c, s, s), dtype=np.uint8)
    n = len(images)
    if labels is None:
        labels = rng.integers(0, 10, size=n)
    ids = [f"synthetic[{i}]" for i in range(n)]
    half = n // 2
    with atomic.staged_directory(directory) as staging:
        parts = [
            shards.write_partition_shards(
                index=index,
                ids=ids[lo:hi],
                images=images[lo:hi],
                labels=labels[lo:hi],
                out_dir=staging,
                val_fraction=cfg.data.val_fraction,
                test_fraction=cfg.data.test_fraction,
            )
            for index, (lo, hi) in enumerate([(0, half), (half, n)])
        ]
        manifest = build_manifest(
            key="synthetic",
            source={"kind": "synthetic", "uri": "memory", "fingerprint": "0" * 64},
            data_cfg=cfg.data,
            class_names=[],
            parts=parts,
            bad=[],
        )
        shards.write_manifest(staging, manifest)
    return directory


CPU = DistContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def as_family(model: ModelConfig, name: str) -> ModelConfig:
    """`model` for family `name`: the shared fields (size) kept, the other family's options
    (tiny's VAE likelihood) back to their defaults, which the new family refuses otherwise."""
    if model.name == name:
        return model
    shared = {k: getattr(model, k) for k in SHARED_FIELDS}
    return ModelConfig(**{**shared, "name": name})


def family_steps(model: torch.nn.Module, cfg: TrainConfig, ctx: DistContext = CPU) -> Steps:
    """The training steps of `model`'s family, with the trainer's tools for `ctx`."""
    family = get_family(model.model_spec()["name"])
    return family.make_steps(model, cfg, step_tools(ctx, cfg))


def launch(
    spec: RunSpec, on_line: Callable[[str], None] = lambda _: None, cuda_devices: int = 0
) -> None:
    """Run a real torchrun job on `spec` (logs under <run_dir>/torchrun), as the task does."""
    plan = plan_processes(spec.config.compute, cuda_devices=cuda_devices)
    launch_training(spec, plan, log_dir=Path(spec.run_dir) / "torchrun", on_line=on_line)


def python_c(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -c CODE` in a fresh interpreter (what a fresh genpar process imports and does),
    its output captured as text; fails on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a user with genpar home `home` (created) and no Prefect/MLflow
    settings inherited from the test process."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        GENPAR_HOME=str(home),
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def ddp_gan_forward(rank: int, world: int, init_file: str, norm: str, sn: bool, out: str) -> None:
    """One rank of a `torch.multiprocessing.spawn` job: a DCGAN's two networks, DDP-wrapped as
    training wraps them, run in training mode on this rank's share of one global batch; the
    outputs are saved per rank (tests compare them with one process on the whole batch)."""
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        outputs = gan_forward_on(rank, world, norm, sn)
        torch.save(outputs, f"{out}.{rank}")
    finally:
        tdist.destroy_process_group()


def ddp_rvae_buffers(rank: int, world: int, init_file: str, out: str) -> None:
    """One rank of a `torch.multiprocessing.spawn` job: the RVAE's steps wrapped as training
    wraps them, 3 steps on this rank's own batches; saves whether DDP broadcasts buffers and
    the buffers themselves (tests check they stay equal across ranks without the broadcast)."""
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # identical initial weights, as training seeds every rank
        model = get_family("rvae").build(
            ModelConfig(name="rvae", latent_dim=3, hidden_dim=8), (7, 2)
        )
        ctx = DistContext(rank=rank, local_rank=rank, world_size=world, device=torch.device("cpu"))
        steps = get_family("rvae").make_steps(model, TrainConfig(), step_tools(ctx, TrainConfig()))
        steps.wrap()
        gen = torch.Generator().manual_seed(10 + rank)  # each rank its own data and noise
        for _ in range(3):
            steps.step(torch.randn(4, 7, 2, generator=gen), gen)
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        torch.save({"broadcast": steps.ddp.broadcast_buffers, "buffers": buffers}, f"{out}.{rank}")
    finally:
        tdist.destroy_process_group()


def gan_forward_on(rank: int, world: int, norm: str, sn: bool) -> dict[str, torch.Tensor]:
    """G(z) and D(x) of this rank's share of a fixed global batch of 8 (training mode)."""
    from genpar_models.config import ModelConfig, TrainConfig
    from genpar_models.models.export import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(name="dcgan", latent_dim=4, base_channels=8, norm=norm, spectral_norm=sn)
    model = build_model(cfg, (1, 16, 16)).train()
    ctx = DistContext(rank=rank, local_rank=rank, world_size=world, device=torch.device("cpu"))
    tools = step_tools(ctx, TrainConfig())
    g, d = tools.wrap(model.generator), tools.wrap(model.discriminator)
    gen = torch.Generator().manual_seed(1)
    z, x = torch.randn(8, 4, generator=gen), torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1
    share = slice(rank * 8 // world, (rank + 1) * 8 // world)
    with torch.no_grad():
        return {"g": g(z[share]), "d": d(x[share])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 that a test can stop and start again."""

    def __init__(self, db: Path, template: Path, *, proxy_artifacts: bool = False) -> None:
        """`proxy_artifacts`: the server stores artifacts itself (`--artifacts-destination`,
        as the team stack does) instead of clients writing to `--default-artifact-root`."""
        self.db, self.port, self.proxy = db, free_port(), proxy_artifacts
        shutil.copy(template, db)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        mlflow = str(Path(sys.executable).with_name("mlflow"))
        self.proc = subprocess.Popen(
            [
                mlflow,
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.db}",
                "--artifacts-destination" if self.proxy else "--default-artifact-root",
                str(self.db.parent / "artifacts"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.uri + "/health", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError("mlflow server did not come up")

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # server, workers, job consumers
            self.proc.wait()
            self.proc = None


MODEL_DIR = Path(__file__).parent / "fixtures" / "v1" / "model-vae"  # a genpar 0.1 export


def small_mlflow_home(name: str) -> dict[str, str]:
    """A sweep parent and a trial (with a metric history, a model artifact, a file artifact),
    a finished run, a registered model with a files version and a logged-model version, and
    the champion alias, in the genpar home's embedded store ($GENPAR_HOME), experiment and
    registered model `name`; made through MLflow's client as genpar makes them."""
    from genpar_models.util.paths import default_tracking_uri
    from tasks import mlflow_store as store
    from tasks import registry, served_model

    uri = default_tracking_uri()
    client = store.connect(uri)
    exp = store.ensure_experiment(client, uri, name)
    parent = store.create_run(client, exp, name="sweep", tags={"genpar.sweep.role": "parent"})
    trial = store.create_run(client, exp, name="t000", tags={"mlflow.parentRunId": parent})
    store.log_params(client, trial, {"train.lr": 0.003, "data.binarize": "none"})
    for step, value in enumerate((3.0, 2.0, 1.5)):
        client.log_metric(trial, "train/loss", value, step=step * 10)
    client.log_artifacts(trial, str(MODEL_DIR), registry.MODEL_ARTIFACT)
    client.log_text(trial, "hello", "notes/readme.txt")
    store.finish(client, trial, "FINISHED")
    store.finish(client, parent, "KILLED")
    registry.ensure_registered_model(client, name, "genpar models of this pipeline")
    artifact_uri = client.get_run(trial).info.artifact_uri
    client.create_model_version(name, f"{artifact_uri}/model", run_id=trial, tags={"eval/fid": "9"})
    logged = served_model.log_served_model(
        client, trial, MODEL_DIR, binarize="none", max_samples=100
    )
    with served_model.global_tracking_uri(uri):
        client.create_model_version(
            name, logged, run_id=trial, model_id=logged.removeprefix("models:/")
        )
    client.set_registered_model_alias(name, registry.ALIAS, "2")
    return {"parent": parent, "trial": trial, "uri": uri}


class DaskWorkerWatch:
    """The Dask worker processes this process spawned while the `with` block ran, seen by
    polling psutil every 20 ms (LocalCluster workers are multiprocessing-spawned children;
    torchrun's ranks are not): `clusters(n)` is how many clusters of `n` workers that was, and
    `beside_training` whether a worker was ever alive together with a training rank."""

    def __init__(self) -> None:
        import threading

        self.pids: set[int] = set()
        self.before: set[int] = set()  # still exiting from an earlier test's cluster: not ours
        self.beside_training = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    @staticmethod
    def alive(kind: str = "spawn_main") -> set[int]:
        """Live descendants of this process whose command line holds `kind`."""
        import psutil

        found = set()
        for p in psutil.Process(os.getpid()).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if kind in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                    found.add(p.pid)
        return found

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            workers = self.alive() - self.before
            self.pids |= workers
            if workers and self.alive("genpar_models.train"):
                self.beside_training = True

    def clusters(self, workers: int) -> float:
        return len(self.pids) / workers

    def __enter__(self) -> DaskWorkerWatch:
        self.before = self.alive()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
