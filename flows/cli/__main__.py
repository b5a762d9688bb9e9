"""`python -m flows.cli` is `genpar`."""

from flows.cli import main

main()
