"""The nightly retrain left alone: real flows, a real folder source, SQLite MLflow, a webhook.

One story of nights, run once for the module (each night costs a real training, so the cases
share them), then checked case by case. Two pipelines, `night-a` (3 steps: a poor model) and
`night-b` (30 steps), share the registered model `nights`:

1. a race: both nightlies start at once; the first holds the registered model's one slot, so
   the second waits, then judges its challenger against the first's new champion (margin
   rule: it wins);
2. `night-b` again on unchanged data: it trains and registers nothing, in a fraction of the time;
3. a file of the folder changes: `night-b` trains and decides (interval rule: a challenger
   as good as the champion does not win);
4. `genpar promote nights 1` puts the poor model back by hand;
5. `night-b` again (interval rule): its challenger's whole interval beats the poor champion;
6. `genpar rollback nights` puts the previous champion back; `genpar champion nights` shows
   the history;
7. a night on a folder that does not exist fails and notifies.

A receiver on 127.0.0.1 collects the webhook's POSTs; its URL holds a token that must appear
in no log and no MLflow param. The margin rule with a challenger that does not win is also
covered through the deployments in tests/system/test_deployments.py.
"""

from __future__ import annotations

import contextvars
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from flows.nightly import nightly_retrain, retrain_limit_name
from genpar_models.config import PipelineConfig, load_config
from genpar_models.eval.promotion import decide
from genpar_models.util.lineage import lineage
from genpar_models.util.paths import default_tracking_uri
from tests.conftest import REPO, TINY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = REPO / "tests" / "artifacts"
TOKEN = "s3cr3t-t0ken-in-the-path"
MODEL = "nights"
# Small everywhere but where the rules need numbers: 500 digits, quick evaluation, one rank,
# and one Dask cluster for the module instead of one per stage (evaluation in this process).
SMALL = [
    "data.source=folder",
    "data.max_samples=null",
    "compute.cpu_procs=1",
    "evaluate.parallel=local",
    "evaluate.num_samples=100",
    "evaluate.extractor_steps=100",
    "evaluate.bootstrap=50",
    "evaluate.iw_samples=2",
    "generate.num_samples=16",
    f"tracking.registered_model={MODEL}",
]


@dataclass
class Receiver:
    """A webhook on 127.0.0.1: what it received, path and JSON."""

    url: str
    got: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def events(self) -> list[str]:
        return [payload["event"] for _, payload in self.got]


def _receiver() -> tuple[Receiver, ThreadingHTTPServer]:
    got: list[tuple[str, dict[str, Any]]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.path, json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks/{TOKEN}"
    return Receiver(url, got), server


def _digits_folder(root: Path) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:500], digits.target[:500], strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).save(root / str(label) / f"{i}.png")
    return root


@dataclass
class Night:
    result: dict[str, Any]
    seconds: float


@dataclass
class Story:
    home: Path
    hook: Receiver
    configs: dict[str, PipelineConfig]
    nights: dict[str, Night] = field(default_factory=dict)
    cli: dict[str, Any] = field(default_factory=dict)
    failure: BaseException | None = None


def _night(cfg: PipelineConfig) -> Night:
    t0 = time.perf_counter()
    result = nightly_retrain(cfg)
    return Night(result, time.perf_counter() - t0)


def _holds_slot(cfg: PipelineConfig) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(retrain_limit_name(cfg))
        except ObjectNotFound:
            return False
    return limit.active_slots >= 1


def _race(story: Story) -> None:
    """night-a starts; once it holds the slot, night-b starts beside it (another thread)."""
    a, b = story.configs["a"], story.configs["b"]
    done: dict[str, Night] = {}
    errors: list[BaseException] = []

    def run(key: str, cfg: PipelineConfig) -> Callable[[], None]:
        def go() -> None:
            try:
                done[key] = _night(cfg)
            except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
                errors.append(e)

        return go

    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(run(k, c),))
        for k, c in (("a", a), ("b", b))
    ]
    threads[0].start()
    deadline = time.monotonic() + 120
    while not _holds_slot(a) and time.monotonic() < deadline and threads[0].is_alive():
        time.sleep(0.2)
    threads[1].start()
    for t in threads:
        t.join(timeout=600)
    if errors:
        raise errors[0]
    story.nights |= {"race-a": done["a"], "race-b": done["b"]}


