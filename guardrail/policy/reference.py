"""The policy schema for editors (JSON Schema) and for people (a Markdown reference).

Both are generated from :class:`~guardrail.policy.schema.Policy`, the one source of truth;
``guardrail policy schema`` and ``guardrail policy docs`` print them.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal, Union

from pydantic import AliasChoices, BaseModel
from pydantic_core import PydanticUndefined

from guardrail.policy.guide import GUIDE
from guardrail.policy.schema import Policy

def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every model reachable from its fields, in first-seen order."""
    seen: list[type[BaseModel]] = []

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp in seen:
                return
            seen.append(tp)
            for info in tp.model_fields.values():
                visit(info.annotation)
            return
        for arg in typing.get_args(tp):
            visit(arg)

    visit(root)
    return seen


def json_schema() -> dict[str, Any]:
    """JSON Schema of a policy file (aliases such as ``lambda`` included, ``extends`` too)."""
    schema = Policy.model_json_schema(mode="validation")
    defs = schema.get("$defs", {})
    for model in _models(Policy):
        target = schema if model is Policy else defs.get(model.__name__)
        if target is None:
            continue
        props = target.get("properties", {})
        for name, info in model.model_fields.items():
            alias = info.validation_alias
            if not isinstance(alias, AliasChoices):
                continue
            names = [a for a in alias.choices if isinstance(a, str)]
            present = next((n for n in names if n in props), None)
            for other in names:
                if present is not None and other not in props:
                    props[other] = props[present]
            if name not in props and present is not None:
                props[name] = props[present]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
    }


def json_schema_text() -> str:
    """:func:`json_schema` as indented JSON text."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def _type_name(tp: Any) -> str:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(tp))
    if origin is Union or origin is types.UnionType:
        return " \\| ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _default(info: Any) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, BaseModel):
            return "(section defaults)"
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    text = json.dumps(value, ensure_ascii=False)
    return f"`{text}`"


def _names(name: str, info: Any) -> str:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        others = [a for a in alias.choices if isinstance(a, str) and a != name]
        if others:
            return f"`{name}` (or {', '.join(f'`{o}`' for o in others)})"
    return f"`{name}`"


_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥"))


def _constraints(info: Any) -> str:
    """Range constraints of a field, e.g. ``, ≥ 0, ≤ 1``."""
    out = []
    for meta in info.metadata:
        for attr, sign in _BOUNDS:
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(f"{sign} {value}")
    return "".join(f", {c}" for c in out)


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def markdown_reference() -> str:
    """The policy reference: one table per section (field, type, default, meaning)."""
    out = [
        "# Policy reference",
        "",
        "Generated from the policy schema by `guardrail policy docs`; do not edit by hand.",
        "Every section forbids unknown keys. See [Writing policies](#writing-policies) below the",
        "tables for `extends`, environment variables, reloading and editor support.",
        "",
    ]
    for model in _models(Policy):
        out += [f"## {model.__name__}", "", _cell((model.__doc__ or "").strip()), ""]
        out += ["| Field | Type | Default | Meaning |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            out.append(
                f"| {_names(name, info)} | {_type_name(info.annotation)}{_constraints(info)} "
                f"| {_default(info)} | {_cell(info.description or 'Selects this variant.')} |"
            )
        out.append("")
    return "\n".join(out) + "\n" + GUIDE


__all__ = ["json_schema", "json_schema_text", "markdown_reference"]
