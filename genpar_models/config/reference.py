"""The config reference: every field with its type, default and description, as Markdown.

Generated from the schema, so `genpar config --reference`, the README's table and the Prefect
form (which reads the same descriptions) never disagree.
"""

from __future__ import annotations

import json
import typing
from typing import Any, Literal

from pydantic import BaseModel

from genpar_models.config.pipeline import PipelineConfig


def _type_name(annotation: Any) -> str:
    """Readable type for the reference table: Literal values, `X or None`."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return " / ".join(json.dumps(a) for a in args)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in rest) + " or null"
    return getattr(annotation, "__name__", str(annotation))


def config_reference() -> str:
    """A Markdown table of every config field: dotted key, type, default, description."""
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for section, field in PipelineConfig.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            for name, sub in ann.model_fields.items():
                default = json.dumps(sub.get_default(call_default_factory=True))
                desc = (sub.description or "").replace("|", "\\|")
                lines.append(
                    f"| `{section}.{name}` | {_type_name(sub.annotation)} | `{default}` | {desc} |"
                )
        else:
            lines.append(
                f"| `{section}` | {_type_name(ann)} | `{json.dumps(field.default)}` | "
                f"{field.description or ''} |"
            )
    return "\n".join(lines) + "\n"
