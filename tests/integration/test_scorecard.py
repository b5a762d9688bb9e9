"""The protocol guard on a real SQLite MLflow store: `genpar runs` refuses mixed protocols."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from genpar_models.eval.protocol import ProtocolMismatch, protocol_id
from tasks import mlflow_store as store
from tasks.listing import list_runs
from tests.helpers import clean_env

pytestmark = pytest.mark.integration

P1 = {"dataset": "d1", "extractor": "classifier", "extractor_fp": "f1", "real_samples": 180}
P2 = {**P1, "real_samples": 500, "extractor_fp": "f2"}


def _runs(uri: str, protocols: list[dict | None]) -> list[str]:
    client = store.connect(uri)
    exp = store.ensure_experiment(client, uri, "mixed")
    ids = []
    for i, protocol in enumerate(protocols):
        run_id = store.create_run(client, exp, name=f"r{i}", tags={})
        store.log_metrics(client, run_id, {"eval/fid": 10.0 + i, "train/loss": 1.0 - i / 10})
        if protocol is not None:
            store.set_tags(
                client,
                run_id,
                {
                    "genpar.protocol.quality": protocol_id(protocol),
                    "genpar.protocol.quality.json": json.dumps(protocol),
                },
            )
        ids.append(run_id)
    return ids


def test_runs_with_mixed_protocols_are_not_ranked(tmp_path: Path, mlflow_template: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(mlflow_template.read_bytes())
    uri = f"sqlite:///{db}"
    ids = _runs(uri, [P1, P1, P2, None])
    kw = {"uri": uri, "experiment": None, "desc": False, "metrics": None, "limit": 10}
    with pytest.raises(ProtocolMismatch) as err:
        list_runs(sort="eval/fid", **kw)
    message = str(err.value)
    assert "refusing to rank runs by eval/fid" in message
    assert "real_samples: 180 vs 500" in message and "--protocol" in message

    rows, columns = list_runs(sort="eval/fid", protocol=protocol_id(P1)[:6], **kw)
    assert [r["run"] for r in rows] == [ids[0][:12], ids[1][:12]]
    assert "protocol" in columns and rows[0]["protocol"] == protocol_id(P1)
    rows, _ = list_runs(sort="train/loss", **kw)  # a training metric needs no protocol
    assert len(rows) == 4
    rows, _ = list_runs(sort=None, **kw)  # newest first is not a ranking
    assert len(rows) == 4


@pytest.mark.slow
def test_genpar_runs_refuses_and_says_why(tmp_path: Path, mlflow_template: Path) -> None:
    home = tmp_path / "home"
    db = home / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(mlflow_template.read_bytes())
    _runs(f"sqlite:///{db}", [P1, P2])
    genpar = str(Path(sys.executable).with_name("genpar"))
    out = subprocess.run(
        [genpar, "runs", "--sort", "eval/fid"], env=clean_env(home), capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "refusing to rank runs by eval/fid" in out.stderr
    assert "extractor_fp: f1 vs f2" in out.stderr.replace("\n", " ")
    ok = subprocess.run(
        [genpar, "runs", "--sort", "eval/fid", "--protocol", protocol_id(P2)],
        env=clean_env(home),
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert protocol_id(P2) in ok.stdout and protocol_id(P1) not in ok.stdout


@pytest.mark.slow
def test_dask_blocks_give_the_local_features(tmp_path: Path, tiny) -> None:
    """Samples drawn and featurised on Dask workers equal those drawn here (same seeds)."""
    import numpy as np
    import torch

    from genpar_models.eval.samples import generate_features
    from genpar_models.eval.scorecard import prepare
    from genpar_models.models.export import build_model, export_model, load_model
    from genpar_models.util import seeding
    from tasks.evaluate import _generate_on_dask
    from tests.helpers import make_shard_set

    cfg = load_config_with(tiny, num_samples=600, extractor_steps=10)
    shards = make_shard_set(tmp_path / "shards", cfg, n=300)
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 8, 8))
    export_model(tmp_path / "m", module=model, spec=model.model_spec(), meta={})
    extractor, _ = prepare(shards, cfg.evaluate, root=tmp_path / "cache")
    on_dask = _generate_on_dask(cfg, str(tmp_path / "m"), str(extractor.directory))
    here = generate_features(
        load_model(tmp_path / "m")[0],
        extractor,
        600,
        seed=seeding.evaluation(cfg.evaluate.seed),
        batch_size=64,
        device="cpu",
    )
    assert on_dask.features.shape == (600, cfg.evaluate.feature_dim)
    np.testing.assert_allclose(on_dask.features, here.features, rtol=1e-4, atol=1e-4)


def load_config_with(tiny, **evaluate):
    compute = tiny.compute.model_copy(update={"dask_workers": 2})
    return tiny.model_copy(
        update={"evaluate": tiny.evaluate.model_copy(update=evaluate), "compute": compute}
    )
