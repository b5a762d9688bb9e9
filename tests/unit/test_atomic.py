"""Whole-or-nothing files and directories: the one staging helper every stage commits through."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from genpar_models.util import atomic


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "x.npy"
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_staged_directory_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "set"
    with atomic.staged_directory(final) as staging:
        (staging / "a").write_text("1")
        assert not final.exists()  # nothing visible while it is being written
    assert (final / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic.staged_directory(tmp_path / "other") as staging:
        (staging / "a").write_text("half")
        raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no staging left behind


def test_staged_directory_keeps_the_first_winner(tmp_path: Path) -> None:
    final = tmp_path / "key"
    with atomic.staged_directory(final) as ours:
        (ours / "who").write_text("ours")
        final.mkdir()  # a concurrent writer of the same address commits first
        (final / "who").write_text("theirs")
    assert (final / "who").read_text() == "theirs"  # same address, same content: theirs kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_staged_directory_replace_retires_the_old_one(tmp_path: Path) -> None:
    final = tmp_path / "samples"
    final.mkdir()
    (final / "old").write_text("x")
    with atomic.staged_directory(final, replace=True) as staging:
        (staging / "new").write_text("y")
        assert (final / "old").exists()  # the old set stays readable until the new is whole
    assert [p.name for p in final.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]


def test_stale_staging_of_dead_process_is_removed(tmp_path: Path) -> None:
    dead = tmp_path / f"{atomic.STAGING_PREFIX}abc-999999999-0123abcd"
    alive = tmp_path / f"{atomic.STAGING_PREFIX}abc-{os.getpid()}-0123abcd"
    dead.mkdir()
    alive.mkdir()
    assert atomic.remove_dead_staging(tmp_path) == [dead]
    assert not dead.exists() and alive.exists()


def test_retire_makes_a_directory_vanish_at_once(tmp_path: Path) -> None:
    victim = tmp_path / "old"
    victim.mkdir()
    (victim / "f").write_text("x")
    atomic.retire(victim)
    assert list(tmp_path.iterdir()) == []


def test_replacing_a_directory_never_leaves_its_name_missing(tmp_path: Path) -> None:
    """A reader that opens the directory by name while it is being replaced sees the old or
    the new content, never nothing (the two are swapped in one rename)."""
    final = tmp_path / "set"
    with atomic.staged_directory(final) as staging:
        (staging / "data").write_text("0")
    errors: list[Exception] = []
    seen: set[str] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.add((final / "data").read_text())
            except OSError as e:
                errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 150):
            with atomic.staged_directory(final, replace=True) as staging:
                (staging / "data").write_text(str(i))
    finally:
        done.set()
        reader.join()
    assert errors == []
    assert (final / "data").read_text() == "149" and len(seen) > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_write_npys_matches_write_npy_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    import numpy as np

    arrays = [np.arange(12, dtype=np.uint8).reshape(3, 4), np.array([1, -1], np.int64)]
    one = [atomic.write_npy(tmp_path / f"one{i}.npy", a) for i, a in enumerate(arrays)]
    batch = atomic.write_npys([(tmp_path / f"b{i}.npy", a) for i, a in enumerate(arrays)])
    assert batch == one  # the same bytes, so the same sha256 a manifest records
    for i in range(2):
        assert (tmp_path / f"b{i}.npy").read_bytes() == (tmp_path / f"one{i}.npy").read_bytes()
    assert not [p for p in tmp_path.iterdir() if atomic.TMP_MARK in p.name]
    # the second file cannot be written: the first is not published, no temporary stays
    with pytest.raises(OSError):
        atomic.write_npys(
            [(tmp_path / "c0.npy", arrays[0]), (tmp_path / "no" / "c1.npy", arrays[1])]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["one0.npy", "one1.npy", "b0.npy", "b1.npy"]
    )


def test_write_npys_flushes_every_file_before_any_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flushes run concurrently (one journal commit for several files); the order that
    makes the batch durable stays: every file fsynced, then renamed, then its directory."""
    import numpy as np

    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        with lock:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        real_replace(src, dst)
        with lock:
            events.append(("replace", os.fspath(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    names = [tmp_path / f"s{i}.npy" for i in range(5)]
    atomic.write_npys([(p, np.full(4, i, np.uint8)) for i, p in enumerate(names)])
    monkeypatch.undo()
    flushed = [path for kind, path in events[:5] if kind == "fsync"]
    assert len(flushed) == 5 and all(atomic.TMP_MARK in Path(p).name for p in flushed)
    assert sorted(Path(p).name.split(atomic.TMP_MARK)[0] for p in flushed) == [
        p.name for p in names
    ]
    assert events[5:10] == [("replace", str(p)) for p in names]
    assert events[10:] == [("fsync", str(tmp_path))]
    assert [int(np.load(p)[0]) for p in names] == list(range(5))
