"""infra/prefect.yaml stays in step with the code: entrypoints, parameters and schedule."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from genpar_models.config import PipelineConfig, RetrainConfig
from genpar_models.config.sweep import SweepConfig

REPO = Path(__file__).resolve().parents[2]


def _flows_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any("flow" in ast.unparse(d) for d in node.decorator_list)
    }


def test_prefect_yaml_matches_the_code() -> None:
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"pipeline", "evaluate", "nightly-retrain", "sweep", "generate"}
    for d in deployments.values():
        file, func = d["entrypoint"].split(":")
        assert func in _flows_in(REPO / file), d["entrypoint"]
        assert d["work_pool"]["name"] == "genpar"
        if "config" in d["parameters"]:
            PipelineConfig.model_validate(d["parameters"]["config"])  # the form's defaults
        if "sweep" in d["parameters"]:
            sweep = SweepConfig.model_validate(d["parameters"]["sweep"])
            PipelineConfig.model_validate(sweep.base)
    nightly = deployments["nightly-retrain"]
    (schedule,) = nightly["schedules"]
    RetrainConfig(cron=schedule["cron"], timezone=schedule["timezone"])
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
