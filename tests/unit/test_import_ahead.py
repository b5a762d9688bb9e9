"""Imports started ahead on a thread (tasks/common.py `import_meanwhile`): the training task
loads what the evaluation imports first while torchrun trains (issue 18)."""

from __future__ import annotations

import os

from tests.helpers import python_c

# tabnanny and wave: stdlib modules that nothing in genpar, Prefect or Dask imports
PROBE = """
import sys
from tasks.common import import_meanwhile
first = import_meanwhile("tabnanny", "wave")
again = import_meanwhile("tabnanny", "wave")  # each module once per process
if first is not None:
    first.join(60)
print(first is not None, first is not None and first.daemon, again is None,
      "tabnanny" in sys.modules, "wave" in sys.modules)
"""


def _probe(**env: str) -> list[str]:
    return python_c(PROBE, env={**os.environ, **env}).stdout.split()


def test_modules_are_imported_once_on_a_daemon_thread() -> None:
    assert _probe() == ["True", "True", "True", "True", "True"]


def test_genpar_import_ahead_0_turns_it_off() -> None:
    assert _probe(GENPAR_IMPORT_AHEAD="0") == ["False", "False", "True", "False", "False"]


def test_a_module_that_fails_to_import_is_left_to_the_stage_that_needs_it() -> None:
    code = (
        "import sys\n"
        "from tasks.common import import_meanwhile\n"
        "import_meanwhile('genpar_no_such_module', 'tabnanny').join(60)\n"
        "print('tabnanny' in sys.modules)\n"
    )
    out = python_c(code)
    assert out.stdout.split() == ["True"]
    assert "Traceback" not in out.stderr  # no thread traceback: the stage raises it, if needed


def test_a_warm_up_runs_once_after_the_imports_and_its_failure_is_swallowed() -> None:
    code = (
        "import sys, threading\n"
        "from tasks.common import import_meanwhile\n"
        "seen = []\n"
        "def warm():\n"
        "    seen.append(('tabnanny' in sys.modules, threading.current_thread().name))\n"
        "def broken():\n"
        "    raise RuntimeError('warm-up failed')\n"
        "import_meanwhile('tabnanny', then=warm).join(60)\n"
        "print(import_meanwhile('tabnanny', then=warm) is None)\n"  # once per process
        "import_meanwhile(then=broken).join(60)\n"
        "print(seen)\n"
    )
    out = python_c(code)
    assert out.stdout.splitlines() == ["True", "[(True, 'genpar-import-ahead')]"]
    assert "Traceback" not in out.stderr
