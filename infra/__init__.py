"""How the pieces start: the local stack's servers (stack.py, processes.py), the deployments
file for a work pool (prefect.yaml) and the recipes for running beyond one machine (README.md).

The Python modules here never import flows or tasks: the CLI (flows/cli/stack.py) drives them.
"""
