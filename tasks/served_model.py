"""Every registered genpar version is an MLflow model: pyfunc, written as *models from code*.

`log_served_model` logs a run's exported model (safetensors + model.json) as a LoggedModel
of that run, once, just before it is registered: the model class is the code file
genpar_models/infer/mlflow_model.py (MLflow copies it; nothing is cloudpickled), the weights
and `serving.json` are artifacts, and it carries a signature, an input example and explicit
pip requirements (MLflow's own inference of the environment costs about 6 s a model). The
run's metrics of the latest scorecard step (`eval/...`) are linked to it, so MLflow 3's model
views show them. The version registered from it loads with `mlflow.pyfunc.load_model
("models:/NAME@champion")` and serves with `mlflow models serve`; genpar's own consumers keep
reading the run's `model/` artifact (tasks/registry.py), which versions registered before this
have too. Your own network's module (model.name "package.module:Class") travels with the model
as MLflow code unless it is an installed package, which the serving environment must then have.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Run
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import AnyType

import genpar_models
from genpar_models.config import GenerateConfig
from genpar_models.models.export import read_meta
from genpar_models.util import atomic

if TYPE_CHECKING:  # genpar_models.infer.serving imports torch: only where a model is logged
    from genpar_models.infer.serving import ServingSpec

# Not "model": MLflow lists and downloads `runs:/RUN/<name>/...` from a logged model of that
# name, which would shadow the run's own model/ artifact that genpar's resolvers read.
LOGGED_NAME = "genpar-model"
# What loading the model imports (genpar itself must be installed beside them: serve with
# `--env-manager local` from genpar's environment).
REQUIREMENTS = (
    "mlflow",
    "torch",
    "numpy",
    "pandas",
    "pillow",
    "safetensors",
    "pydantic",
    "pyyaml",
    "threadpoolctl",
)
INPUT_EXAMPLE = pd.DataFrame([{"n": 4, "seed": 0}])


def code_file() -> str:
    """The models-from-code file (found without importing it: it calls set_model)."""
    spec = importlib.util.find_spec("genpar_models.infer.mlflow_model")
    assert spec is not None and spec.origin, "genpar_models.infer.mlflow_model is missing"
    return spec.origin


def requirements() -> list[str]:
    """Exact pins of what this process runs, so MLflow infers nothing."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in REQUIREMENTS]


def warm_requirements_check() -> None:
    """Build now what MLflow's first save of a model in this process builds: when it saves the
    model it checks requirements() (exact pins of this environment, so they always match)
    against the installed distributions, and its first check maps every installed package's
    files (importlib_metadata.packages_distributions: 0.43 s of the 1.33 s register-model
    task against a local stack, py-spy, 2 cores). The training task runs this on its
    import-ahead thread while torchrun trains (tiny, 4 runs each way, alternated: median wall
    10.76 s with it, 11.17 s without; register-model 0.25 / 0.53 s, the training task no
    slower); if MLflow no longer has the map, nothing."""
    from mlflow.utils import requirements_utils

    build = getattr(requirements_utils, "_init_modules_to_packages_map", None)
    if build is not None:
        build()


def signature() -> ModelSignature:
    """Rows of n/seed (sampling) or image/seed (reconstruct, elbo; series/seed for a
    sequence model). Every column is optional
    (which are needed depends on `params.task`) and of any type: MLflow's enforcement of
    `long` truncates n = 2.5 to 2 and reads true as 1, so predict checks the values itself and
    refuses those, naming the field."""
    inputs = Schema(
        [
            ColSpec(AnyType(), name, required=False)
            for name in ("n", "seed", "label", "image", "series")
        ]
    )
    params = ParamSchema(
        [ParamSpec("task", "string", "sample"), ParamSpec("format", "string", "json")]
    )
    return ModelSignature(inputs=inputs, params=params)


def serving_spec(model_dir: Path, binarize: str, max_samples: int) -> ServingSpec:
    """The served model's settings: `genpar generate`'s default chunking (so a request with
    n and seed returns what `genpar generate --n N --seed S` writes), the request limit, the
    model's image shape and the run's binarisation."""
    from genpar_models.infer.serving import ServingSpec
    from genpar_models.models.registry import get_family

    meta = read_meta(model_dir)
    spec = meta["model_spec"]
    # a sequence model's (T, C) travels as its sample shape
    shape = meta.get("image_shape") or spec.get("image_shape") or spec["sequence_shape"]
    return ServingSpec(
        chunk_size=GenerateConfig().chunk_size,
        max_samples_per_request=max_samples,
        image_shape=tuple(int(d) for d in shape),
        binarize=binarize,
        modality=get_family(spec["name"]).modality,
    )