def _cli(*args: str) -> Any:
    out = CliRunner().invoke(app, list(args))
    assert out.exit_code == 0, out.output
    return out.stdout


def _tell(story: Story) -> None:
    b = story.configs["b"]
    _race(story)
    story.nights["unchanged"] = _night(b)
    changed = next((Path(b.data.path) / "3").glob("*.png"))
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(changed)  # one digit becomes white
    interval = b.model_copy(update={"retrain": b.retrain.model_copy(update={"rule": "interval"})})
    story.nights["changed-file"] = _night(interval)
    story.cli["promote"] = _cli("promote", MODEL, "1", "--reason", "back to the small one")
    story.nights["interval-win"] = _night(interval)
    story.cli["rollback"] = _cli("rollback", MODEL, "--reason", "the demo needs it")
    story.cli["champion"] = _cli("champion", MODEL)
    story.cli["history"] = json.loads(_cli("champion", MODEL, "--format", "json"))
    missing = b.model_copy(update={"data": b.data.model_copy(update={"path": "/no/such/dir"})})
    with pytest.raises(Exception, match="does not exist") as failed:
        nightly_retrain(missing)
    story.failure = failed.value


@pytest.fixture(scope="module")
def story(
    prefect_server, mlflow_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Story]:
    from distributed import LocalCluster

    root = tmp_path_factory.mktemp("nightly")
    hook, server = _receiver()
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    )
    with cluster, pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENPAR_HOME", str(root / "home"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("GENPAR_TEST_HOOK", hook.url)
        db = Path(default_tracking_uri()[len("sqlite:///") :])
        db.parent.mkdir(parents=True)
        shutil.copy(mlflow_template, db)
        folder = _digits_folder(root / "digits")
        common = [*SMALL, f"data.path={folder}", f"retrain.notify_url={hook.url}"]
        common.append(f"compute.dask_address={cluster.scheduler_address}")
        configs = {
            "a": load_config(TINY, [*common, "name=night-a", "train.max_steps=3"]),
            "b": load_config(
                TINY,
                [*common, "name=night-b", "retrain.notify_url=env:GENPAR_TEST_HOOK"],
            ),
        }
        told = Story(root / "home", hook, configs)
        _tell(told)
        _keep_timings(told)
        yield told
    server.shutdown()


