"""PipelineConfig: YAML files, dotted overrides, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from genpar_models.config import PipelineConfig, dump_config, load_config
from genpar_models.errors import ConfigError
from genpar_models.models import check_model_config

REPO = Path(__file__).resolve().parents[2]
# Pipeline configs; sweep files (a `space:` to search, README "Sweeps") are checked by the
# sweep tests.
CONFIGS = sorted(
    p
    for p in (REPO / "configs").glob("*.yaml")
    if "space" not in (yaml.safe_load(p.read_text()) or {})
)


def test_every_shipped_config_is_valid() -> None:
    names = {p.stem for p in CONFIGS}
    assert {"tiny", "digits-vae", "digits-dcgan", "mnist-vae", "mnist-dcgan"} <= names
    for path in CONFIGS:
        cfg = load_config(path)
        assert cfg.name == path.stem


def test_overrides_are_typed() -> None:
    cfg = load_config(
        REPO / "configs/tiny.yaml",
        ["train.lr=3e-4", "model.name=dcgan", "data.max_samples=null", "seed=7"],
    )
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.name == "dcgan"
    assert cfg.data.max_samples is None
    assert cfg.seed == 7


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.lrr=1", "unknown key 'lrr' in train; did you mean 'lr'?"),
        ("trian.lr=1", "unknown key 'trian'"),
        ("train.lr=-1", "train.lr: Input should be greater than 0"),
        ("train.max_steps=ten", "train.max_steps"),
        ("data.image_size=7", "data.image_size: must be an even number from 8 to 128, got 7"),
        ("data.image_size=0", "data.image_size"),
        ("model.name=not a name!", "model.name"),
        ("compute.cpu_procs=0", "compute.cpu_procs"),
        ("train.lr", "expected key.path=value"),
        ("data.source=folder", "data.path is required for source 'folder'"),
        ("train.lr.x=1", "train.lr is not a section"),
    ],
)
def test_bad_override_names_the_field(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(REPO / "configs/tiny.yaml", [override])
    assert needle in str(exc.value)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.name=vea", "unknown model family 'vea'; did you mean 'vae'?"),
        ("model.name=gpt", "unknown model family 'gpt' (known: dcgan, "),
        ("model.likelihood=gaussian", "the dcgan family does not read model.likelihood"),
    ],
)
def test_model_section_is_checked_against_the_families(override: str, needle: str) -> None:
    """The family check runs before any work too (the CLI and preflight call it), without
    importing torch (tests/unit/test_layers.py)."""
    cfg = load_config(REPO / "configs/tiny.yaml", ["model.name=dcgan", override])
    with pytest.raises(ConfigError) as exc:
        check_model_config(cfg)
    assert needle in str(exc.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_step: 10\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value) and "train.max_step" in str(exc.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)


def test_config_is_frozen_and_round_trips(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs/mnist-vae.yaml")
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type
        cfg.seed = 3  # type: ignore[misc]
    path = tmp_path / "again.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert PipelineConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_flat_params_and_train_key() -> None:
    cfg = load_config(REPO / "configs/tiny.yaml")
    flat = cfg.flat()
    assert flat["train.lr"] == cfg.train.lr and flat["data.source"] == "digits"
    other_eval = load_config(
        REPO / "configs/tiny.yaml", ["evaluate.num_samples=500", "compute.cpu_procs=1"]
    )
    other_train = load_config(REPO / "configs/tiny.yaml", ["train.lr=0.1"])
    assert cfg.train_key("s") == other_eval.train_key("s")  # eval/compute do not change weights
    assert cfg.train_key("s") != other_train.train_key("s")
    assert cfg.train_key("s") != cfg.train_key("t")  # other data


def test_credentials_never_reach_a_config_so_never_params_or_dumps() -> None:
    uri = "postgresql://alice:s3cret@db.internal:5432/mlflow"
    with pytest.raises(ConfigError, match="tracking.uri: holds credentials"):
        load_config(REPO / "configs/tiny.yaml", [f"tracking.uri={uri}"])
    cfg = load_config(REPO / "configs/tiny.yaml", ["tracking.uri=http://db.internal:5000"])
    assert cfg.flat()["tracking.uri"] == "http://db.internal:5000"
    assert "s3cret" not in dump_config(cfg.redacted())


@pytest.mark.parametrize(
    ("name", "key", "identity"),
    [  # what genpar computed before model.arch/conditional/options and generate.label existed
        ("tiny.yaml", "7731295e5fdb4caa", "0c29a9e750b6a17e"),
        ("mnist-gan-hinge.yaml", "670adb1fcc9e29ea", "b0e65e1694400c88"),
        ("sines-rvae.yaml", "78651482589b7734", "de11e4e59e56df24"),
    ],
)
def test_new_fields_at_their_defaults_keep_the_keys_of_earlier_versions(
    name: str, key: str, identity: str
) -> None:
    """Upgrading genpar neither orphans an interrupted run's checkpoints (train_key) nor
    makes the nightly retrain see a changed config (run_identity); set, the fields count."""
    from tests.conftest import REPO

    cfg = load_config(REPO / "configs" / name)
    assert (cfg.train_key("abc"), cfg.run_identity()) == (key, identity)
    if cfg.model.name != "rvae":
        other = load_config(REPO / "configs" / name, ["model.arch=resnet"])
        assert other.train_key("abc") != key and other.run_identity() != identity
