"""Prefect tasks, one module per stage: thin shells around genpar_models.

Each task unpacks its arguments, calls library code or launches one process, and returns small
serialisable values (paths, run ids, metric dicts). The plain helpers they share (the Dask
cluster, the torchrun launcher, MLflow bookkeeping) live in modules without Prefect imports.
"""
