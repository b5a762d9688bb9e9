"""Whole-or-nothing file writes: every file another stage reads goes through here.

A file is written to `<name>.tmp-<uuid>` in the same directory, flushed and fsynced, then
`os.replace`d onto its final name, which is atomic on one filesystem: a reader sees the old
file, the new file, or no file, never a prefix. Retries (a Dask task re-run after a lost
worker, an elastic restart) simply write the same file again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from genpar_models.errors import StorageError

TMP_MARK = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    # Make the rename itself durable (POSIX: the directory entry lives in the directory).
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`, else delete it.

    Raises:
        StorageError: the disk or quota is full (naming `path`); nothing is left behind.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise StorageError(
                f"{path}: {os.strerror(e.errno)} while writing; free space or move "
                "GENPAR_HOME (nothing partial was left)"
            ) from e
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: str | Path, data: bytes) -> str:
    """Write `data` atomically; return its sha256 hex."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write_json(path: str | Path, obj: Any) -> str:
    return write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_npy(path: str | Path, array: np.ndarray) -> str:
    """Save one array as .npy atomically (never pickled); return the file's sha256."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return write_bytes(path, buf.getvalue())


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temps(directory: Path) -> int:
    """Delete leftover `*.tmp-*` files from killed writers; return how many."""
    count = 0
    if directory.is_dir():
        for p in directory.iterdir():
            if TMP_MARK in p.name and p.is_file():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    count += 1
    return count
