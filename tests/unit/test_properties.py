"""Property-based tests: config parsing and manifest reading never fail in an unplanned way."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genpar_models.config import PipelineConfig, build_config, flatten, load_config
from genpar_models.data.shards import open_shard_set
from genpar_models.errors import ConfigError, ShardError
from tests.conftest import TINY
from tests.helpers import make_shard_set

KEYS = sorted(flatten(PipelineConfig().model_dump(mode="json")))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.one_of(st.sampled_from(KEYS), st.text(max_size=20)),
    raw=st.one_of(st.text(max_size=20), scalars.map(json.dumps)),
)
def test_any_override_gives_a_config_or_a_config_error(key: str, raw: str) -> None:
    try:
        cfg = load_config(TINY, [f"{key}={raw}"])
    except ConfigError as e:
        assert str(e)  # always a message
    else:
        assert isinstance(cfg, PipelineConfig)


@settings(max_examples=200, deadline=None)
@given(
    tree=st.dictionaries(
        st.sampled_from([*PipelineConfig.model_fields, "bogus"]), values, max_size=4
    )
)
def test_any_yaml_tree_gives_a_config_or_a_config_error(tree: dict) -> None:
    try:
        build_config(tree, "fuzz")
    except ConfigError as e:
        assert str(e).startswith("invalid config (fuzz)")


@pytest.fixture(scope="module")
def shard_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shard_set(tmp_path_factory.mktemp("tpl") / "set", load_config(TINY), n=60)


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_manifest_is_accepted_or_refused_cleanly(
    data, shard_template: Path, tmp_path: Path
) -> None:
    target = Path(tempfile.mkdtemp(dir=tmp_path)) / "set"
    shutil.copytree(shard_template, target)
    manifest = json.loads((target / "manifest.json").read_text())
    where = data.draw(st.sampled_from(_paths(manifest)[1:]))
    node = manifest
    for part in where[:-1]:
        node = node[part]
    if data.draw(st.booleans()) and isinstance(node, dict):
        del node[where[-1]]
    else:
        node[where[-1]] = data.draw(values)
    (target / "manifest.json").write_text(json.dumps(manifest))
    try:
        open_shard_set(target)
    except ShardError as e:
        assert "manifest.json" in str(e) or ".npy" in str(e)
