"""The benchmark suite runs end to end in --quick mode (a smoke test: no thresholds asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_quick_benchmark_suite_writes_its_table(tmp_path: Path) -> None:
    env_home = tmp_path / "home"
    env_home.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path / "res")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(env_home),
            "PREFECT_HOME": str(env_home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        },
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    data = json.loads((tmp_path / "res" / "latest.json").read_text())
    sections = {r["section"].split(" (")[0] for r in data["results"]}
    assert {"preprocess", "training", "generation", "evaluation", "orchestration"} <= sections
    assert "serving" in sections
    assert "gan recipes" in sections
    assert {"sequences: sines", "sequences: RVAE training throughput"} <= sections
    # 0 is a discriminative score's best value (a classifier at chance), so it may be 0
    positive = [r for r in data["results"] if "discriminative_score" not in r["name"]]
    assert all(r["value"] > 0 for r in positive if r["unit"] != "s" or "-" not in r["name"])
    table = (tmp_path / "res" / "latest.md").read_text()
    assert "| benchmark | value |" in table and "quick mode" in table