def _keep_timings(story: Story) -> None:
    """Each night's wall time, for whoever sizes CI (tests/artifacts is gitignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    times = {k: round(n.seconds, 1) for k, n in story.nights.items()}
    (ARTIFACTS / "nightly-seconds.json").write_text(json.dumps(times, indent=2))


def _client() -> MlflowClient:
    return MlflowClient(default_tracking_uri())


def _decision_run(result: dict[str, Any]) -> Any:
    return _client().get_run(result["run_id"])


def test_race_of_two_nightlies_sharing_a_registered_model(story: Story) -> None:
    a, b = story.nights["race-a"].result, story.nights["race-b"].result
    assert a["decision"]["action"] == "promoted" and "no champion yet" in a["decision"]["reason"]
    # b waited for a's slot, so it judged its challenger against a's fresh champion
    assert b["champion"]["version"] == a["model_version"]
    assert b["decision"]["action"] == "promoted" and b["decision"]["rule"] == "margin"
    assert b["decision"]["improvement"] > 0
    assert "min_improvement 0" in b["decision"]["reason"]
    a_run, b_run = _decision_run(a), _decision_run(b)
    assert a_run.info.end_time <= b_run.info.start_time  # never overlapped
    assert b_run.data.tags["genpar.retrain.champion_version"] == a["model_version"]
    assert b_run.data.tags["genpar.retrain.protocol"] != "none"  # both under one protocol
    assert b_run.data.metrics["retrain/champion_score"] > b_run.data.metrics["eval/fid"]


def test_unchanged_night_trains_and_registers_nothing(story: Story) -> None:
    night, first = story.nights["unchanged"], story.nights["race-a"]
    champion = story.nights["race-b"].result["model_version"]
    assert night.result["decision"]["action"] == "skipped"
    assert night.result["run_id"] is None and night.result["model_version"] is None
    assert f"unchanged since the champion, version {champion}" in night.result["decision"]["reason"]
    assert night.seconds < 0.3 * first.seconds, (night.seconds, first.seconds)
    client = _client()
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    assert versions == [1, 2, 3, 4]  # race a, race b, changed file, interval win: nothing more
    exp = client.get_experiment_by_name("night-b").experiment_id
    (record,) = client.search_runs([exp], "tags.`genpar.retrain.decision` = 'skipped'")
    assert record.data.tags["genpar.retrain.champion_version"] == champion
    assert "genpar.train_key" not in record.data.tags  # a record, not a training run
    assert not list(client.list_artifacts(record.info.run_id))
    trained = client.search_runs([exp], "tags.`genpar.train_key` != ''")
    assert len(trained) == 3  # race b, changed file, interval win


def test_lineage_on_runs_and_versions(story: Story) -> None:
    client = _client()
    version = client.get_model_version(MODEL, story.nights["race-b"].result["model_version"])
    run = client.get_run(version.run_id)
    expected = {f"genpar.lineage.{k}": v for k, v in lineage().items()}
    assert {"genpar.lineage.genpar", "genpar.lineage.torch", "genpar.lineage.numpy"} <= set(
        expected
    )
    assert {k: run.data.tags[k] for k in expected} == expected
    assert {k: version.tags[k] for k in expected} == expected
    assert "genpar.lineage.git_commit" in expected  # the tests run from a checkout
    assert version.tags["genpar.run_identity"] == story.configs["b"].run_identity()


def test_changed_file_trains_and_decides_by_the_interval(story: Story) -> None:
    result = story.nights["changed-file"].result
    run = _decision_run(result)
    assert result["model_version"] == "3" and result["champion"]["version"] == "2"
    decision = result["decision"]
    assert decision["rule"] == "interval" and decision["action"] == "kept champion"
    low, high = decision["challenger_ci_low"], decision["challenger_ci_high"]
    assert low <= run.data.metrics["eval/fid"] <= high and high >= decision["champion"]
    assert "does not lie entirely below" in decision["reason"]
    assert run.data.metrics["retrain/challenger_ci_high"] == high
    # what made it train: the data, and only the data
    report = _artifact(story, run.data.tags["genpar.retrain.flow_run_id"])
    assert "trained because: data: source fingerprint" in report
    assert "config:" not in report and "code:" not in report
    assert "rule: interval" in report


def test_interval_rule_promotes_a_challenger_whose_whole_interval_wins(story: Story) -> None:
    result = story.nights["interval-win"].result
    decision = result["decision"]
    assert result["champion"]["version"] == "1"  # the one promoted by hand
    assert decision["action"] == "promoted" and decision["rule"] == "interval"
    assert decision["challenger_ci_high"] < decision["champion"]
    assert "lies entirely below it" in decision["reason"]


def test_promote_and_rollback_are_recorded(story: Story) -> None:
    assert "promote: version 1 (was version 2)" in story.cli["promote"]
    assert "rollback: version 1 (was version 4)" in story.cli["rollback"]
    client = _client()
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    one = client.get_model_version(MODEL, "1")
    assert one.tags["champion.action"] == "rollback"
    assert one.tags["champion.reason"] == "the demo needs it"
    assert "@" in one.tags["champion.by"] and one.tags["champion.at"]
    assert client.get_model_version(MODEL, "4").tags["champion.left_for"] == "1"
    assert "nights@champion: version 1" in story.cli["champion"]  # and a table of the moves
    history = story.cli["history"]
    assert history["champion"] == "1" and history["run_id"] == one.run_id
    moves = [(e["action"], e["version"], e["previous"]) for e in history["history"]]
    assert moves == [
        ("nightly", "1", None),  # race a: the first champion
        ("nightly", "2", "1"),  # race b beat it
        ("promote", "1", "2"),
        ("nightly", "4", "1"),  # the interval win
        ("rollback", "1", "4"),
    ]
    reasons = [e["reason"] for e in history["history"]]
    assert reasons[2:] == ["back to the small one", reasons[3], "the demo needs it"]
    assert "flow run" in history["history"][0]["by"] and history["history"][0]["flow_run"]
    # `genpar rollback` again goes one further back: the champion before version 1 came back
    again = _cli("rollback", MODEL)
    assert "rollback: version 2 (was version 1)" in again


def test_notifications_for_promotion_skip_and_failure(story: Story) -> None:
    events = story.hook.events()
    # race a and b promote, unchanged skips, the changed file keeps (not notified by
    # default), the interval win promotes, the missing folder fails
    assert events == ["promoted", "promoted", "skipped", "promoted", "failed"]
    paths = {path for path, _ in story.hook.got}
    assert paths == {f"/hooks/{TOKEN}"}  # literal URL (night-a) and env:NAME (night-b)
    promoted = story.hook.got[3][1]
    assert promoted["pipeline"] == "night-b" and promoted["registered_model"] == MODEL
    assert promoted["decision"]["rule"] == "interval"
    assert promoted["scores"]["challenger"] < promoted["scores"]["champion"]
    assert promoted["versions"] == {"challenger": "4", "champion_before": "1", "champion": "4"}
    assert set(promoted["links"]) >= {"challenger_run", "champion_run", "compare"}
    assert "#/compare-runs?runs=" in promoted["links"]["compare"]
    skipped = story.hook.got[2][1]
    assert "unchanged since the champion, version 2" in skipped["text"]
    failed = story.hook.got[4][1]
    assert "does not exist" in failed["error"] and failed["decision"] is None


def test_the_webhook_token_stays_out_of_logs_and_mlflow(story: Story) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    runs = [_decision_run(story.nights[k].result) for k in ("race-a", "interval-win")]
    flow_runs = [r.data.tags["genpar.retrain.flow_run_id"] for r in runs]
    with get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_runs)), limit=200
        )
    text = "\n".join(log.message for log in logs)
    assert "notified http://127.0.0.1:" in text and "/***" in text
    assert TOKEN not in text
    a = runs[0]
    assert a.data.params["retrain.notify_url"].endswith("/***")
    assert TOKEN not in json.dumps(a.data.params) + json.dumps(a.data.tags)


def _artifact(story: Story, flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as prefect:
        found = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    (report,) = [a for a in found if a.key.endswith("nightly-retrain")]
    return report.data


def _registered_runs(client: MlflowClient, n: int) -> list[str]:
    from tasks import registry

    exp = client.create_experiment("registry-cases")
    runs = [client.create_run(exp).info.run_id for _ in range(n)]
    for run_id in runs:  # a bare logged model each: these cases are about versions, not files
        bare = client.create_logged_model(exp, source_run_id=run_id).model_uri
        registry.register_once(
            client, run_id, name=MODEL, tags={"k": "v"}, log_model=lambda u=bare: u
        )
    return runs


def _never() -> str:
    raise AssertionError("a registered run's model was logged again")


def test_registration_retried_makes_no_duplicate_version(tracked_home: Path) -> None:
    from tasks import registry

    client = _client()
    (run_id,) = _registered_runs(client, 1)
    again = registry.register_once(client, run_id, name=MODEL, tags={"k": "w"}, log_model=_never)
    (version,) = client.search_model_versions(f"name='{MODEL}'")
    assert again == str(version.version) == "1" and version.tags["k"] == "w"


def test_alias_moved_during_the_night_is_not_overwritten(tracked_home: Path) -> None:
    """Compare-and-set: the night started with version 1 as champion; someone promoted
    version 2 by hand meanwhile; the night's winner (version 3) must not take the alias."""
    from tasks.champion import AliasMoved, move
    from tasks.promotion import record_decision

    client = _client()
    runs = _registered_runs(client, 3)
    move(client, MODEL, "1", expected=None, action="nightly", reason="first", by="test")
    with pytest.raises(AliasMoved, match="is version 1 now, not version none"):
        move(client, MODEL, "3", expected=None, action="nightly", reason="stale", by="test")
    move(client, MODEL, "2", expected="1", action="promote", reason="by hand", by="someone")
    cfg = load_config(TINY, [f"tracking.registered_model={MODEL}"])
    decision = record_decision.fn(
        cfg,
        default_tracking_uri(),
        {"run_id": runs[2], "model_version": "3"},
        {"version": "1", "run_id": runs[0]},
        decide(1.0, 2.0, cfg.retrain).as_dict(),  # the challenger won
    )
    assert decision["action"] == "kept champion" and not decision["promote"]
    assert "is version 2 now, not version 1" in decision["reason"]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    assert client.get_run(runs[2]).data.tags["genpar.retrain.decision"] == "kept champion"
