"""`genpar gc`: give back the disk that sweeps and nightly runs fill, keeping what is needed.

Removed: checkpoints of finished, stopped and failed runs beyond each run's newest; shard sets
that no MLflow run references (and not written in the last hour, so a preprocessing whose run
is not created yet keeps its shards); cached model downloads (`cache/models/`). Kept: every
file of unfinished runs (they resume from their checkpoints), of the champions' runs, their
shard sets and the model they were warm-started from, and every cached download an unfinished
run starts from. Plain functions on the MLflow store and the genpar home; the CLI prints what
they return.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genpar_models.train.checkpoint import list_checkpoints
from genpar_models.util.paths import genpar_home, shards_root
from tasks import mlflow_store as store

FRESH_S = 3600.0  # shard sets younger than this are kept even when no run names them yet
TERMINAL = {"FINISHED", "KILLED", "FAILED"}


@dataclass
class Removal:
    path: Path
    bytes: int
    why: str


@dataclass
class Plan:
    removals: list[Removal] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(r.bytes for r in self.removals)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _all_runs(client: Any) -> list[Any]:
    exps = [e.experiment_id for e in client.search_experiments(filter_string="tags.genpar = '1'")]
    return client.search_runs(exps, max_results=50000) if exps else []


def _champion_runs(client: Any) -> set[str]:
    out = set()
    for model in client.search_registered_models():
        version = (model.aliases or {}).get("champion")
        if version:
            out.add(client.get_model_version(model.name, version).run_id)
    return out


def _warm_start_dir(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "spec.json").read_text()).get("init_model_dir")
    except (OSError, ValueError):
        return None


def plan_gc(uri: str) -> Plan:
    """What `genpar gc` removes (nothing is removed here)."""
    client = store.connect(uri)
    runs = _all_runs(client)
    champions = _champion_runs(client)
    plan, referenced_shards, needed_models = Plan(), set(), set()
    for run in runs:
        run_dir = Path(run.data.tags.get(store.TAG_RUN_DIR, "") or "/nonexistent")
        if key := run.data.tags.get("genpar.shards_key"):
            referenced_shards.add(key)
        protected = run.info.run_id in champions or run.info.status not in TERMINAL
        if protected:
            if warm := _warm_start_dir(run_dir):
                needed_models.add(str(Path(warm).resolve()))
            why = "champion" if run.info.run_id in champions else f"{run.info.status.lower()} run"
            plan.kept.append(f"{run_dir} ({why})")
            continue
        for _, ckpt in list_checkpoints(run_dir / "checkpoints")[1:]:  # newest first: keep it
            for path in (ckpt, ckpt.with_suffix(".json")):
                if path.exists():
                    plan.removals.append(Removal(path, _size(path), "checkpoint beyond the newest"))
    now = time.time()
    for shard_dir in sorted(shards_root().glob("*")) if shards_root().exists() else []:
        manifest = shard_dir / "manifest.json"
        if shard_dir.name.startswith(("_", ".")) or not manifest.exists():
            continue
        if shard_dir.name in referenced_shards:
            continue
        if now - manifest.stat().st_mtime < FRESH_S:
            plan.kept.append(f"{shard_dir} (written in the last hour)")
            continue
        plan.removals.append(Removal(shard_dir, _size(shard_dir), "shard set no run references"))
    cache = genpar_home() / "cache" / "models"
    for entry in sorted(cache.glob("*")) if cache.exists() else []:
        if str(entry.resolve()) in needed_models or any(
            m.startswith(str(entry.resolve()) + "/") for m in needed_models
        ):
            plan.kept.append(f"{entry} (an unfinished run or a champion starts from it)")
            continue
        plan.removals.append(Removal(entry, _size(entry), "cached model download"))
    return plan


def apply_gc(plan: Plan) -> None:
    """Remove what `plan` lists (directories whole)."""
    for removal in plan.removals:
        if removal.path.is_dir():
            shutil.rmtree(removal.path, ignore_errors=True)
        else:
            removal.path.unlink(missing_ok=True)
