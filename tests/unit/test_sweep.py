"""Sweep files and the sweep's pure logic: checks before any work (errors naming the field),
grid/random/TPE plans, successive halving's decisions."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from genpar_models.config.sweep import load_sweep
from genpar_models.errors import ConfigError
from genpar_models.sweep import halving
from genpar_models.sweep.plan import grid_points, random_points, tpe_points
from tests.conftest import REPO, TINY

GOOD = f"""
name: t
base: {TINY}
search: grid
concurrency: 1
space:
  train.lr: [0.001, 0.003, 0.01]
  model.latent_dim: [4, 8]
objective: {{metric: eval/fid, direction: minimize}}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def _check(tmp_path: Path, text: str, overrides: list[str] | None = None):
    from tasks.sweep import check_sweep

    return check_sweep(load_sweep(_write(tmp_path, text), overrides))


def test_grid_plan_is_every_combination_in_file_order(tmp_path: Path) -> None:
    plan = _check(tmp_path, GOOD)
    assert [t.id for t in plan.trials] == [f"t{i:03d}" for i in range(6)]
    assert plan.trials[1].params == {"train.lr": 0.001, "model.latent_dim": 8}
    assert plan.trials[5].config.train.lr == 0.01 and plan.trials[5].config.model.latent_dim == 8
    # trial_compute, not the base's compute, decides a trial's processes
    assert plan.trials[0].config.compute.cpu_procs == 1
    assert plan.trials[0].config.compute.threads_per_proc == 1
    assert plan.concurrency == 1 and plan.rungs == {t.id: [] for t in plan.trials}


def test_the_example_sweep_file_is_valid() -> None:
    sweep = load_sweep(REPO / "configs" / "tiny-sweep.yaml")
    assert sweep.base["name"] == "tiny" and len(grid_points(sweep)) == 6


