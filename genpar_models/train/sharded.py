"""Sharded checkpoints (compute.strategy=fsdp): torch.distributed.checkpoint, staged, committed
whole, verified on read, and read without unpickling anything but DCP's own index.

Every rank writes its shards of the model and optimizer state with `dcp.save` into one staging
directory (rank 0 creates it, beside the final name, and hands its path to the others); when
all ranks are done, rank 0 hashes every file, renames the directory to `ckpt-<step>.dcp` and
writes the sidecar `ckpt-<step>.json` last (its file list with sha256, the optimizers'
hyperparameters and non-tensor state, the layout). A checkpoint exists only once its sidecar
does, and one whose files do not match it is skipped like a corrupt safetensors checkpoint.

Only tensors go into DCP: its non-tensor items would be unpickled on load (weights_only=
False), so optimizer hyperparameters live in the JSON sidecar instead, and a checkpoint with
any non-tensor item is refused. DCP's index (`.metadata`) is a pickle; it is read with an
unpickler that admits DCP's metadata classes, torch sizes and dtypes and nothing else, and
only after its hash matched the sidecar. DCP reshards on load: a checkpoint saved by 2 ranks
loads into 1 or 3 (train.allow_reshard decides whether a run may).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genpar_models.errors import CheckpointError
from genpar_models.train import checkpoint
from genpar_models.train.dist import DistContext, barrier
from genpar_models.util import atomic
from genpar_models.util.tensorfile import FORMAT

log = logging.getLogger(__name__)

KIND = "dcp"


def sharded_path(directory: Path, step: int) -> Path:
    return directory / f"ckpt-{step:08d}.dcp"


def _states(modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]):
    """(model state, optimizer state) by fully qualified name, DTensors where sharded."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = nn.ModuleDict(modules)  # one tree over the modules (a GAN's two players), no copy
    return root, *get_state_dict(root, optimizers=list(optimizers.values()))


