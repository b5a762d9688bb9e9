"""`genpar generate --out DIR --overwrite` replaces only a sample set genpar wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genpar_models.errors import GenparError
from tasks.generate import check_output


def _sample_set(directory: Path) -> Path:
    directory.mkdir()
    (directory / "samples-00000.npy").write_bytes(b"x")
    (directory / "grid.png").write_bytes(b"x")
    (directory / "samples.json").write_text(json.dumps({"seed": 0, "chunks": []}))
    return directory


def test_overwrite_refuses_a_directory_genpar_did_not_write(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(GenparError, match=r"is not a genpar sample set \(it holds thesis.tex\)"):
        check_output(home, overwrite=True)
    assert (home / "thesis.tex").read_text() == "years of work"


def test_overwrite_refuses_a_sample_set_with_foreign_files(tmp_path: Path) -> None:
    out = _sample_set(tmp_path / "samples")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(GenparError, match="notes.txt"):
        check_output(out, overwrite=True)
    (out / "notes.txt").unlink()
    (out / "samples.json").write_text("not json")
    with pytest.raises(GenparError, match="no valid samples.json"):
        check_output(out, overwrite=True)


def test_overwrite_replaces_a_previous_sample_set_and_empty_dirs_need_nothing(
    tmp_path: Path,
) -> None:
    out = _sample_set(tmp_path / "samples")
    assert check_output(out, overwrite=True) == out.resolve()
    with pytest.raises(GenparError, match="is not empty; choose another directory or --overwrite"):
        check_output(out, overwrite=False)
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", overwrite=False) == (tmp_path / "empty").resolve()
    (tmp_path / "file").write_text("x")
    with pytest.raises(GenparError, match="exists and is not a directory"):
        check_output(tmp_path / "file", overwrite=True)


def test_a_cluster_is_started_only_when_its_start_up_pays() -> None:
    from tasks.dask_stage import CLUSTER_COST_S, dask_pays

    # tiny: 3 chunks left of a few ms each -> this process; 2 workers halve a long job's time
    assert not dask_pays(0.005, 3, workers=2)
    assert dask_pays(1.0, 10, workers=2)  # 10 s alone, 2.5 s + 5 s on two workers
    assert not dask_pays(1.0, 10, workers=1)  # one worker never beats this process
    # the break-even: half of the in-process time saved equals the cluster's cost
    assert not dask_pays(CLUSTER_COST_S * 2 / 10, 10, workers=2)
    assert dask_pays(CLUSTER_COST_S * 2.1 / 10, 10, workers=2)
