"""Read policy YAML safely, remembering the line of every key, and interpolate ``${VAR}``.

Only :class:`yaml.SafeLoader` is used (a policy can never construct Python objects, import
modules or run code). The loader records where each key and list item starts, so validation
errors can name the line the parser knew it at, even for values merged in from another file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from guardrail.policy.base import EnvText
from guardrail.policy.problems import Path, PolicyProblem, PolicyValidationError, format_path

MAX_DEPTH = 32
"""Deepest nesting a policy may use (the schema itself is at most five levels deep)."""
MAX_NODES = 20_000
"""Most YAML nodes visited per file (stops alias bombs from expanding without bound)."""

def read_bounded(path: os.PathLike[str] | str, limit: int, what: str) -> str:
    """The text of the file at ``path``, refused unread when it is larger than ``limit`` bytes
    (``what`` names the kind of file in that error: "a policy file", "a server config").

    Raises:
        PolicyValidationError: naming the file (too large, unreadable, not UTF-8).
    """
    source = str(path)
    try:
        size = os.stat(path).st_size
        if size > limit:
            raise PolicyValidationError([PolicyProblem(
                source, None, (), f"is {size} bytes, larger than {what} may be ({limit} bytes); "
                "not read")])
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyValidationError([PolicyProblem(source, None, (), f"cannot read: {e}")]) from None


_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Located:
    """Parsed YAML data plus where each key or item of it came from."""

    data: Any
    source: str
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """Line of the longest known prefix of ``path`` (None if nothing of it is known)."""
        for n in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:n]))
            if line is not None:
                return line
        return None


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that hands back the composed node, so start marks can be read."""


def parse_yaml(text: str, source: str) -> Located:
    """Parse one YAML document with the safe loader and record each key's line.

    Raises:
        PolicyValidationError: invalid YAML, several documents, nesting too deep, recursive
            aliases, non-string or duplicate keys.
    """
    loader: _LineLoader | None = None
    try:
        loader = _LineLoader(text)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(p for p in (e.context, e.problem) if p) or "cannot parse"
        raise PolicyValidationError(
            [PolicyProblem(source, line, (), f"invalid YAML: {problem}")]
        ) from None
    except yaml.reader.ReaderError as e:  # a character YAML does not allow
        line = text[: e.position].count("\n") + 1
        char = chr(e.character) if isinstance(e.character, int) else e.character
        problem = f"invalid YAML: character {char!r} is not allowed"
        raise PolicyValidationError([PolicyProblem(source, line, (), problem)]) from None
    except yaml.YAMLError as e:
        problem = "invalid YAML: " + " ".join(str(e).split())
        raise PolicyValidationError([PolicyProblem(source, None, (), problem)]) from None
    except RecursionError:
        raise PolicyValidationError(
            [PolicyProblem(source, None, (), f"invalid YAML: nested more than {MAX_DEPTH} deep")]
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    located = Located(data, source)
    if node is not None:
        _Walker(located).walk(node, (), 0)
    return located


class _Walker:
    """Records the start line of every key and item; rejects what a policy can never hold."""

    def __init__(self, located: Located):
        self.located = located
        self.visited = 0
        self.stack: set[int] = set()

    def fail(self, node: yaml.Node, path: Path, message: str) -> None:
        line = node.start_mark.line + 1
        raise PolicyValidationError([PolicyProblem(self.located.source, line, path, message)])

    def walk(self, node: yaml.Node, path: Path, depth: int) -> None:
        self.visited += 1
        if self.visited > MAX_NODES:
            self.fail(node, path, f"too large: more than {MAX_NODES} YAML nodes (alias expansion?)")
        if depth > MAX_DEPTH:
            self.fail(node, path, f"nested more than {MAX_DEPTH} levels deep")
        self.located.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self.stack:
            self.fail(node, path, "recursive alias: a value contains itself")
        if isinstance(node, yaml.MappingNode):
            self.stack.add(id(node))
            seen: set[str] = set()
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != (
                    "tag:yaml.org,2002:str"
                ):
                    self.fail(key_node, path, "keys must be plain strings")
                key = str(key_node.value)
                if key in seen:
                    self.fail(key_node, (*path, key), f"duplicate key {key!r}")
                seen.add(key)
                self.located.lines[(*path, key)] = key_node.start_mark.line + 1
                self.walk(value_node, (*path, key), depth + 1)
            self.stack.discard(id(node))
        elif isinstance(node, yaml.SequenceNode):
            self.stack.add(id(node))
            for i, item in enumerate(node.value):
                self.walk(item, (*path, i), depth + 1)
            self.stack.discard(id(node))


def interpolate(located: Located, env: Mapping[str, str] | None = None) -> Any:
    """A copy of ``located.data`` with ``${VAR}`` and ``${VAR:-default}`` replaced in strings.

    ``$$`` stands for a literal ``$``. Keys are never interpolated. Every unset variable that
    has no default is reported, each with its file, line and field. A string in which a
    variable was replaced is an :class:`~guardrail.policy.base.EnvText`, which number and
    boolean fields read as the value it spells (a string written in the file they refuse).
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    problems: list[PolicyProblem] = []

    def sub(text: str, path: Path) -> str:
        def one(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            problems.append(
                PolicyProblem(
                    located.source,
                    located.line_of(path),
                    path,
                    f"environment variable {name} is not set and has no default "
                    f"(set it, or write ${{{name}:-default}})",
                )
            )
            return m.group(0)

        out = _ENV.sub(one, text)
        # A reference was replaced: a number or boolean field may read the result (base.EnvText).
        return EnvText(out) if any(m.group(1) for m in _ENV.finditer(text)) else out

    def walk(value: Any, path: Path) -> Any:
        if isinstance(value, str):
            return sub(value, path)
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        return value

    out = walk(located.data, ())
    if problems:
        raise PolicyValidationError(problems)
    return out


__all__ = ["Located", "format_path", "interpolate", "parse_yaml"]
