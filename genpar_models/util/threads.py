"""Compute settings of evaluation and sampling: thread limits for torch and BLAS (samples must
not depend on the thread count, and small evaluation work must not oversubscribe the cores
beside other work), and true fp32 on CUDA (TF32 off), which the protocols' "fp32" promises."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with torch on `n` threads (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def one_thread(device: str | torch.device = "cpu") -> Iterator[None]:
    """BLAS and torch on one thread for the evaluation's CPU work.

    Its matrices are small (64-wide features, 8x8 to 64x64 images), so threads cost more than
    they give, and beside other work they oversubscribe the cores: on this project's loaded
    2-core machine the digits scorecard took 35 s with default threads and 4.3 s with one,
    with identical results. Parallelism across cores comes from Dask blocks instead.
    """
    if torch.device(device).type != "cpu":
        with exact_fp32():
            yield
        return
    with threadpool_limits(limits=1), torch_threads(1):
        yield


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off for CUDA matmuls and cuDNN convolutions in the block (restored afterwards).

    PyTorch enables TF32 for cuDNN convolutions by default: their inputs are rounded to 10
    mantissa bits, so "fp32" evaluation on an Ampere-or-newer GPU would not be fp32.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