def _split(optim_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Optimizer state -> (tensors for DCP, JSON-able rest: scalars and param_groups)."""
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for fqn, state in optim_state["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors.setdefault(fqn, {})[key] = value
            else:
                scalars.setdefault(fqn, {})[key] = value
    return tensors, {"scalars": scalars, "param_groups": optim_state["param_groups"]}


def _share_path(path: Path | None, ctx: DistContext) -> Path:
    if not ctx.distributed:
        assert path is not None
        return path
    import torch.distributed as tdist

    box = [str(path) if path is not None else None]
    tdist.broadcast_object_list(box, src=0)  # a path string between live ranks
    return Path(box[0])


def save_sharded(
    directory: Path,
    *,
    step: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    meta: dict[str, Any],
    keep: int,
    ctx: DistContext,
) -> Path:
    """Every rank: write this rank's shards; rank 0 commits the directory and its sidecar.
    A collective: every rank calls it at the same step."""
    import torch.distributed.checkpoint as dcp

    _, model_state, optim_state = _states(modules, optimizers)
    tensors, rest = _split(optim_state)
    final = sharded_path(directory, step)
    if not ctx.is_main:
        dcp.save({"model": model_state, "optim": tensors}, checkpoint_id=_share_path(None, ctx))
        barrier(ctx)  # rank 0 has committed
        return final
    directory.mkdir(parents=True, exist_ok=True)
    if final.exists():  # a restarted attempt redoing a step: replace what it committed
        final.with_suffix(".json").unlink(missing_ok=True)
        atomic.retire(final)
    with atomic.staged_directory(final) as staging:
        dcp.save({"model": model_state, "optim": tensors}, checkpoint_id=_share_path(staging, ctx))
        files = {p.name: atomic.sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
    sidecar = {
        **meta,
        "format": FORMAT,
        "kind": KIND,
        "step": step,
        "files": files,
        "optimizer_state": rest,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    atomic.write_json(final.with_suffix(".json"), sidecar)
    checkpoint.prune_checkpoints(directory, keep=keep)
    barrier(ctx)
    return final


def read_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar of a sharded checkpoint, after checking every file it lists.

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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("kind") != KIND:
        raise CheckpointError(f"{sidecar}: not a genpar sharded checkpoint sidecar")
    files = meta.get("files")
    if not isinstance(files, dict) or ".metadata" not in files:
        raise CheckpointError(f"{sidecar}: lists no DCP files")
    present = {p.name for p in path.iterdir() if p.is_file()}
    if present != set(files):
        raise CheckpointError(f"{path}: holds {sorted(present)}, its sidecar lists {sorted(files)}")
    for name, digest in files.items():
        if atomic.sha256_file(path / name) != digest:
            raise CheckpointError(f"{path / name}: sha256 does not match the sidecar (corrupt)")
    return meta


_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_TORCH_NAMES = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath")}


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles DCP's `.metadata` index and refuses anything else (code, other classes)."""

    def find_class(self, module: str, name: str) -> Any:
        if module in _DCP_MODULES and not name.startswith("__"):
            return super().find_class(module, name)
        if (module, name) in _TORCH_NAMES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a DCP index")


def read_index(path: Path):
    """DCP's index of a checkpoint (verified by `read_sidecar` first), tensors only.

    Raises:
        CheckpointError: the index is no DCP metadata, holds code, or non-tensor items.
    """
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        with open(path / ".metadata", "rb") as fh:
            metadata = _IndexUnpickler(fh).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{path / '.metadata'}: not a DCP index: {e}") from None
    items = getattr(metadata, "state_dict_metadata", None)
    if not isinstance(items, dict):
        raise CheckpointError(f"{path / '.metadata'}: not a DCP index")
    for fqn, item in items.items():
        if not isinstance(item, TensorStorageMetadata):
            raise CheckpointError(f"{path}: {fqn} is not a tensor; refusing to load it")
    return metadata


def _reader(path: Path, metadata):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader(str(path))


def load_sharded(
    path: Path,
    meta: dict[str, Any],
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
) -> None:
    """Load a verified sharded checkpoint into (sharded or whole) modules and optimizers,
    resharding onto this run's ranks. A collective under FSDP."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict

    index = read_index(path)
    root, model_state, optim_state = _states(modules, optimizers)
    tensors, _ = _split(optim_state)
    target = {"model": model_state, "optim": tensors}
    try:
        dcp.load(target, storage_reader=_reader(path, index))
    except (CheckpointException, RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: does not fit this run's modules: {e}") from None
    rest = meta["optimizer_state"]
    state = {fqn: dict(v) for fqn, v in target["optim"].items()}
    for fqn, scalars in rest["scalars"].items():
        state.setdefault(fqn, {}).update(scalars)
    set_state_dict(
        root,
        optimizers=list(optimizers.values()),
        model_state_dict=target["model"],
        optim_state_dict={"state": state, "param_groups": rest["param_groups"]},
    )


def restore_latest_sharded(
    directory: Path,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    expect: dict[str, Any],
    layout: dict[str, Any],
    allow_reshard: bool,
) -> checkpoint.Resumed | None:
    """The newest valid, compatible sharded checkpoint, loaded (every rank calls it; each
    verifies the same files, so all ranks pick the same one). Corrupt ones are skipped."""
    skipped: list[str] = []
    for step, path in checkpoint.list_checkpoints(directory):
        if not path.is_dir():
            raise CheckpointError(
                f"{path} is a whole-model checkpoint (compute.strategy=ddp); this run uses "
                "compute.strategy=fsdp. To resume it, run with compute.strategy=ddp; to start "
                "over, set train.resume=false."
            )
        try:
            meta = read_sidecar(path)
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s", e)
            skipped.append(str(e))
            continue
        checkpoint.check_compatible(meta, expect, path)
        resharded = checkpoint.check_layout(
            meta.get("layout"), layout, path, allow_reshard=allow_reshard
        )
        load_sharded(path, meta, modules, optimizers)
        return checkpoint.Resumed(step, path, meta, skipped, resharded_from=resharded)
    return None
