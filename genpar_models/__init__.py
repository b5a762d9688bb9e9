"""genpar's library: models, configs, shards, training entry point, checkpoints, sampling, metrics.

Plain PyTorch, NumPy and pydantic. It never imports prefect, dask or distributed, so it is usable
and testable on its own; importing the package itself stays cheap (no torch import here).
"""

__version__ = "0.1.0"
