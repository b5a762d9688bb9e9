"""Which rank's error becomes the training failure's message (torchelastic error.json files)."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.launcher import first_rank_error

GLOO = (
    "RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed "
    "by peer [127.0.0.1]:12345 ... typically caused by a remote worker crashing."
)


def _error(log_dir: Path, attempt: int, rank: int, stamp: int, message: str) -> None:
    path = log_dir / "job_x" / f"attempt_{attempt}" / str(rank) / "error.json"
    path.parent.mkdir(parents=True)
    extra = {"timestamp": str(stamp), "py_callstack": f"stack of rank {rank}"}
    path.write_text(json.dumps({"message": {"message": message, "extraInfo": extra}}))


def test_cause_wins_over_a_peer_lost_reaction(tmp_path: Path) -> None:
    """Stamps are whole seconds, and the failing rank may stamp its error after the peer has
    already reported the lost connection: the reaction must not become the message."""
    _error(tmp_path, 0, 1, 99, GLOO)
    _error(tmp_path, 0, 0, 100, "OSError: [Errno 28] No space left on device: ckpt-00000010")
    message = first_rank_error(tmp_path)
    assert message is not None and message.startswith("rank 0 failed: OSError")


def test_earliest_error_of_the_last_attempt(tmp_path: Path) -> None:
    _error(tmp_path, 0, 0, 50, "ValueError: first attempt")
    _error(tmp_path, 1, 0, 101, "ValueError: later")
    _error(tmp_path, 1, 1, 100, "KeyError: earlier")
    message = first_rank_error(tmp_path)
    assert message is not None and message.startswith("rank 1 failed: KeyError: earlier")


def test_only_reactions_still_name_a_rank(tmp_path: Path) -> None:
    _error(tmp_path, 0, 1, 100, GLOO)
    message = first_rank_error(tmp_path)
    assert message is not None and message.startswith("rank 1 failed:")
    assert first_rank_error(tmp_path / "nothing") is None