def test_overrides_apply_to_the_base_and_seeds_multiply_trials(tmp_path: Path) -> None:
    text = GOOD.replace("objective:", "seeds: [0, 1]\nobjective:")
    plan = _check(tmp_path, text, ["train.max_steps=12"])
    assert len(plan.trials) == 12 and plan.trials[1].id == "t000-s1"
    assert plan.trials[1].config.seed == 1 and plan.trials[1].config.train.max_steps == 12


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("train.lr:", "train.lrr:"),
            r"space.train.lrr: unknown key 'lrr' in train; did you mean 'lr'",
        ),
        (("train.lr:", "train:"), r"space.train: train is a section"),
        (
            ("[0.001, 0.003, 0.01]", "[0.001, -3]"),
            r"(?s)sweep trial t002 \(train.lr=-3.*train.lr: Input should be greater",
        ),
        (
            ("model.latent_dim: [4, 8]", "model.ema_decay: [0.9]"),
            r"(?s)t000 .*model.ema_decay.*vae",
        ),
        (("concurrency: 1", "concurrency: 64"), r"concurrency=64: .*more than this machine"),
        (("eval/fid", "eval/bits_per_dim"), r"objective.metric='eval/bits_per_dim'.*not produce"),
        (("eval/fid", "eval/fdi"), r"did you mean 'eval/fid'"),
        (("search: grid", "search: random"), r"trials: search random needs the number"),
    ],
)
def test_bad_sweep_files_fail_naming_the_field(tmp_path: Path, change, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _check(tmp_path, GOOD.replace(*change))


@pytest.mark.parametrize(
    ("early", "message"),
    [
        ("{metric: val/elbo, rungs: [0.5, 0.25]}", r"rungs must be strictly increasing"),
        ("{metric: val/elbo, rungs: [0.5, 1.0]}", r"every rung must lie in \(0, 1\)"),
        ("{metric: val/elbo, rungs: []}", r"early_stopping.rungs"),
        ("{metric: val/elbo, rungs: [0.5], keep: 1.5}", r"early_stopping.keep"),
        ("{metric: val/d_real, rungs: [0.5]}", r"early_stopping.metric='val/d_real'"),
        ("{metric: val/elbo, rungs: [0.01, 0.02]}", r"rungs=\[0.01, 0.02\].*steps \[0, 1\]"),
    ],
)
def test_bad_early_stopping_fails_naming_it(tmp_path: Path, early: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _check(tmp_path, GOOD + f"early_stopping: {early}\n")


def test_empty_space_and_grid_ranges_are_refused(tmp_path: Path) -> None:
    head = GOOD.split("space:")[0]
    with pytest.raises(ConfigError, match="space: .*search space is empty"):
        _check(tmp_path, head + "space: {}\n")
    with pytest.raises(ConfigError, match="space.train.lr: grid search needs a list"):
        _check(tmp_path, head + "space:\n  train.lr: {low: 0.001, high: 0.01}\n")
    with pytest.raises(ConfigError, match="train.lr: an empty list"):
        _check(tmp_path, head + "space:\n  train.lr: []\n")


def test_cli_refuses_a_bad_sweep_before_any_work(tmp_path: Path) -> None:
    from flows.cli import app

    path = _write(tmp_path, GOOD.replace("train.lr:", "train.lrr:"))
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2
    assert "did you mean 'lr'" in result.output


RANDOM = f"""
name: r
base: {TINY}
search: random
trials: 5
seed: 3
space:
  train.lr: {{low: 0.0001, high: 0.01, log: true}}
  model.latent_dim: {{low: 2, high: 8, int: true}}
  model.likelihood: {{choices: [bernoulli, gaussian]}}
"""


def test_random_search_is_seeded_and_stays_in_its_ranges(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path, RANDOM))
    points = random_points(sweep)
    assert points == random_points(sweep) and len(points) == 5
    assert points != random_points(sweep.model_copy(update={"seed": 4}))
    for p in points:
        assert 1e-4 <= p["train.lr"] <= 1e-2 and isinstance(p["model.latent_dim"], int)
        assert p["model.likelihood"] in ("bernoulli", "gaussian")
    plan = _check(tmp_path, RANDOM)
    assert [t.params for t in plan.trials] == points


def test_tpe_proposals_are_deterministic_for_a_history(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path, RANDOM.replace("random", "tpe")))
    history = [(p, float(i)) for i, p in enumerate(random_points(sweep))] + [
        (random_points(sweep)[0], None)
    ]
    first = tpe_points(sweep, history, 2)
    assert first == tpe_points(sweep, history, 2) and len(first) == 2
    assert first != tpe_points(sweep, history[:-2], 2)


def test_successive_halving_decisions() -> None:
    scores = {"t000": 3.0, "t001": 1.0, "t002": None, "t003": 1.0, "t004": float("nan")}
    # ties broken by id, failures (None/NaN) never kept and ranked last
    assert halving.ranked(scores, "minimize") == ["t001", "t003", "t000", "t002", "t004"]
    assert halving.survivors(scores, 0.5, "minimize") == ["t001", "t003"]
    assert halving.survivors(scores, 0.5, "maximize") == ["t000", "t001"]
    assert halving.survivors({"a": None}, 0.5, "minimize") == []
    assert (
        halving.kept(9, 1 / 3) == 3 and halving.kept(3, 1 / 3) == 1 and halving.kept(2, 0.25) == 1
    )
    assert halving.rung_steps(300, [0.11, 0.33]) == [33, 99]
    with pytest.raises(ConfigError, match="distinct"):
        halving.rung_steps(4, [0.3, 0.35])


def test_the_sweep_deployment_form_holds_a_valid_sweep_of_the_config(tiny) -> None:
    from flows.deployments import build_deployments, deployment_names
    from genpar_models.config.sweep import SweepConfig
    from tasks.sweep import check_sweep

    deployments = build_deployments(tiny)
    assert "genpar-sweep/sweep" in deployment_names(deployments)
    (sweep_dep,) = [d for d in deployments if d.name == "sweep"]
    sweep = SweepConfig.model_validate(sweep_dep.parameters["sweep"])
    assert sweep.base == tiny.model_dump(mode="json")
    assert [t.config.train.lr for t in check_sweep(sweep).trials] == pytest.approx(
        [0.001, 0.003, 0.009]
    )


