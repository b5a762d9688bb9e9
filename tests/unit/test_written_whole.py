"""Every file another stage or a user reads is written whole or not at all (util/atomic.py).

A static rule, like the pickle rule in test_layers.py: code outside util/atomic.py may not
write a file directly with Path.write_text/write_bytes, a figure's savefig or an image's save,
because a crash mid-write would leave a partial report, summary, config, grid or plot.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DIRECT = {"write_text", "write_bytes", "savefig"}
# Writes that nothing else reads as a whole, or that write through a temp path already.
ALLOWED = {
    "genpar_models/util/atomic.py",  # the one place that writes, then renames
    "genpar_models/util/lease.py",  # tmp + os.replace of its own (atomic.py builds on it)
    "flows/cli/docs.py",  # rewrites README.md in a checkout (a developer tool)
    # torch.distributed.checkpoint writes each rank's shard into a staging directory that is
    # renamed whole and verified by its sidecar's sha256s (train/sharded.py)
    "genpar_models/train/sharded.py",
    "genpar_models/train/loop.py",  # persist.save: the checkpoint writers (atomic inside)
}


def _atomic_targets(tree: ast.AST) -> set[str]:
    """Names bound by `with atomic.atomic_path(...) as NAME`: writing to them is whole."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With):
            for item in node.items:
                call = item.context_expr
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "atomic_path"
                    and isinstance(item.optional_vars, ast.Name)
                ):
                    names.add(item.optional_vars.id)
    return names


def _direct_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    whole = _atomic_targets(tree)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        func = node.func
        if isinstance(func.value, ast.Name) and func.value.id == "atomic":
            continue  # atomic.write_text(...) and friends
        target = func.value if func.attr in ("write_text", "write_bytes") else None
        if func.attr in ("savefig", "save") and node.args:
            target = node.args[0]
        elif func.attr == "save":
            continue
        if func.attr not in DIRECT | {"save"}:
            continue
        if isinstance(target, ast.Name) and target.id in whole:
            continue
        if isinstance(target, ast.Call) and getattr(target.func, "attr", None) == "BytesIO":
            continue  # an in-memory buffer, not a file
        found.append(f"line {node.lineno}: .{func.attr}(")
    return found


def test_files_are_written_through_atomic_writes() -> None:
    offenders = {}
    for d in ("genpar_models", "tasks", "flows", "infra"):
        for p in (REPO / d).rglob("*.py"):
            rel = str(p.relative_to(REPO))
            if rel not in ALLOWED and (found := _direct_writes(p)):
                offenders[rel] = found
    assert offenders == {}
