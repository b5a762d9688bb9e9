"""Prefect task: everything that can be checked before any work starts.

Bad values are caught by the config model itself; this adds the model family (known, and
reading every model field that is set) and what depends on the machine and the outside world:
the process plan fits this machine (cpu_procs within the cores, CUDA present when asked
for), the data path exists, every worker of an external Dask cluster sees the genpar home,
and the tracking store answers (the SQLite
store is created and migrated here, once, before any rank or worker touches it).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from genpar_models.config import BUILTIN_SOURCES, PipelineConfig
from genpar_models.errors import ConfigError, DataError, GenparError
from genpar_models.models import check_model_config
from tasks import mlflow_store as store
from tasks.cluster import check_shared_home
from tasks.common import retry_unless_user_error, run_logger
from tasks.launcher import cuda_device_count, plan_processes


def check_generate_labels(config: PipelineConfig) -> None:
    """A pipeline's generate.label / generate.balanced_labels need a conditional model: refused
    before any work (the trained model is this config's; `genpar generate` checks the model
    it is given instead)."""
    gen = config.generate
    if config.model.conditional or (gen.label is None and not gen.balanced_labels):
        return
    field = "generate.label" if gen.label is not None else "generate.balanced_labels"
    raise ConfigError(
        f"{field}: only a conditional model samples classes; set model.conditional: true (on "
        f"labelled data) or leave {field} out"
    )


def open_tracking_store_early(config: PipelineConfig) -> None:
    """Create, migrate and open the default SQLite tracking store now, ahead of the flow run
    (the CLI calls it while Prefect's temporary server starts: MLflow's SQLAlchemy store and
    its migrations cost ~1.3 s of CPU that preflight then skips, tasks/mlflow_store.py
    `connect`). Anything that goes wrong is left to preflight, which reports it, retries, and
    is the only place a server or a Prefect Secret is consulted."""
    try:
        uri = store.resolve_uri(config)
        if uri.startswith("sqlite:///"):
            store.connect(uri)
    except GenparError:
        return


@task(
    name="preflight",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_unless_user_error,
    cache_policy=NO_CACHE,
)
def preflight(config: PipelineConfig) -> str:
    """Check machine, data path and tracking store; return the resolved tracking URI."""
    log = run_logger()
    check_model_config(config)
    check_generate_labels(config)
    plan = plan_processes(config.compute, cuda_device_count())
    if config.data.source not in BUILTIN_SOURCES and not Path(config.data.path).exists():
        raise DataError(f"data.path={config.data.path!r} does not exist")
    if config.compute.dask_address:
        workers = check_shared_home(config.compute.dask_address)
        log.info(
            "Dask cluster %s: %d worker(s) see the genpar home",
            config.compute.dask_address,
            workers,
        )
    store.load_password_secret(config)
    uri = store.resolve_uri(config)
    store.ensure_experiment(store.connect(uri), uri, config.experiment_name)
    log.info(
        "plan: %d %s training rank(s); tracking: %s, experiment %r",
        plan.nproc,
        plan.device,
        store.redact(uri),
        config.experiment_name,
    )
    return uri
