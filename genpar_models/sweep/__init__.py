"""Sweeps as plain functions: the trials a sweep file means (plan.py), the metrics a model
family produces (objective.py), and synchronous successive halving (halving.py). The Prefect
flow (flows/sweep.py) and its tasks (tasks/sweep.py) only wire these together."""
