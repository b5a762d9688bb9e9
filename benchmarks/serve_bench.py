"""Serving: the registered model behind `mlflow models serve` against in-process generation.

The suite's mnist-vae model is logged and registered through the pipeline's own code
(tasks/served_model.py) in a SQLite store of the benchmark's own, then served on 127.0.0.1.

    logging        seconds `log_served_model` adds to a run (warm process, median), target <= 1 s
    n = 1, 16, 256 samples/s of one request (HTTP + JSON both ways) vs the same sampling in
                   this process (`sample_images`, one thread, the chunks the server draws);
                   target >= 0.5x at n = 256 in the default (JSON) format; p50 latency at n = 1
    load           8 concurrent clients for 60 s (--quick: 3 s), each request n = 16: failed
                   requests (target: none), p50/p95 latency, throughput, and the server's RSS
                   (with its children) after the run vs after warm-up, target <= 1.10x
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from mlflow import MlflowClient

from benchmarks.common import Result, interleaved, median
from genpar_models.infer.serving import sample_images
from genpar_models.models.export import load_model
from genpar_models.util.threads import torch_threads
from infra import model_server
from infra.processes import HOST

SECTION = "serving"
CHUNK = 250  # the served model's chunk size (`genpar generate`'s default)
CLIENTS = 8


def _register(uri: str, model_dir: Path) -> list[float]:
    """Register the model as `bench@champion`; the seconds each logging took (cold first)."""
    from tasks import registry, served_model

    client = MlflowClient(uri)
    exp = client.create_experiment("serve-bench")
    seconds = []
    for _ in range(4):  # the first pays the imports; a run's register task finds them loaded
        run_id = client.create_run(exp).info.run_id
        client.log_artifacts(run_id, str(model_dir), registry.MODEL_ARTIFACT)
        t0 = time.perf_counter()
        model_uri = served_model.log_served_model(
            client, run_id, model_dir, binarize="none", max_samples=4096
        )
        seconds.append(time.perf_counter() - t0)
    version = registry.register(client, run_id, name="bench", tags={}, model_uri=model_uri)
    client.set_registered_model_alias("bench", registry.ALIAS, version)
    return seconds


def _served_rate(http: httpx.Client, url: str, n: int) -> float:
    t0 = time.perf_counter()
    r = http.post(url, json={"dataframe_records": [{"n": n, "seed": 0}]})
    wall = time.perf_counter() - t0
    r.raise_for_status()
    assert len(r.json()["predictions"][0]["samples"]) == n
    return n / wall


def _local_rate(model, n: int) -> float:
    with torch_threads(1):
        t0 = time.perf_counter()
        sample_images(model, n, 0, CHUNK)
    return n / (time.perf_counter() - t0)


def _rss(pid: int) -> float:
    """Resident memory of the server and its children (uvicorn), MiB."""
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def _load(url: str, seconds: float) -> tuple[list[float], int]:
    """CLIENTS threads posting n = 16 back to back for `seconds`; (latencies, failures)."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(seed: int) -> None:
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    ok = http.post(url, json={"inputs": [{"n": 16, "seed": seed}]}).is_success
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    failures[0] += not ok

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)  # bounded: a stuck request cannot hang the suite
    return latencies, failures[0]


def run(model_dir: str | Path, quick: bool) -> list[Result]:
    model_dir = Path(model_dir)
    model, _ = load_model(model_dir)
    with tempfile.TemporaryDirectory(prefix="genpar-serve-bench-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        log_s = _register(uri, model_dir)
        port, log = model_server.free_port(), Path(tmp) / "serve.log"
        proc = model_server.start("models:/bench@champion", uri, port, log)
        try:
            base = f"http://{HOST}:{port}"
            model_server.wait_serving(proc, base, log)
            return _measure(model, f"{base}/invocations", proc.pid, log_s, quick)
        finally:
            model_server.stop(proc)


def _measure(model, url: str, pid: int, log_s: list[float], quick: bool) -> list[Result]:
    warm = median(log_s[1:])
    results = [
        Result(SECTION, "logging the pyfunc model (warm)", warm, "s", baseline="1 s budget",
               ratio=warm / 1.0, target=1.0, target_kind="max",
               note=f"cold first: {log_s[0]:.2f} s"),
    ]  # fmt: skip
    repeats = 2 if quick else 7
    with httpx.Client(timeout=120) as http:
        for _ in range(3):  # warm-up: the first requests build the server's caches
            _served_rate(http, url, 16)
        for n in (1, 16, 256):
            sides = {
                "served": lambda n=n: _served_rate(http, url, n),
                "local": lambda n=n: _local_rate(model, n),
            }
            runs = interleaved(sides, repeats)
            served, local = median(runs["served"]), median(runs["local"])
            results.append(
                Result(SECTION, f"served n={n} (JSON)", served, "samples/s",
                       baseline="in-process batched, 1 thread", ratio=served / local,
                       target=0.5 if n == 256 else None, samples=runs["served"])
            )  # fmt: skip
            if n == 1:
                p50 = median([1000.0 / r for r in runs["served"]])
                results.append(Result(SECTION, "p50 latency n=1", p50, "ms"))
        rss_warm = _rss(pid)
    seconds = 3.0 if quick else 60.0
    t0 = time.perf_counter()
    latencies, failed = _load(url, seconds)
    wall = time.perf_counter() - t0
    rss_after = _rss(pid)
    ms, ok = np.array(latencies) * 1000.0, len(latencies) - failed
    note = f"{CLIENTS} clients, {seconds:.0f} s, n=16"
    results += [
        Result(SECTION, "load: requests answered 200", 100.0 * ok / len(latencies), "%",
               baseline="every request", ratio=ok / len(latencies), target=1.0,
               note=f"{failed} failed of {len(latencies)}"),
        Result(SECTION, "load: p50 latency", float(np.percentile(ms, 50)), "ms", note=note),
        Result(SECTION, "load: p95 latency", float(np.percentile(ms, 95)), "ms", note=note),
        Result(SECTION, "load: throughput", len(latencies) / wall, "requests/s", note=note),
        Result(SECTION, "load: server RSS after", rss_after, "MiB", baseline="after warm-up",
               ratio=rss_after / rss_warm, target=1.10, target_kind="max",
               note=f"{rss_warm:.0f} MiB after warm-up"),
    ]  # fmt: skip
    return results
