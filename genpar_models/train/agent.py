"""torchrun's agent, leaving without the interpreter's teardown.

`python -m genpar_models.train.agent ARGS` is `python -m torch.distributed.run ARGS` (the same
`main`, arguments, rendezvous, restarts and error files); the training task launches this one
because the agent's exit is on every run's critical path: the task waits for it after the
ranks are done, and a process with torch loaded spends most of a second finalising modules
(genpar_models/util/leave.py). A failing job raises out of `main` and exits the usual way, with
torchrun's own status and traceback.
"""

from __future__ import annotations

from torch.distributed.run import main

from genpar_models.util.leave import exit_now

if __name__ == "__main__":
    main()
    exit_now(0)
