"""Policy problems: each names the file, the line, the field path and what is allowed.

A :class:`PolicyValidationError` carries every problem found, so ``guardrail policy validate``
can list them all at once. Pydantic's errors are translated here into that form.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from pydantic import AliasChoices, BaseModel, ValidationError

from guardrail.errors import PolicyError

Path = tuple[Any, ...]
"""A field path inside a policy: keys (str) and list indexes (int)."""


def format_path(path: Path) -> str:
    """``("rules", 0, "pattern")`` as ``rules[0].pattern``; the empty path as ``(top level)``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy."""

    file: str
    line: int | None
    path: Path
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        if not self.path:
            return f"{where}: {self.message}"
        return f"{where}: {format_path(self.path)}: {self.message}"


class PolicyValidationError(PolicyError):
    """A policy failed to load; ``problems`` lists everything found, one line each."""

    def __init__(self, problems: list[PolicyProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_names(model: type[BaseModel]) -> list[str]:
    """Keys a YAML mapping for ``model`` may use: field names and their aliases."""
    names: list[str] = []
    for name, info in model.model_fields.items():
        names.append(name)
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.extend(a for a in alias.choices if isinstance(a, str) and a != name)
        elif isinstance(alias, str) and alias != name:
            names.append(alias)
    return names


def _members(annotation: Any) -> list[Any]:
    """The non-None members of a (possibly Annotated or Optional) annotation."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                out.extend(_members(arg))
        return out
    return [annotation]


def _model_for(name: str, model: type[BaseModel]) -> type[BaseModel] | None:
    for field_name, info in model.model_fields.items():
        if name == field_name or name in _field_names_of(field_name, info):
            return _single_model(info.annotation)
    return None


def _field_names_of(field_name: str, info: Any) -> list[str]:
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [a for a in alias.choices if isinstance(a, str)]
    return [alias] if isinstance(alias, str) else [field_name]


def _spellings_of(key: str, model: type[BaseModel]) -> list[str]:
    """Every spelling of the field ``key`` names in ``model`` when it has several (``lam``,
    ``lambda``), else nothing."""
    for field_name, info in model.model_fields.items():
        names = list(dict.fromkeys([field_name, *_field_names_of(field_name, info)]))
        if key in names and len(names) > 1:
            return names
    return []


def _single_model(annotation: Any) -> Any:
    members = _members(annotation)
    return members if len(members) > 1 else members[0]


def model_at(root: type[BaseModel], loc: Path) -> type[BaseModel] | None:
    """The model class that validates the value at pydantic location ``loc`` (None if not one).

    Follows fields, list indexes and union tags (a discriminated union's ``loc`` holds the tag).
    """
    current: Any = root
    for part in loc:
        if isinstance(current, list):  # a union: pick the member named by this loc part
            current = next(
                (m for m in current if _tag_of(m) == part or getattr(m, "__name__", "") == part),
                None,
            )
            if current is None:
                return None
            continue
        if isinstance(part, int):
            origin = typing.get_origin(current)
            if origin in (list, tuple):
                current = _single_model(typing.get_args(current)[0])
                continue
            return None
        if isinstance(current, type) and issubclass(current, BaseModel):
            current = _model_for(part, current)
            if current is None:
                return None
            continue
        return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _tag_of(model: Any) -> Any:
    info = getattr(model, "model_fields", {}).get("kind")
    return None if info is None else info.default


def _data_path(data: Any, loc: Path) -> Path:
    """Turn a pydantic location into the path of keys actually present in ``data``.

    Parts absent from the data (union tags) are dropped, except a last part (a missing or
    unknown field keeps its name).
    """
    path: list[Any] = []
    current = data
    for i, part in enumerate(loc):
        if isinstance(current, dict) and part in current:
            current = current[part]
            path.append(part)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
            path.append(part)
        elif i == len(loc) - 1:
            path.append(part)
    return tuple(path)


def _describe(root: type[BaseModel], loc: Path, err: dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        parent = model_at(root, loc[:-1])
        key = str(loc[-1])
        spellings = _spellings_of(key, parent) if parent else []
        if spellings:  # a known key refused: another spelling of its field was given too
            names = " and ".join(repr(n) for n in spellings)
            return f"both {names} given: two spellings of one field; keep one"
        allowed = sorted(_field_names(parent)) if parent else []
        hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        text = f"unknown key {key!r}"
        if hint:
            text += f"; did you mean {hint[0]!r}?"
        if allowed:
            text += f" Allowed keys: {', '.join(allowed)}"
        return text
    if kind == "union_tag_invalid":
        allowed = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"unknown {loc[-1] if loc else 'kind'} {ctx.get('tag')!r}; allowed: {allowed}"
    if kind == "union_tag_not_found":
        parent = model_at(root, loc[:-1]) if loc else None
        tags: list[str] = []
        if parent is not None and isinstance(loc[-1], str):
            member = _model_for(loc[-1], parent)
            tags = [str(_tag_of(m)) for m in (member if isinstance(member, list) else [member])]
        allowed = f"; allowed: {', '.join(tags)}" if tags else ""
        return f"missing key 'kind', which picks the {loc[-1] if loc else 'variant'}{allowed}"
    if kind == "missing":
        return "required field is missing"
    parent = model_at(root, loc[:-1]) if loc else None
    meaning = ""
    if parent is not None and isinstance(loc[-1], str):
        info = parent.model_fields.get(loc[-1])
        if info is None:
            info = next(
                (f for n, f in parent.model_fields.items() if loc[-1] in _field_names_of(n, f)),
                None,
            )
        if info is not None and info.description:
            meaning = f" ({info.description.rstrip('.')})"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = "" if isinstance(err.get("input"), dict) else f", got {_short(err.get('input'))}"
    return f"{msg}{got}{meaning}"


def from_validation_error(
    exc: ValidationError,
    root: type[BaseModel],
    data: Any,
    where: Any,
) -> PolicyValidationError:
    """Translate a pydantic error on ``data`` into problems located by ``where(path)``.

    ``where(path)`` returns ``(file, line)`` for a data path.
    """
    problems: list[PolicyProblem] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = _data_path(data, loc)
        if err["type"] == "union_tag_invalid":
            path = (*path, "kind")  # point at the line of the bad tag
        file, line = where(path)
        problems.append(PolicyProblem(file, line, path, _describe(root, loc, dict(err))))
    problems.sort(key=lambda p: (p.file, p.line or 0))
    return PolicyValidationError(problems)


__all__ = [
    "Path",
    "PolicyProblem",
    "PolicyValidationError",
    "format_path",
    "from_validation_error",
    "model_at",
]
