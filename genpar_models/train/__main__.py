"""Training entry point: one process, or one rank of a torchrun job.

Alone (one process, no process group)::

    python -m genpar_models.train --spec RUN_DIR/spec.json

One node, two CPU ranks with gloo (what `genpar run` launches by default)::

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        -m genpar_models.train --spec RUN_DIR/spec.json

Several nodes (run on every node; shards and RUN_DIR on shared storage)::

    python -m torch.distributed.run --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 --rdzv-id JOB -m genpar_models.train --spec RUN_DIR/spec.json

The run spec (written by the Prefect training task) holds the config, the shard directory,
the run directory and the MLflow run; rank 0 writes `result.json` next to it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from genpar_models.train.dist import cleanup_distributed, setup_distributed
from genpar_models.train.loop import train
from genpar_models.train.runspec import read_spec
from genpar_models.util import malloc


def _configure_logging(rank: int) -> None:
    # Only rank 0 speaks at INFO; the other ranks report warnings and errors.
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )


@record  # a failing rank's traceback lands in torchelastic's error.json for the launcher
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m genpar_models.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--spec", required=True, help="path to the run spec JSON")
    args = parser.parse_args(argv)
    malloc.tune()  # before the first tensor: freed activations stay mapped (util/malloc.py)
    spec = read_spec(args.spec)
    ctx = setup_distributed(spec.config.compute.device)
    _configure_logging(ctx.rank)
    try:
        train(spec, ctx)
    finally:
        cleanup_distributed()
    return 0


def _name_process(name: str) -> None:
    """Set this process's name (Linux prctl PR_SET_NAME, 15 bytes at most); else nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME = 15
    except (OSError, AttributeError):
        pass


def rank_entry(*argv: str) -> int:
    """One rank forked from torchrun's agent (genpar_models/train/agent.py, GENPAR_FORK_RANKS):
    `main` on these arguments, with torch and this module already imported by the agent. The
    process then leaves through multiprocessing's own os._exit, without the interpreter's
    teardown, once the agent has read its return value; output is flushed first. Its process
    is named genpar-rank<RANK> (`ps`, psutil's name()): its command line is the agent's."""
    _name_process(f"genpar-rank{os.environ.get('RANK', '')}")
    os.environ["GENPAR_RANK_START"] = "forked"  # result.json says how its ranks started
    # its own session, as torchrun's fresh ranks have: the kernel shares CPU between sessions
    # (autogroup), and forked ranks left in the agent's session got half a share beside other
    # sessions' work (500 steps at load 10: 1,700-2,600 samples/s against 2,300-3,500)
    with contextlib.suppress(OSError):
        os.setsid()
    try:
        return main(list(argv))
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()


def _exit_now(rc: int) -> None:
    """Leave without the interpreter's teardown. With torch loaded, finalising modules and
    garbage costs a rank 0.5-1 s (measured on 2 cores), every launch, and buys nothing here:
    checkpoints, the model and result.json are written whole and closed, metrics were sent
    synchronously. Output is flushed first (torchrun tees it into the logs)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    _exit_now(main())  # an exception propagates as usual (torchelastic's error file)
