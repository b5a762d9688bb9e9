"""The folder source: a directory tree of image files, class subfolders becoming labels.

Listing walks the tree in sorted order (by path components), skips hidden files and folders
(names starting with "."), keeps files with an image extension and records the rest as ignored.
Either every image sits in a first-level subfolder (the sorted subfolder names are the classes)
or every image sits in the root (unlabelled); a mix is refused. The fingerprint hashes
(relative path, size, mtime_ns) of every image instead of the pixels: cheap on large trees, and
it changes whenever a file is rewritten or touched.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from genpar_models.config import DataConfig
from genpar_models.data.images import decode_image, to_array
from genpar_models.data.sources.types import (
    MAX_IGNORED_LISTED,
    Partition,
    PartitionSpec,
    SourceInfo,
    capped,
    resolve_path,
)
from genpar_models.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def scan_folder(root: Path) -> tuple[list[str], list[str]]:
    """(image files, other files) as relative POSIX paths, sorted by path components.

    Plain string operations, not a Path per file: this survey runs serially before the parallel
    stage starts, so its per-file cost is paid on one core (pathlib made it ~3x slower).
    """
    images: list[str] = []
    ignored: list[str] = []
    top = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, top)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        for name in filenames:
            if name.startswith("."):
                continue
            is_image = os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
            (images if is_image else ignored).append(prefix + name)

    def by_parts(rel: str) -> list[str]:
        return rel.split("/")

    return sorted(images, key=by_parts), sorted(ignored, key=by_parts)


def folder_classes(root: Path, images: list[str], cfg: DataConfig) -> tuple[str, ...]:
    """Sorted first-level folder names holding images, or () when all images are in the root."""
    at_root = [rel for rel in images if "/" not in rel]
    if len(at_root) == len(images):
        return ()
    if at_root:
        shown = ", ".join(at_root[:5]) + (", ..." if len(at_root) > 5 else "")
        raise DataError(
            f"{root}: {len(at_root)} image(s) sit in the root folder ({shown}) while others sit "
            "in class subfolders; move the root-level images into class folders, or remove the "
            "subfolders for unlabelled data"
        )
    classes = tuple(sorted({rel.split("/", 1)[0] for rel in images}))
    if cfg.num_classes is not None and len(classes) > cfg.num_classes:
        raise DataError(
            f"{root}: {len(classes)} class folders ({', '.join(classes[:10])}) but "
            f"data.num_classes={cfg.num_classes}"
        )
    return classes


def folder_fingerprint(root: Path, images: list[str]) -> str:
    digest = hashlib.sha256(b"folder\n")
    top = os.fspath(root)
    for rel in images:
        st = os.stat(os.path.join(top, rel))
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def survey_folder(cfg: DataConfig) -> tuple[SourceInfo, tuple[str, ...]]:
    """(SourceInfo, the image files used, after data.max_samples)."""
    root = resolve_path(cfg)
    if not root.is_dir():
        raise DataError(f"data.path {root} is a file; the folder source expects a directory")
    images, ignored = scan_folder(root)
    if not images:
        raise DataError(
            f"{root}: no images found (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}; "
            f"hidden files skipped; {len(ignored)} other file(s) ignored)"
        )
    classes = folder_classes(root, images, cfg)
    kept = tuple(images[: capped(len(images), cfg)])
    info = SourceInfo(
        kind="folder",
        uri=str(root),
        fingerprint=folder_fingerprint(root, images),
        num_items=len(kept),
        class_names=classes,
        ignored_files=tuple(ignored[:MAX_IGNORED_LISTED]),
    )
    return info, kept


def load_folder(spec: PartitionSpec, cfg: DataConfig) -> Partition:
    """Decode and normalise the files of one partition; failures go to `bad`, never raise."""
    top = spec.uri
    label_of = {name: i for i, name in enumerate(spec.class_names)}
    ids: list[str] = []
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    bad: list[tuple[str, str]] = []
    for rel in spec.items[spec.start : spec.stop]:
        path = os.path.join(top, rel)
        try:
            img = decode_image(path, max_pixels=cfg.max_image_pixels)
            arrays.append(
                to_array(
                    img,
                    channels=cfg.channels,
                    size=cfg.image_size,
                    resize=cfg.resize,
                    alpha_background=cfg.alpha_background,
                )
            )
        except DataError as e:
            reason = str(e)
            bad.append((rel, reason if reason.startswith(str(path)) else f"{path}: {reason}"))
            continue
        ids.append(rel)
        labels.append(label_of.get(rel.split("/", 1)[0], -1) if label_of else -1)
    shape = (len(arrays), cfg.channels, cfg.image_size, cfg.image_size)
    images = np.stack(arrays) if arrays else np.empty(shape, dtype=np.uint8)
    return Partition(spec.index, ids, images, np.asarray(labels, dtype=np.int64), bad)