def custom_network_code(model_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Your own network (model.name "package.module:Class"): its top-level module or package
    is bundled with the served model (MLflow's code_paths, put on sys.path when it loads),
    unless it is installed, and its import path is recorded in the model's metadata."""
    name = read_meta(model_dir)["model_spec"]["name"]
    if ":" not in name:
        return [], {}
    from genpar_models.models.custom.loader import source_of

    source = source_of(name)
    return ([str(source)] if source else []), {"genpar_custom_network": name}


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global tracking URI at `uri` for the block: its fluent model logging
    reads it, and so does registering a `models:/m-...` source (the SQL registry store looks
    the logged model up through a default client). Both what was set and the environment
    variable (which `set_tracking_uri` also writes) are put back as they were."""
    from mlflow.tracking._tracking_service import utils

    before, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def scorecard_metrics(run: Run) -> tuple[int, list[Metric]]:
    """The step of the run's latest scorecard (eval/ metrics; 0 when it has none) and the run's
    latest metrics at that step, with their own timestamps: what is linked to its model.

    From the run as get_run returns it. MLflow's Model.log reads every metric's whole history
    for this (one request per metric: 46 of the 63 requests, 0.41 of the 1.33 s register-model
    task against a local stack); a metric logged again at a later step keeps only that later
    value here, which a genpar run never does after its scorecard."""
    latest = [Metric.from_proto(m) for m in run.data.to_proto().metrics]
    step = max((m.step for m in latest if m.key.startswith("eval/")), default=0)
    return step, [m for m in latest if m.step == step]


def log_served_model(
    client: MlflowClient,
    run_id: str,
    model_dir: str | Path,
    *,
    binarize: str,
    max_samples: int,
    tags: dict[str, str] | None = None,
) -> str:
    """Log `model_dir` as `run_id`'s pyfunc model, in the run's experiment; return its URI
    (models:/m-...). A model whose logging fails is marked FAILED, never left half-written
    as READY."""
    from genpar_models.infer.serving import SERVING_FILE

    spec = serving_spec(Path(model_dir), binarize, max_samples)
    own_code, custom = custom_network_code(Path(model_dir))
    run = client.get_run(run_id)
    # Created here, not by Model.log: that one puts it in the *active* experiment (Default).
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=LOGGED_NAME,
        source_run_id=run_id,
        tags=tags,
        params={k: str(v) for k, v in run.data.params.items()},
    )
    try:
        with tempfile.TemporaryDirectory(prefix="genpar-serving-") as tmp:
            serving, weights = Path(tmp) / SERVING_FILE, Path(tmp) / "model"
            atomic.write_json(serving, spec.to_json())
            shutil.copytree(model_dir, weights)  # artifacts/model/ whatever the source's name
            saved = Path(tmp) / "mlflow-model"
            # What Model.log does, but linking the scorecard from the run above (scorecard_metrics)
            # and without its input-example check, which loads the model and runs predict only
            # to warn: tests/integration/test_served_model.py loads and serves it for real.
            mlflow_model = Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
                metadata={"genpar_version": genpar_models.__version__, **custom},
            )
            with warnings.catch_warnings():
                # "add type hints to predict": the signature is given explicitly instead
                warnings.simplefilter("ignore", UserWarning)
                mlflow.pyfunc.save_model(
                    path=str(saved),
                    mlflow_model=mlflow_model,
                    python_model=code_file(),
                    artifacts={"model": str(weights), "serving": str(serving)},
                    signature=signature(),
                    input_example=INPUT_EXAMPLE,
                    pip_requirements=requirements(),
                    code_paths=own_code or None,
                )
            for pycache in saved.rglob("__pycache__"):  # a code path imported while saving
                shutil.rmtree(pycache, ignore_errors=True)
            with global_tracking_uri(client.tracking_uri):
                client.log_model_artifacts(logged.model_id, str(saved))
        step, linked = scorecard_metrics(run)  # fetched above, after the scorecard
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=step)])
        if linked:  # the same metrics (key, value, timestamp, step), now of the model too
            client.log_batch(
                run_id,
                metrics=[
                    Metric(m.key, m.value, m.timestamp, m.step, model_id=logged.model_id)
                    for m in linked
                ],
            )
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    except BaseException:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    return logged.model_uri
