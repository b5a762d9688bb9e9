"""Checkpoints that hold tensors only: safetensors plus a JSON sidecar; nothing is unpickled.

A checkpoint `ckpt-00000200.safetensors` holds the model's state_dict and the optimizers'
tensor state; `ckpt-00000200.json` holds the rest (step, the model spec, the train key, the
optimizer's non-tensor state, fp16's gradient-scaler state, and the sha256 of the tensor
file). The tensor file is written
first and the sidecar last, both atomically, so a checkpoint exists only once it is complete.
A checkpoint whose hash does not match (truncated, flipped bytes) is skipped, and the newest
valid one wins. The same tensor format, with one module, is the exported model
(genpar_models/models/export.py). Under compute.strategy=fsdp a checkpoint is a directory
`ckpt-00000200.dcp` written by every rank (train/sharded.py) beside the same kind of sidecar;
both kinds are listed, pruned and ordered here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genpar_models.errors import CheckpointError
from genpar_models.util import atomic, tensorfile
from genpar_models.util.tensorfile import FORMAT

log = logging.getLogger(__name__)

_CKPT = re.compile(r"^ckpt-(\d{8})\.(safetensors|dcp)$")


def _tensors_of(
    modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten module and optimizer state into {name: tensor} plus JSON-able leftovers."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"model.{name}.{key}"] = value.detach().cpu().contiguous()
    optim_meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, state in sd["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{name}.{pid}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        optim_meta[name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, optim_meta


def _restore(
    tensors: dict[str, torch.Tensor],
    optim_meta: dict[str, Any],
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
) -> None:
    for name, module in modules.items():
        prefix = f"model.{name}."
        sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint does not fit module {name!r}: {e}") from None
    for name, opt in optimizers.items():
        meta = optim_meta[name]
        state: dict[int, dict[str, Any]] = {}
        prefix = f"optim.{name}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, field = key[len(prefix) :].split(".", 1)
                state.setdefault(int(pid), {})[field] = value
        for pid, scalars in meta["scalars"].items():
            state.setdefault(int(pid), {}).update(scalars)
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"ckpt-{step:08d}.safetensors"


def save_checkpoint(
    directory: Path,
    *,
    step: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write a checkpoint atomically (tensors, then sidecar) and prune old ones."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors, optim_meta = _tensors_of(modules, optimizers)
    path = checkpoint_path(directory, step)
    digest, size = tensorfile.write_tensors(path, tensors)
    sidecar = {
        **meta,
        "format": FORMAT,
        "step": step,
        "sha256": digest,
        "size_bytes": size,
        "optimizers": optim_meta,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    atomic.write_json(path.with_suffix(".json"), sidecar)
    prune_checkpoints(directory, keep=keep)
    return path


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint tensor file, newest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CKPT.match(p.name))]
    return sorted(found, reverse=True)


def prune_checkpoints(directory: Path, *, keep: int) -> None:
    for _, path in list_checkpoints(directory)[keep:]:
        path.with_suffix(".json").unlink(missing_ok=True)
        if path.is_dir():
            atomic.retire(path)
        else:
            path.unlink(missing_ok=True)


def read_verified(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint, checking the sidecar, the sha256 and the safetensors format.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no sidecar {sidecar.name}; incomplete checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{sidecar}: not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar}: not a genpar checkpoint sidecar (format {FORMAT})")
    return tensorfile.read_tensors(path, meta.get("sha256"), listed_in="sidecar"), meta


def check_compatible(meta: dict[str, Any], expect: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint from another model or config (e.g. model_spec, train_key)."""
    for key, want in expect.items():
        have = meta.get(key)
        if have != want:
            raise CheckpointError(
                f"{path}: belongs to a different {key} (checkpoint {have!r}, expected {want!r})"
            )


def check_layout(
    have: dict[str, Any] | None,
    want: dict[str, Any],
    path: Path,
    *,
    allow_reshard: bool = False,
) -> int | None:
    """Refuse to resume under another process layout (world size, device, precision,
    strategy); return the checkpoint's world size when it is resharded onto this one.

    The global batch and the data order follow the world size, the noise streams the ranks,
    the numbers the precision: resuming under another layout would silently change the
    experiment. A checkpoint written before layouts were recorded (`have` None) is accepted;
    one written before strategies were recorded was DDP's. A sharded (fsdp) checkpoint may
    change world size with `allow_reshard` (train.allow_reshard), nothing else.

    Raises:
        CheckpointError: naming what differs and the settings that resume exactly.
    """
    if have is None:
        return None
    have = {"strategy": "ddp", **have}
    diffs = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if not diffs:
        return None
    if allow_reshard and set(diffs) == {"world_size"} and want.get("strategy") == "fsdp":
        return int(have["world_size"])
    changed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diffs.items())
    fixes = []
    if "device" in diffs:
        fixes.append(f"compute.device={have['device']}")
    if "world_size" in diffs:
        ranks = have["world_size"]
        on = have.get("device", want["device"])
        fixes.append(f"compute.cpu_procs={ranks}" if on == "cpu" else f"{ranks} visible GPUs")
    if "precision" in diffs:
        fixes.append(f"train.precision={have['precision']}")
    if "strategy" in diffs:
        fixes.append(f"compute.strategy={have['strategy']}")
    reshard = ""
    if "world_size" in diffs and have["strategy"] == "fsdp" == want.get("strategy"):
        reshard = (
            "; to reshard this fsdp checkpoint onto this run's ranks (not an exact resume), "
            "set train.allow_reshard=true"
        )
    raise CheckpointError(
        f"{path} was written with {_layout(have)}, this run has {_layout(want)} ({changed}): "
        "resuming would silently change the experiment (the global batch and data order follow "
        "the world size, the noise the ranks, the numbers the precision). To resume exactly, "
        f"run with {' and '.join(fixes)}{reshard}; to start over, set train.resume=false."
    )


def _layout(layout: dict[str, Any]) -> str:
    ranks = f"{layout.get('world_size')} {layout.get('device')} rank(s)"
    return f"{ranks} in {layout.get('precision')} ({layout.get('strategy', 'ddp')})"


@dataclass
class Resumed:
    step: int
    path: Path
    meta: dict[str, Any]
    skipped: list[str]
    resharded_from: int | None = None  # the world size a resharded checkpoint was saved by


def restore_latest(
    directory: Path,
    *,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    expect: dict[str, Any],
    layout: dict[str, Any] | None = None,
) -> Resumed | None:
    """Load the newest valid, compatible checkpoint into modules and optimizers.

    Corrupt checkpoints are skipped (and reported in `skipped`); a checkpoint from a
    different model or config, or (with `layout`) one written under another process layout,
    raises, because resuming it would silently train the wrong thing.
    """
    skipped: list[str] = []
    for step, path in list_checkpoints(directory):
        if path.is_dir():
            raise CheckpointError(
                f"{path} is a sharded checkpoint (compute.strategy=fsdp); this run uses "
                "compute.strategy=ddp. To resume it, run with compute.strategy=fsdp; to start "
                "over, set train.resume=false."
            )
        try:
            tensors, meta = read_verified(path)
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s", e)
            skipped.append(str(e))
            continue
        check_compatible(meta, expect, path)
        if layout is not None:
            check_layout(meta.get("layout"), layout, path)
        _restore(tensors, meta["optimizers"], modules, optimizers)
        return Resumed(step=step, path=path, meta=meta, skipped=skipped)
    return None
