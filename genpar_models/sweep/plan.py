"""The trials a sweep file means: grid combinations, or Optuna's random/TPE proposals, each
turned into a validated `PipelineConfig` (base + the trial's values + its seed + the sweep's
`trial_compute`).

Everything here is a pure function of the sweep file (and, for TPE, of the results so far), so
the same file and seed give the same trials in any process: a re-run after a crash finds its
trials again by their ids.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from genpar_models.config import PipelineConfig, format_validation_error
from genpar_models.config.loading import check_dotted_key
from genpar_models.config.sweep import Choices, Range, SweepConfig
from genpar_models.errors import ConfigError
from genpar_models.util.cores import available_cores


class Trial(BaseModel):
    """One configuration x seed of a sweep: its id, the swept values and the full config."""

    model_config = ConfigDict(frozen=True)

    id: str
    params: dict[str, Any]
    config: PipelineConfig

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.params.items())


def check_space_keys(sweep: SweepConfig) -> None:
    """Every space key names a field of the config tree (did-you-mean otherwise), not a section."""
    for key in sweep.space:
        check_dotted_key(key, f"space.{key}")


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def trial_config(sweep: SweepConfig, trial_id: str, params: dict[str, Any]) -> PipelineConfig:
    """The base config with the trial's values and the sweep's trial_compute.

    Raises:
        ConfigError: naming the trial, its values and the field the config rejects.
    """
    from genpar_models.models import check_model_config

    tree = json.loads(json.dumps(sweep.base))  # a deep copy of plain data
    tree["compute"] = {
        **tree.get("compute", {}),
        "cpu_procs": sweep.trial_compute.cpu_procs,
        "threads_per_proc": sweep.trial_compute.threads_per_proc,
    }
    for key, value in params.items():
        _set_dotted(tree, key, value)
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    try:
        config = PipelineConfig.model_validate(tree)
        check_model_config(config)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"sweep trial {trial_id} ({shown})")) from None
    except ConfigError as e:
        raise ConfigError(f"sweep trial {trial_id} ({shown}): {e}") from None
    return config


def grid_points(sweep: SweepConfig) -> list[dict[str, Any]]:
    """All combinations of the space's lists, the first key varying slowest (file order)."""
    keys = list(sweep.space)
    values = [sweep.dimension(k).choices for k in keys]  # grid: lists only (validated)
    points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]
    return points[: sweep.trials] if sweep.trials else points


def _distributions(sweep: SweepConfig) -> dict[str, Any]:
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for key in sweep.space:
        dim = sweep.dimension(key)
        if isinstance(dim, Choices):
            for c in dim.choices:
                if c is not None and not isinstance(c, bool | int | float | str):
                    raise ConfigError(
                        f"space.{key}: choice {c!r} is a {type(c).__name__}; random and TPE "
                        "search take numbers, strings, booleans or null"
                    )
            out[key] = od.CategoricalDistribution(dim.choices)
        elif isinstance(dim, Range) and dim.int_:
            out[key] = od.IntDistribution(int(dim.low), int(dim.high), log=dim.log)
        else:
            out[key] = od.FloatDistribution(dim.low, dim.high, log=dim.log)
    return out


def _quiet_optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    return optuna


def random_points(sweep: SweepConfig) -> list[dict[str, Any]]:
    """`trials` points from Optuna's RandomSampler seeded by the sweep's seed."""
    optuna = _quiet_optuna()
    dists = _distributions(sweep)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=sweep.seed))
    return [dict(study.ask(dists).params) for _ in range(sweep.trials or 0)]


def tpe_points(
    sweep: SweepConfig, history: list[tuple[dict[str, Any], float | None]], n: int
) -> list[dict[str, Any]]:
    """The next `n` TPE proposals given the finished trials' (params, objective) so far (None:
    failed). The sampler is seeded by (seed, trials so far), so a round is deterministic for a
    given history: a resumed sweep proposes what the interrupted one did."""
    optuna = _quiet_optuna()
    dists = _distributions(sweep)
    direction = sweep.objective.direction
    sampler = optuna.samplers.TPESampler(seed=sweep.seed * 100_003 + len(history))
    study = optuna.create_study(direction=direction, sampler=sampler)
    for params, value in history:
        state = (
            optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.FAIL
        )
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=value, state=state)
        )
    return [dict(study.ask(dists).params) for _ in range(n)]


def expand_seeds(
    sweep: SweepConfig, points: list[dict[str, Any]], first_index: int = 0
) -> list[Trial]:
    """Trials for `points` (numbered from `first_index`), once per seed of `seeds`."""
    trials = []
    for i, point in enumerate(points, start=first_index):
        for seed in sweep.seeds or [None]:
            params = dict(point) if seed is None else {**point, "seed": seed}
            trial_id = f"t{i:03d}" if seed is None else f"t{i:03d}-s{seed}"
            trials.append(
                Trial(id=trial_id, params=params, config=trial_config(sweep, trial_id, params))
            )
    return trials


def initial_trials(sweep: SweepConfig) -> list[Trial]:
    """Every trial of a grid or random sweep; for TPE, the first round's (checked the same
    way: a TPE round later can only propose values inside the same ranges)."""
    if sweep.search == "grid":
        return expand_seeds(sweep, grid_points(sweep))
    if sweep.search == "random":
        return expand_seeds(sweep, random_points(sweep))
    return expand_seeds(sweep, tpe_points(sweep, [], concurrency_of(sweep)))


def trial_units(sweep: SweepConfig, cuda_devices: int) -> tuple[int, int, str]:
    """(units one trial holds, units this machine has, what a unit is): GPUs on a GPU machine,
    else CPU cores (ranks x threads)."""
    tc = sweep.trial_compute
    device = sweep.base.get("compute", {}).get("device", "auto")
    if cuda_devices and device in ("auto", "cuda"):
        return tc.gpus, cuda_devices, "GPU(s)"
    return tc.cpu_procs * tc.threads_per_proc, available_cores(), "CPU core(s)"


def concurrency_of(sweep: SweepConfig, cuda_devices: int = 0) -> int:
    """`concurrency`, or as many trials as the machine fits (at least 1)."""
    per_trial, capacity, _ = trial_units(sweep, cuda_devices)
    return sweep.concurrency or max(1, capacity // per_trial)


def check_machine_fit(sweep: SweepConfig, cuda_devices: int = 0) -> int:
    """The sweep's concurrency, after checking that it fits this machine.

    Raises:
        ConfigError: naming concurrency, trial_compute and what the machine has.
    """
    per_trial, capacity, unit = trial_units(sweep, cuda_devices)
    if per_trial > capacity:
        raise ConfigError(
            f"trial_compute: one trial needs {per_trial} {unit} but this machine has {capacity}"
        )
    n = concurrency_of(sweep, cuda_devices)
    if n * per_trial > capacity:
        raise ConfigError(
            f"concurrency={n}: {n} trials x {per_trial} {unit} each (trial_compute) is more "
            f"than this machine's {capacity} {unit}; use concurrency <= {capacity // per_trial}"
        )
    return n


def sweep_key(sweep: SweepConfig) -> str:
    """Identity of a sweep: everything that decides its trials and their results (not
    fail_fast/promote; concurrency only for TPE, whose rounds it sizes)."""
    from genpar_models.config import stable_hash

    fields = sweep.model_dump(mode="json", exclude={"fail_fast", "promote", "concurrency"})
    if sweep.search == "tpe":
        fields["concurrency"] = concurrency_of(sweep)
    return stable_hash(fields)