def test_a_trials_compute_is_trial_compute_whatever_the_concurrency(tmp_path: Path) -> None:
    """Packing: concurrency decides how many trials run at once, never what one trial trains on,
    so a trial trains the same numbers whatever runs beside it (and the sweep's identity, which
    a re-run looks its parent run up by, is the same too)."""
    from genpar_models.sweep.plan import sweep_key

    # the base asks for 2 ranks x 2 threads: the sweep's trial_compute (1 x 1) wins
    one = _check(tmp_path, GOOD, ["compute.cpu_procs=2", "compute.threads_per_proc=2"])
    free = GOOD.replace("concurrency: 1\n", "")  # default: what the machine fits
    fitted = _check(tmp_path, free, ["compute.cpu_procs=2", "compute.threads_per_proc=2"])
    assert fitted.concurrency >= 1 and fitted.units_per_trial == one.units_per_trial == 1
    assert [t.config for t in fitted.trials] == [t.config for t in one.trials]
    assert {
        (t.config.compute.cpu_procs, t.config.compute.threads_per_proc) for t in one.trials
    } == {(1, 1)}
    sweeps = [load_sweep(_write(tmp_path, text)) for text in (GOOD, free)]
    assert sweep_key(sweeps[0]) == sweep_key(sweeps[1])
    # 2 ranks per trial: every trial gets 2 ranks, and concurrency is what is left to fit
    two = _check(tmp_path, free + "trial_compute: {cpu_procs: 2, threads_per_proc: 1}\n")
    assert {t.config.compute.cpu_procs for t in two.trials} == {2} and two.units_per_trial == 2
    assert two.concurrency == max(1, two.capacity // 2)


def test_tpe_proposes_in_seeded_batches_of_concurrency(tmp_path: Path) -> None:
    """TPE's first round is `concurrency` proposals; its sweep identity includes concurrency
    (it sizes the rounds), and the same file and concurrency plan the same trials."""
    text = RANDOM.replace("search: random", "search: tpe")
    one = _check(tmp_path, text.replace("seed: 3", "seed: 3\nconcurrency: 1"))
    two = _check(tmp_path, text.replace("seed: 3", "seed: 3\nconcurrency: 2"))
    assert [t.id for t in one.trials] == ["t000"] and [t.id for t in two.trials] == ["t000", "t001"]
    again = _check(tmp_path, text.replace("seed: 3", "seed: 3\nconcurrency: 2"))
    assert [t.params for t in again.trials] == [t.params for t in two.trials]
    assert one.key != two.key == again.key


def test_the_sweep_flows_form_describes_every_field() -> None:
    """The Prefect UI renders the sweep deployment's form from the flow's parameter schema:
    one typed `sweep` parameter whose fields carry their descriptions, and whose defaults (the
    infra/prefect.yaml form) validate against it."""
    from prefect.utilities.callables import parameter_schema

    from flows.sweep import sweep_flow

    schema = parameter_schema(sweep_flow).model_dump_for_openapi()
    assert schema["properties"]["sweep"]["$ref"] == "#/definitions/SweepConfig"
    fields = schema["definitions"]["SweepConfig"]["properties"]
    assert schema["definitions"]["SweepConfig"]["required"] == ["base", "space"]
    undocumented = [k for k, v in fields.items() if not v.get("description")]
    assert undocumented == []
    assert fields["search"]["enum"] == ["grid", "random", "tpe"]
    rungs = schema["definitions"]["EarlyStopping"]["properties"]["rungs"]
    assert "train.max_steps" in rungs["description"]
    assert "int" in schema["definitions"]["Range"]["properties"]  # the alias the file uses
