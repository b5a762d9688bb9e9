"""Prefect flows: the pipeline, the nightly retrain, evaluate, compress and generate on a logged
model, their deployments, and the `genpar` CLI (flows/cli/). Flows decide what runs in what
order and hold no ML logic.
"""
