"""How a served model's pip requirements are checked when it is logged (tasks/served_model.py):
MLflow's check still runs, on the pins' own modules instead of a scan of every installed
distribution, and MLflow's module map is left as it was found."""

from __future__ import annotations

import numpy as np
from mlflow.utils import requirements_utils

from tasks import served_model


def test_the_pins_are_checked_without_a_scan_and_a_mismatch_still_shows() -> None:
    requirements_utils._MODULES_TO_PACKAGES = requirements_utils._PACKAGES_TO_MODULES = None
    with served_model.pins_checked_without_scan():
        for pin in served_model.requirements():
            assert requirements_utils._check_requirement_satisfied(pin) is None, pin
        assert set(requirements_utils._MODULES_TO_PACKAGES) == {
            "mlflow", "torch", "numpy", "pandas", "PIL", "safetensors", "pydantic", "yaml",
            "threadpoolctl",
        }  # fmt: skip
        wrong = requirements_utils._check_requirement_satisfied("numpy==0.0.1")
        assert wrong is not None and wrong.installed_version == np.__version__
    assert requirements_utils._MODULES_TO_PACKAGES is None  # built in full if anything asks


def test_a_map_mlflow_built_already_is_kept() -> None:
    built = {"numpy": ["numpy"], "elsewhere": ["other-dist"]}
    requirements_utils._MODULES_TO_PACKAGES = built
    try:
        with served_model.pins_checked_without_scan():
            assert requirements_utils._MODULES_TO_PACKAGES is built
        assert requirements_utils._MODULES_TO_PACKAGES is built
    finally:
        requirements_utils._MODULES_TO_PACKAGES = requirements_utils._PACKAGES_TO_MODULES = None
