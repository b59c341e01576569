"""Find, read, merge and validate policies.

A policy is a shipped name (``balanced``) or a YAML path. Loading reads the file with a safe
loader, interpolates ``${VAR}``, follows ``extends`` (merging the parent under the child) and
validates the result against :class:`~guardrail.policy.schema.Policy`. Every failure is a
:class:`~guardrail.policy.problems.PolicyValidationError` naming file, line, field and what is
allowed.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from guardrail.policy.problems import (
    Path as FieldPath,
)
from guardrail.policy.problems import (
    PolicyProblem,
    PolicyValidationError,
    from_validation_error,
)
from guardrail.policy.schema import Policy
from guardrail.policy.yamlsource import interpolate, parse_yaml, read_bounded

POLICY_ENV = "GUARDRAIL_POLICY"
"""Environment variable naming the default policy (a shipped name or a path)."""
DEFAULT_POLICY = "balanced"
"""The policy used when neither the caller nor ``GUARDRAIL_POLICY`` names one."""
MAX_EXTENDS = 16
"""Longest ``extends`` chain followed."""
MAX_POLICY_BYTES = 1 << 20
"""Largest policy file read (1 MiB); a larger file is refused unread."""

Origin = tuple[str, int | None]
"""Where a value came from: (file, line)."""


def shipped_policies() -> dict[str, Path]:
    """Names and files of the policies installed with guardrail."""
    root = resources.files("guardrail.policies")
    return {
        Path(str(f)).stem: Path(str(f))
        for f in root.iterdir()
        if str(f).endswith((".yaml", ".yml"))
    }


def default_policy_name() -> str:
    """The policy to use when none is named: ``$GUARDRAIL_POLICY``, else ``balanced``."""
    return os.environ.get(POLICY_ENV, "").strip() or DEFAULT_POLICY


@dataclass
class LoadedPolicy:
    """A validated policy, the files it was read from (child first) and its merged data."""

    policy: Policy
    files: list[Path] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Layer:
    """One file's interpolated data and the origin of each of its paths; ``empty`` when the
    file holds no document at all (nothing, only comments, or ``null``)."""

    data: dict[str, Any]
    origins: dict[FieldPath, Origin]
    source: str = "<policy>"
    empty: bool = False


def _looks_like_path(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml")) or "/" in ref or os.sep in ref or ref.startswith(".")


def resolve_policy_ref(ref: str, base_dir: Path | None = None) -> Path:
    """The file a policy reference names.

    A shipped name wins unless ``ref`` looks like a path; a relative path is taken from
    ``base_dir`` (the referring file's folder) or the working directory.

    Raises:
        PolicyValidationError: no shipped policy and no file of that name.
    """
    shipped = shipped_policies()
    if ref in shipped and not _looks_like_path(ref):
        return shipped[ref]
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_file():
        return path
    raise PolicyValidationError(
        [
            PolicyProblem(
                str(path),
                None,
                (),
                f"no such policy file, and {ref!r} is not a shipped policy "
                f"(shipped: {', '.join(sorted(shipped))})",
            )
        ]
    )


def _read_layer(path: Path, env: Mapping[str, str] | None) -> _Layer:
    source = str(path)
    text = read_bounded(path, MAX_POLICY_BYTES, "a policy file")
    try:
        layer = _layer_from_text(text, source, env)
    except PolicyValidationError as e:
        keys = [line.split(":", 1)[0] for line in text.splitlines()
                if line[:1].isalpha() and ":" in line]
        if not _policy_like(keys) and "must be a mapping" not in str(e):
            raise _not_a_policy(source) from None
        raise
    if layer.data and not _policy_like(list(layer.data)):
        raise _not_a_policy(source)
    return layer


def _policy_like(keys: list[str]) -> bool:
    """Whether some top-level key is a policy field or a near miss of one (a typo that deserves
    a did-you-mean): a file with neither is not a policy."""
    fields = list(Policy.model_fields)
    return any(k in fields or difflib.get_close_matches(str(k), fields, n=1, cutoff=0.75)
               for k in keys)


def _not_a_policy(source: str) -> PolicyValidationError:
    """The error for a file that is not a policy: its content is never echoed (it may be any
    file a mistaken or hostile reference named)."""
    return PolicyValidationError([PolicyProblem(
        source, None, (), "is not a policy file (no top-level policy field such as strategy:, "
        "model: or sampling:); its content is not shown")])


def _layer_from_text(text: str, source: str, env: Mapping[str, str] | None) -> _Layer:
    located = parse_yaml(text, source)
    if located.data is None:  # refused by _extend, after any check of the file itself
        return _Layer({}, {}, source, empty=True)
    if not isinstance(located.data, dict):
        raise PolicyValidationError(
            [
                PolicyProblem(
                    source,
                    located.line_of(()) or 1,
                    (),
                    "a policy must be a mapping of fields (key: value), "
                    f"got {type(located.data).__name__}",
                )
            ]
        )
    data = interpolate(located, env)
    origins: dict[FieldPath, Origin] = {p: (source, line) for p, line in located.lines.items()}
    return _Layer(data, origins, source)


def _merge(base: Any, over: Any) -> Any:
    """``over`` merged onto ``base``: mappings merge key by key; anything else replaces.

    A mapping whose ``kind`` differs from the base's (another strategy, router or expert)
    replaces it whole: parameters of one kind mean nothing to another.
    """
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    if "kind" in over and "kind" in base and over["kind"] != base["kind"]:
        return over
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(base[key], value) if key in base else value
    return out


def _load_chain(
    path: Path, env: Mapping[str, str] | None, chain: list[Path]
) -> tuple[dict[str, Any], dict[FieldPath, Origin], list[Path]]:
    """Merged data, origins and files of ``path`` and everything it extends."""
    layer = _read_layer(path, env)
    return _extend(layer, path.parent, env, [*chain, path])


def _extend(
    layer: _Layer, base_dir: Path | None, env: Mapping[str, str] | None, chain: list[Path]
) -> tuple[dict[str, Any], dict[FieldPath, Origin], list[Path]]:
    if layer.empty:  # an empty file would otherwise be the default policy: plain, unguarded
        raise PolicyValidationError([PolicyProblem(
            layer.source, None, (), "policy file is empty; write the policy's fields, or "
            "`extends: <policy>` to use another one as it is (an empty policy would be the "
            "default: plain decoding, no rules)")])
    data = dict(layer.data)
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data, layer.origins, list(chain)
    file, line = layer.origins.get(("extends",), (str(chain[-1]) if chain else "<policy>", None))
    if not isinstance(parent_ref, str) or not parent_ref.strip():
        raise PolicyValidationError(
            [PolicyProblem(file, line, ("extends",), "must be a policy name or a file path")]
        )
    try:
        parent = resolve_policy_ref(parent_ref, base_dir).resolve()
    except PolicyValidationError as e:
        raise PolicyValidationError(
            [PolicyProblem(file, line, ("extends",), f"{p.message}; looked for {p.file}") for p in e.problems]
        ) from None
    seen = [p.resolve() for p in chain]
    if parent in seen:
        cycle = " -> ".join(str(p) for p in [*seen, parent])
        raise PolicyValidationError(
            [PolicyProblem(file, line, ("extends",), f"extends cycle: {cycle}")]
        )
    if len(chain) >= MAX_EXTENDS:
        raise PolicyValidationError(
            [PolicyProblem(file, line, ("extends",), f"extends chain longer than {MAX_EXTENDS}")]
        )
    parent_data, parent_origins, files = _load_chain(parent, env, chain)
    parent_data.pop("name", None)  # a name belongs to its own file
    merged = _merge(parent_data, data)
    origins = {p: o for p, o in parent_origins.items() if p[:1] != ("name",)}
    origins.update(layer.origins)
    return merged, origins, files


def _validate(
    data: dict[str, Any], origins: dict[FieldPath, Origin], default_file: str
) -> Policy:
    def where(path: FieldPath) -> Origin:
        for n in range(len(path), -1, -1):
            origin = origins.get(tuple(path[:n]))
            if origin is not None:
                return origin
        return (default_file, None)

    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e, Policy, data, where) from None


def load_policy_file(
    name_or_path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> LoadedPolicy:
    """Load a policy by name or path, keeping the files it came from (for reloading).

    ``None`` means :func:`default_policy_name`. ``env`` replaces ``os.environ`` for ``${VAR}``.
    """
    ref = default_policy_name() if name_or_path is None else str(name_or_path)
    path = resolve_policy_ref(ref)
    data, origins, files = _load_chain(path, env, [])
    data.setdefault("name", path.stem)
    origins.setdefault(("name",), (str(path), None))
    return LoadedPolicy(_validate(data, origins, str(path)), files, data)


def load_policy(
    name_or_path: str | Path | Policy | None = None, *, env: Mapping[str, str] | None = None
) -> Policy:
    """A shipped policy by name, a YAML file by path, or the default policy (``None``).

    A :class:`Policy` is returned as is.

    Raises:
        PolicyValidationError: (a :class:`~guardrail.errors.PolicyError`) naming every problem.
    """
    if isinstance(name_or_path, Policy):
        return name_or_path
    return load_policy_file(name_or_path, env=env).policy


def load_policy_text(
    text: str,
    *,
    source: str = "<string>",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Policy:
    """Validate policy YAML given as text; ``extends`` paths are taken from ``base_dir``."""
    layer = _layer_from_text(text, source, env)
    data, origins, _ = _extend(layer, base_dir, env, [])
    data.setdefault("name", "custom")
    return _validate(data, origins, source)


def with_overrides(policy: Policy, overrides: Mapping[str, Any], *, source: str = "<override>") -> Policy:
    """``policy`` with ``overrides`` merged onto it (same rules as ``extends``), validated.

    Example: ``with_overrides(p, {"sampling": {"max_new_tokens": 8}})``.
    """
    base = policy.model_dump(exclude={"extends"})
    over = dict(overrides)
    data = _merge(base, over)
    origins: dict[FieldPath, Origin] = {(k,): (source, None) for k in over}
    return _validate(data, origins, f"policy {policy.name!r}")


def dump_policy(policy: Policy) -> dict[str, Any]:
    """The fully resolved policy as plain data (every field, defaults included)."""
    return policy.model_dump(mode="json", exclude={"extends"})


__all__ = [
    "DEFAULT_POLICY",
    "POLICY_ENV",
    "LoadedPolicy",
    "default_policy_name",
    "dump_policy",
    "load_policy",
    "load_policy_file",
    "load_policy_text",
    "resolve_policy_ref",
    "shipped_policies",
    "with_overrides",
]
