"""torchrun's agent, leaving without the interpreter's teardown, and forking its CPU ranks.

`python -m genpar_models.train.agent ARGS` is `python -m torch.distributed.run ARGS` (the same
`main`, arguments, rendezvous, restarts and error files); the training task launches this one
because the agent's exit is on every run's critical path: the task waits for it after the
ranks are done, and a process with torch loaded spends most of a second finalising modules
(genpar_models/util/leave.py). A failing job raises out of `main` and exits the usual way, with
torchrun's own status and traceback. It dies with the process that launched it
(genpar_models/util/parent.py), asked for before torch is imported.

With GENPAR_FORK_RANKS=1 (tasks/launcher.py sets it for one node of CPU ranks), the ranks of
`-m genpar_models.train` are forked from this agent instead of started as fresh interpreters:
the agent imports torch and the training code once, and every rank (and every elastic restart)
starts with them loaded. Each fresh rank otherwise spent 2-4 s importing them, on 2 cores at the
same time, before its first step. torchrun's own function-entrypoint path does the rest (its
start method "fork": environment, log redirection and tee, error files, signals, restarts). A
CUDA job never forks (a child cannot use a CUDA context its parent may hold), nor a multi-node
one; both keep torchrun's fresh processes.
"""

from __future__ import annotations

import os

from genpar_models.util.parent import die_with_parent

FORK_ENV = "GENPAR_FORK_RANKS"
RANK_MODULE = "genpar_models.train"


def _forking(config_from_args):
    """torchrun's `config_from_args`, answering a function entrypoint (the rank's main, already
    imported here) and start method fork for `-m genpar_models.train` when FORK_ENV is 1."""

    def config(args):
        launch, cmd, cmd_args = config_from_args(args)
        if os.environ.get(FORK_ENV) != "1" or not (
            args.module and args.training_script == RANK_MODULE and not args.no_python
        ):
            return launch, cmd, cmd_args
        import torch._dynamo  # noqa: F401 - what DDP and the first optimizer import, ~1 s

        from genpar_models.train.__main__ import rank_entry  # torch and the loop, once, here

        launch.start_method = "fork"
        return launch, rank_entry, list(args.training_script_args)

    return config


if __name__ == "__main__":
    die_with_parent()

    import torch.distributed.run as torchrun

    from genpar_models.util.leave import exit_now

    torchrun.config_from_args = _forking(torchrun.config_from_args)
    torchrun.main()
    exit_now(0)
