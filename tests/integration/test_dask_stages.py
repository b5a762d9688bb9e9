"""The Dask stages on real LocalClusters: preprocessing a folder with bad files, generation
that gives bit-identical samples whatever the number of workers, and one cluster per flow run
(shared by its stages, its concurrent tasks and its subflows; closed however the run ends)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from prefect import flow

from genpar_models.config import PipelineConfig
from genpar_models.data.shards import open_shard_set
from genpar_models.errors import DataError
from genpar_models.train.dist import DistContext
from genpar_models.train.loop import train
from genpar_models.train.runspec import RunSpec
from genpar_models.util.paths import shards_root
from tasks.cluster import dask_client, flow_cluster
from tasks.generate import generate_to_dir
from tasks.preprocess import preprocess
from tests.helpers import DaskWorkerWatch, make_shard_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _image_folder(root: Path, per_class: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            px = rng.integers(0, 256, size=(12 + i % 5, 10, 3), dtype=np.uint8)  # mixed sizes
            Image.fromarray(px).save(root / cls / f"{i:03d}.png")
    (root / "cats" / "broken.png").write_bytes(b"this is not a png")
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    (root / "README.txt").write_text("not an image, ignored")
    return root


def _folder_cfg(
    tiny: PipelineConfig, path: Path, on_bad: str, parallel: str = "dask"
) -> PipelineConfig:
    data = tiny.data.model_copy(
        update={
            "source": "folder",
            "path": str(path),
            "on_bad": on_bad,
            "max_samples": None,
            "shard_size": 32,
            "parallel": parallel,
        }
    )
    return tiny.model_copy(update={"data": data})


def test_bad_files_fail_listing_them_and_leave_nothing(
    home: Path, tmp_path: Path, tiny: PipelineConfig
) -> None:
    cfg = _folder_cfg(tiny, _image_folder(tmp_path / "imgs"), "fail")
    with pytest.raises(DataError) as exc:
        preprocess.fn(cfg)
    message = str(exc.value)
    assert "2 bad sample(s)" in message
    assert "cats/broken.png" in message and "dogs/empty.jpg" in message
    assert "data.on_bad=skip" in message
    assert list(shards_root().iterdir()) == []  # no staging dir, no partial shard set


def test_bad_files_skipped_and_counted_then_reused(
    home: Path, tmp_path: Path, tiny: PipelineConfig
) -> None:
    cfg = _folder_cfg(tiny, _image_folder(tmp_path / "imgs"), "skip")
    first = preprocess.fn(cfg)
    shardset = open_shard_set(first)
    manifest = shardset.manifest
    assert manifest.total == 80 and manifest.skipped["count"] == 2
    assert {s["id"] for s in manifest.skipped["samples"]} == {"cats/broken.png", "dogs/empty.jpg"}
    assert manifest.class_names == ["cats", "dogs"] and manifest.image_shape == (1, 8, 8)
    images, labels = shardset.load("train")
    assert images.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}
    stamp = (Path(first) / "manifest.json").stat().st_mtime_ns
    assert preprocess.fn(cfg) == first  # unchanged input: the same shard set, not rebuilt
    assert (Path(first) / "manifest.json").stat().st_mtime_ns == stamp
    (tmp_path / "imgs" / "cats" / "000.png").touch()  # a changed file means new shards
    assert preprocess.fn(cfg) != first


def test_shards_are_the_same_decoded_here_or_on_dask(
    home: Path, tmp_path: Path, tiny: PipelineConfig
) -> None:
    """auto decodes this small folder in this process; its shards are those of a cluster."""
    from tasks.preprocess import build_shards

    folder = _image_folder(tmp_path / "imgs")
    digests = {}
    for where in ("auto", "dask"):
        built = build_shards(_folder_cfg(tiny, folder, "skip", where), rebuild=True)
        digests[where] = {
            str(p.relative_to(built)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(built.rglob("*.npy"))
        }
    assert len(digests["auto"]) >= 3 and digests["auto"] == digests["dask"]


def _digest_dir(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.glob("samples-*.npy"))
    }


def test_one_and_two_workers_give_identical_samples(tmp_path: Path, tiny: PipelineConfig) -> None:
    """The same files from 1 or 2 Dask workers, in this process (local), and from auto, which
    samples tiny's 64 in this process: a cluster's start-up would cost more than it saves."""
    shards_dir = make_shard_set(tmp_path / "shards", tiny)
    cfg = tiny.model_copy(update={"train": tiny.train.model_copy(update={"max_steps": 10})})
    spec = RunSpec(
        config=cfg, shards_dir=str(shards_dir), run_dir=str(tmp_path / "run"), train_key="k"
    )
    train(spec, DistContext(0, 0, 1, torch.device("cpu")))
    results, startup = {}, {}
    for where, workers in (("dask", 1), ("dask", 2), ("local", None), ("auto", None)):
        compute = cfg.compute.model_copy(update={"dask_workers": workers})
        generate = cfg.generate.model_copy(update={"parallel": where})
        c = cfg.model_copy(update={"compute": compute, "generate": generate})
        key = f"{where}{workers or ''}"
        metrics = generate_to_dir(c, str(spec.model_dir), tmp_path / f"gen{key}")
        assert metrics["gen/num_samples"] == cfg.generate.num_samples
        results[key], startup[key] = _digest_dir(tmp_path / f"gen{key}"), metrics["gen/startup_s"]
    results[1], results[2] = results["dask1"], results["dask2"]
    assert len(results[1]) == 4  # 64 samples in chunks of 16
    assert results[1] == results[2] == results["local"] == results["auto"]
    assert startup["dask2"] > 0 and startup["local"] == startup["auto"] == 0  # no cluster
    meta = json.loads((tmp_path / "gendask2" / "samples.json").read_text())
    assert [c["index"] for c in meta["chunks"]] == [0, 1, 2, 3]
    first = np.load(tmp_path / "gendask1" / "samples-00000.npy")
    assert first.shape == (16, 1, 8, 8) and first.std() > 0  # real, varied images
    assert (tmp_path / "gendask1" / "grid.png").stat().st_size > 0


def test_local_cluster_listens_on_loopback_only(tiny: PipelineConfig) -> None:
    import os

    import psutil

    from tasks.cluster import dask_client

    with dask_client(tiny.compute) as client:
        assert client.scheduler_info()["address"].startswith("tcp://127.0.0.1:")
        me = psutil.Process(os.getpid())
        listening = {
            c.laddr.ip
            for p in [me, *me.children(recursive=True)]
            for c in p.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        }
    assert listening and listening <= {"127.0.0.1"}


def test_local_cluster_keeps_malloc_trim_out_of_workers_and_parent(
    tiny: PipelineConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dask's nanny writes MALLOC_TRIM_THRESHOLD_ and OMP_NUM_THREADS=1 into the parent's
    os.environ; left there, every torchrun rank started after a Dask stage inherited them
    (1.6x slower tensor allocation, one OpenMP thread). Workers still get one thread each."""
    import os

    from tasks.cluster import dask_client

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # a user's own setting must survive
    before = dict(os.environ)

    def worker_env() -> tuple[str | None, str | None]:
        return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")

    with dask_client(tiny.compute) as client:
        during = dict(os.environ)
        seen = set(client.run(worker_env).values())
    assert seen == {(None, "7")}  # no trim threshold; the user's thread setting passed on
    assert during == before
    assert dict(os.environ) == before

    monkeypatch.delenv("OMP_NUM_THREADS")
    with dask_client(tiny.compute) as client:
        seen = set(client.run(worker_env).values())
        assert "OMP_NUM_THREADS" not in os.environ
    assert seen == {(None, "1")}  # Dask's one-thread default reaches the workers


