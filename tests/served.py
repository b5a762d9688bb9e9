"""Helpers of the served-model tests: a registered version without training, and a pickle scan.

The cheapest registered model there is: the tiny VAE and DCGAN genpar 0.1 exported
(tests/fixtures/v1) logged on a fresh run and registered through the same code the pipeline's
register task runs (log the pyfunc model, then register it), in a real SQLite store.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from mlflow import MlflowClient

from tasks import registry, served_model
from tests.conftest import REPO

V1 = REPO / "tests" / "fixtures" / "v1"
PICKLE_SUFFIXES = (".pkl", ".pickle")


def register_v1(client: MlflowClient, kind: str, name: str, *, champion: bool = True) -> str:
    """Register genpar 0.1's tiny `kind` ("vae" or "dcgan") as a version of `name`, with a
    scorecard metric on its run; `champion` moves the alias to it. Returns the version."""
    exp = client.get_experiment_by_name("served") or client.get_experiment(
        client.create_experiment("served")
    )
    run_id = client.create_run(exp.experiment_id, run_name=f"v1-{kind}").info.run_id
    client.log_artifacts(run_id, str(V1 / f"model-{kind}"), registry.MODEL_ARTIFACT)
    client.log_artifact(run_id, str(V1 / f"model-{kind}" / "config.yaml"))  # as runs have
    client.log_metric(run_id, "eval/fid", 12.5)
    version = registry.register_once(
        client,
        run_id,
        name=name,
        tags={"eval/fid": "12.5"},
        log_model=lambda: served_model.log_served_model(
            client, run_id, V1 / f"model-{kind}", binarize="none", max_samples=4096
        ),
    )
    client.set_terminated(run_id)
    if champion:
        client.set_registered_model_alias(name, registry.ALIAS, version)
    return version


def _is_safetensors(data: bytes) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then that much JSON."""
    if len(data) < 8:
        return False
    size = int.from_bytes(data[:8], "little")
    try:
        return isinstance(json.loads(data[8 : 8 + size]), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def pickles_in(folder: Path) -> list[str]:
    """Every file under `folder` that is or holds a pickle: by name, by the protocol opcode
    it starts with (b"\\x80" then protocol 2-5), or as a zip (torch.save) with one inside."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix in PICKLE_SUFFIXES:
            found.append(f"{path}: pickle file name")
        elif data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            if not _is_safetensors(data):
                found.append(f"{path}: starts with a pickle protocol opcode")
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                inner = [n for n in z.namelist() if n.endswith(PICKLE_SUFFIXES)]
            if inner:
                found.append(f"{path}: a zip holding {inner}")
    return found
