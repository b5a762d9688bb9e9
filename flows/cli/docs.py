"""Regenerate generated parts of README.md (the config reference) from the code.

python -m flows.cli.docs          # rewrite README.md in place
python -m flows.cli.docs --check  # exit 1 if README.md is stale (used by the tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

from genpar_models.config import config_reference

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def render(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{config_reference()}{END}{tail}"


def main(argv: list[str]) -> int:
    current = README.read_text()
    fresh = render(current)
    if "--check" in argv:
        if fresh != current:
            print("README.md config reference is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    README.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
