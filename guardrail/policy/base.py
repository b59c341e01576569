"""Base model of every policy section (unknown keys are errors, values are frozen) and the
strict scalar types of its numbers and switches (a string is never a number or a boolean)."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, model_validator
from pydantic import Strict as _StrictMode


class EnvText(str):
    """A string produced by ``${VAR}`` interpolation. A number or boolean field reads it as the
    value it spells (``'${N:-12}'`` is 12, ``'${ON:-true}'`` is true), where a string written
    in the file is refused: only interpolation turns text into a number."""


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError(text)
    return int(text)


def _parse_float(text: str) -> float:
    if not _FLOAT.fullmatch(text):
        raise ValueError(text)
    return float(text)


def _parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


_PARSERS: dict[Any, Callable[[str], Any]] = {bool: _parse_bool, int: _parse_int, float: _parse_float}


def _scalar_parser(annotation: Any) -> Callable[[str], Any] | None:
    """How interpolated text is read for a field of this annotation: the parser of its one
    number or boolean type (``Int | None``: int), or None (a string, a model, a list...)."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (Union, types.UnionType):
        found = [_scalar_parser(a) for a in typing.get_args(annotation) if a is not type(None)]
        return found[0] if len(found) == 1 else None
    return _PARSERS.get(annotation)


Int = Annotated[int, _StrictMode()]
"""An integer: ``true``, ``1.0`` and ``'8'`` are refused (interpolated text is read)."""
Float = Annotated[float, _StrictMode()]
"""A number: an integer is fine (``1`` is 1.0); ``true`` and ``'0.5'`` are refused."""
Bool = Annotated[bool, _StrictMode()]
"""``true`` or ``false`` only: ``'yes'``, ``1`` and ``'true'`` (a written string) are refused."""


class Strict(BaseModel):
    """Forbids unknown keys (typos are errors, never ignored) and freezes the values.

    ``inf`` and ``nan`` are refused: no policy parameter means anything with them.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )

    @model_validator(mode="before")
    @classmethod
    def _read_env_text(cls, data: Any) -> Any:
        """Interpolated text (:class:`EnvText`) of a number or boolean field read as its value;
        text that does not spell one is left for the strict check to refuse."""
        if not isinstance(data, dict) or not any(isinstance(v, EnvText) for v in data.values()):
            return data
        out = dict(data)
        for name, info in cls.model_fields.items():
            parse = _scalar_parser(info.annotation)
            if parse is None:
                continue
            alias = info.validation_alias
            keys = [a for a in alias.choices if isinstance(a, str)] if isinstance(
                alias, AliasChoices) else [name]
            for key in keys:
                value = out.get(key)
                if isinstance(value, EnvText):
                    try:
                        out[key] = parse(value.strip())
                    except ValueError:
                        pass
        return out


__all__ = ["Bool", "EnvText", "Float", "Int", "Strict"]