def test_local_cluster_workers_run_without_the_statistical_profiler(tiny: PipelineConfig) -> None:
    """Dask's profiler takes the GIL on each worker's event loop every 10 ms (9% of the
    workers' CPU in generation, tasks/cluster.py); genpar's workers run without it, also after
    a restart, and this process's Dask config keeps the user's setting."""
    import dask

    from tasks.cluster import dask_client

    def callbacks(dask_worker) -> list[str]:  # noqa: ANN001 - Dask passes its Worker
        return sorted(dask_worker.periodic_callbacks)

    with dask_client(tiny.compute) as client:
        seen = client.run(callbacks)
        client.restart()
        after = client.run(callbacks)
    assert seen and after
    for names in [*seen.values(), *after.values()]:
        assert "heartbeat" in names and not [n for n in names if n.startswith("profile")]
    assert dask.config.get("distributed.worker.profile.enabled") is True


def _on_two_workers(cfg: PipelineConfig) -> PipelineConfig:
    return cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"dask_workers": 2})})


@flow
def _inner(config: PipelineConfig) -> dict[str, float]:
    with flow_cluster() as dask:  # inside the outer flow's scope: its cluster
        preprocess(config)
        return dask.metrics()


@flow
def _stages(configs: list[PipelineConfig], failing: PipelineConfig | None = None) -> dict:
    """Two preprocessing tasks at once (threads of this process), a subflow, then one that
    may fail: all on the flow run's one cluster, closed when the body ends."""
    with flow_cluster() as dask:
        futures = [preprocess.submit(c) for c in configs[:2]]
        [f.result() for f in futures]
        inner = _inner(configs[2])
        if failing is not None:
            preprocess(failing)
        return {"outer": dask.metrics(), "inner": inner}


