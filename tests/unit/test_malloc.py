"""glibc malloc thresholds: a fresh process stops page-faulting on every activation buffer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genpar_models.util import malloc

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "mnist-vae.yaml"

# Sampling a conv VAE (mnist-vae's decoder, untrained weights) in a fresh process.
PROBE = """
import json, resource, sys
from genpar_models.util import malloc
tuned = malloc.tune() if sys.argv[1] == "tune" else False
import torch
from genpar_models.config import load_config
from genpar_models.infer.sampling import sample_uint8
from genpar_models.models.registry import check_model_config
cfg = load_config(sys.argv[2], [])
torch.set_num_threads(1)
torch.manual_seed(0)
model = check_model_config(cfg).build(cfg.model, (1, 28, 28)).eval()
# warm-up: the same work as measured, so a tuned process has every buffer size freed once
# (128 here left the tuned count at 1,200-6,300 faults, by heap layout, against the 5,000)
sample_uint8(model, 512, seed=1)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
before = faults()
sample_uint8(model, 512, seed=0)
print(json.dumps({"tuned": tuned, "faults": faults() - before}))
"""


def _probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GENPAR_MALLOC"))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(CONFIG)],
        capture_output=True,
        text=True,
        check=True,
        env={**clean, **env},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(malloc._glibc() is None, reason="needs glibc (mallopt)")
def test_tuned_process_keeps_freed_buffers_instead_of_faulting_them_in_again() -> None:
    plain, tuned = _probe("plain"), _probe("tune")
    assert tuned["tuned"] is True
    # 4,000 samples faulted in 420,000 pages in a fresh process (util/malloc.py)
    assert plain["faults"] > 20_000, plain
    assert tuned["faults"] < plain["faults"] / 10, (plain, tuned)


@pytest.mark.skipif(malloc._glibc() is None, reason="needs glibc (mallopt)")
def test_children_inherit_it_and_the_users_settings_or_opt_out_win() -> None:
    # the variables tune() exports make glibc apply the same thresholds in a child at start
    inherited = _probe("plain", **{k: str(v) for k, v in malloc._ENV.items()})
    assert inherited["faults"] < 5_000, inherited
    assert _tunes() is True
    assert _tunes(GENPAR_MALLOC_TUNING="0") is False
    assert _tunes(MALLOC_TRIM_THRESHOLD_="0") is False
    assert _tunes(MALLOC_ARENA_MAX="4") is False
    assert _tunes(GLIBC_TUNABLES="glibc.malloc.arena_max=4") is False


def _tunes(**env: str) -> bool:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GENPAR_MALLOC"))}
    code = "from genpar_models.util import malloc; print(malloc.tune())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**clean, **env},
    )
    return out.stdout.strip() == "True"
