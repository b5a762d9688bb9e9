"""Prefect flows (the pipeline and, later, sweeps and the nightly retrain) and the `genpar` CLI.

Flows decide what runs in what order and hold no ML logic.
"""