def test_a_flow_runs_its_dask_stages_on_one_cluster_closed_also_when_one_raises(
    prefect_server, home: Path, tmp_path: Path, tiny: PipelineConfig
) -> None:
    folders = [_image_folder(tmp_path / f"imgs{i}", per_class=8) for i in range(4)]
    configs = [_on_two_workers(_folder_cfg(tiny, f, "skip")) for f in folders]
    with DaskWorkerWatch() as watch:
        got = _stages(configs[:3])
    assert watch.clusters(workers=2) == 1  # seen from outside: two worker processes in all
    assert got["outer"]["dask/clusters_started"] == 1 and got["outer"]["dask/startup_s"] > 0
    assert got["inner"]["dask/clusters_started"] == 0  # the subflow reused its parent's
    assert DaskWorkerWatch.alive() == set()
    assert len(_shard_dirs()) == 3

    failing = _on_two_workers(_folder_cfg(tiny, folders[3], "fail"))
    with DaskWorkerWatch() as watch, pytest.raises(DataError, match="2 bad sample"):
        _stages(configs[:3], failing)  # the three sets exist: only the failing stage starts one
    assert watch.clusters(workers=2) == 1
    assert DaskWorkerWatch.alive() == set()  # closed by the failing flow too


def test_a_flow_scope_closes_its_cluster_on_keyboard_interrupt(tiny: PipelineConfig) -> None:
    compute = _on_two_workers(tiny).compute
    with DaskWorkerWatch() as watch, pytest.raises(KeyboardInterrupt):  # noqa: SIM117
        with flow_cluster(), dask_client(compute):  # the scope sees the interrupt, not raises
            raise KeyboardInterrupt
    assert watch.clusters(workers=2) == 1 and DaskWorkerWatch.alive() == set()


def _shard_dirs() -> list[Path]:
    return [p for p in shards_root().iterdir() if not p.name.startswith("_")]


def test_dask_workers_reuse_freed_activation_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Dask worker runs each chunk in a thread of its executor, whose allocations glibc
    serves from a per-thread arena of 64 MiB heaps, unmapped when they empty whatever the trim
    threshold: without genpar's one arena, mnist-vae's sampling faulted in 3,200-89,000 pages
    per chunk of 1,000 samples, chunk after chunk (genpar_models/util/malloc.py); with it, 2.
    The real generation path on one worker: after a first stage, a second faults in (almost)
    nothing."""
    import resource

    from distributed import Client

    from genpar_models.config import load_config
    from genpar_models.models.export import build_model, export_model
    from genpar_models.util import malloc
    from tasks.cluster import local_cluster

    # as in a fresh genpar process: an earlier test's raw LocalCluster leaves its nanny's
    # MALLOC_TRIM_THRESHOLD_ in this process, which tune() would take for the user's own
    for key in (*malloc._ENV, "GENPAR_MALLOC_TUNING"):
        monkeypatch.setenv(key, "")  # undone after the test, whatever tune() writes
        monkeypatch.delenv(key)
    monkeypatch.setattr(malloc, "_done", False)
    if malloc._glibc() is None:
        pytest.skip("needs glibc (mallopt)")
    assert malloc.tune()
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "mnist-vae.yaml", [])
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 28, 28))
    export_model(tmp_path / "m", module=model, spec=model.model_spec(), meta={})

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    gen = cfg.generate.model_copy(update={"num_samples": 4000, "chunk_size": 1000})
    with local_cluster(1) as cluster, Client(cluster) as client:
        compute = cfg.compute.model_copy(update={"dask_address": cluster.scheduler_address})
        c = cfg.model_copy(update={"generate": gen, "compute": compute})
        generate_to_dir(c, str(tmp_path / "m"), tmp_path / "first")  # loads, warms up
        [before] = client.run(faults).values()
        generate_to_dir(c, str(tmp_path / "m"), tmp_path / "second")
        [after] = client.run(faults).values()
    per_chunk = (after - before) / 4
    assert per_chunk < 1_000, f"{per_chunk:.0f} page faults per chunk of 1,000 samples"
