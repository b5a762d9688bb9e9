"""torchrun's agent, leaving without the interpreter's teardown.

`python -m genpar_models.train.agent ARGS` is `python -m torch.distributed.run ARGS` (the same
`main`, arguments, rendezvous, restarts and error files); the training task launches this one
because the agent's exit is on every run's critical path: the task waits for it after the
ranks are done, and a process with torch loaded spends most of a second finalising modules
(genpar_models/util/leave.py). A failing job raises out of `main` and exits the usual way, with
torchrun's own status and traceback. It dies with the process that launched it
(genpar_models/util/parent.py), asked for before torch is imported.
"""

from __future__ import annotations

from genpar_models.util.parent import die_with_parent

if __name__ == "__main__":
    die_with_parent()

    from torch.distributed.run import main

    from genpar_models.util.leave import exit_now

    main()
    exit_now(0)
