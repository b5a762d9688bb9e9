"""The `champion` alias: moved by compare-and-set, every move recorded with who, when and why.

MLflow keeps no history of an alias, so genpar records one: each move is a tag on the
registered model (`genpar.champion.history.<UTC time>` = JSON: action, version, previous
version, by, reason, flow run) and a few tags on the versions involved (`champion.action`,
`champion.by`, `champion.at`, `champion.reason` on the new champion; `champion.left_at`,
`champion.left_for` on the one it replaced). `genpar champion NAME` prints the history,
`genpar rollback NAME` walks it back.

`move` is a compare-and-set: it sets the alias only while it still points at the version the
caller saw (the nightly retrain passes the champion it found when the night started), and
raises `AliasMoved` otherwise, so a night never overwrites a promotion or rollback someone made
while it trained. MLflow offers no atomic alias update: the check and the set are two calls.
Nightlies of one registered model never run at once (they hold one Prefect concurrency slot per
registered model, flows/nightly.py), so the remaining window is a manual command landing in
the milliseconds between those two calls; the history then shows both moves.

Plain functions over an MlflowClient; the nightly's tasks and the CLI call them.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from genpar_models.errors import GenparError
from tasks import registry
from tasks.registry import ALIAS, ModelNotFound

HISTORY_PREFIX = f"genpar.{ALIAS}.history."
REASON_LIMIT = 3000  # tag values hold 5000 characters; the entry's JSON wraps the reason


class AliasMoved(GenparError):
    """The alias no longer points at the version the caller expected."""


def who() -> str:
    """user@host of this process, for the history."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_version(client: MlflowClient, name: str, version: str) -> None:
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise ModelNotFound(f"registered model {name!r} has no version {version}") from None


def move(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    expected: str | None,
    action: str,
    reason: str,
    by: str,
    flow_run: str | None = None,
) -> dict[str, Any]:
    """Point `name@champion` at `version` if it still points at `expected` (None: no
    champion); record the move. Returns the history entry (action "none" when the alias
    already points at `version`: nothing is moved or recorded).

    Raises:
        AliasMoved: the alias points elsewhere now (names both versions).
        ModelNotFound: `version` does not exist.
    """
    _check_version(client, name, version)
    current = registry.alias_version(client, name, ALIAS)
    if current == str(version):  # already there (a retried call that got through): no move
        return {"action": "none", "version": current, "previous": current}
    if current != expected:
        raise AliasMoved(
            f"{name}@{ALIAS} is version {current or 'none'} now, not version "
            f"{expected or 'none'} as when this started: not moving it to version {version}"
        )
    when = _now()
    client.set_registered_model_alias(name, ALIAS, str(version))
    entry = {
        "time": when.isoformat(timespec="seconds"),
        "action": action,
        "version": str(version),
        "previous": current,
        "by": by,
        "reason": reason[:REASON_LIMIT],
        "flow_run": flow_run,
    }
    stamp = when.strftime("%Y%m%dT%H%M%S.%fZ")
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{stamp}", json.dumps(entry))
    tags = {"action": action, "by": by, "at": entry["time"], "reason": entry["reason"]}
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), f"{ALIAS}.{key}", value)
    if current is not None and current != str(version):
        client.set_model_version_tag(name, current, f"{ALIAS}.left_at", entry["time"])
        client.set_model_version_tag(name, current, f"{ALIAS}.left_for", str(version))
    return entry


def history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Every recorded move of `name@champion`, oldest first."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        raise ModelNotFound(f"no registered model {name!r}") from None
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(HISTORY_PREFIX))]


def rollback_target(entries: list[dict[str, Any]], current: str | None) -> str | None:
    """The champion before the current one: history read as a stack (a promotion pushes its
    version, a rollback pops one), so rolling back twice goes back two champions. An alias
    set outside genpar counts as pushed. None: there is no earlier champion."""
    stack: list[str] = []
    for entry in entries:
        if entry["action"] == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(entry["version"])
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)
    while len(stack) > 1 and stack[-2] == current:  # promoted twice in a row: skip repeats
        stack.pop()
    return stack[-2] if len(stack) > 1 else None


def rollback(client: MlflowClient, name: str, *, reason: str, by: str) -> dict[str, Any]:
    """Put the previous champion back (see `rollback_target`).

    Raises:
        ModelNotFound: no champion, or none before it.
    """
    current = registry.alias_version(client, name, ALIAS)
    if current is None:
        raise ModelNotFound(f"registered model {name!r} has no {ALIAS!r} to roll back")
    target = rollback_target(history(client, name), current)
    if target is None:
        raise ModelNotFound(
            f"{name}@{ALIAS} is version {current} and no earlier champion is recorded: nothing "
            f"to roll back to (put one back by hand: genpar promote {name} VERSION)"
        )
    return move(client, name, target, expected=current, action="rollback", reason=reason, by=by)
