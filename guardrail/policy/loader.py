"""Find, read and validate policies: shipped names or YAML paths, read with a safe loader."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from guardrail.errors import PolicyError
from guardrail.policy.schema import Policy


def shipped_policies() -> dict[str, Path]:
    """Names and files of the policies installed with guardrail."""
    root = resources.files("guardrail.policies")
    return {
        Path(str(f)).stem: Path(str(f))
        for f in root.iterdir()
        if str(f).endswith((".yaml", ".yml"))
    }


def load_policy(name_or_path: str | Path | Policy) -> Policy:
    """A shipped policy by name, or a YAML file by path."""
    if isinstance(name_or_path, Policy):
        return name_or_path
    shipped = shipped_policies()
    key = str(name_or_path)
    if key in shipped:
        path = shipped[key]
    else:
        path = Path(key).expanduser()
        if not path.is_file():
            raise PolicyError(
                f"policy {key!r}: not a shipped policy ({', '.join(sorted(shipped))}) "
                "and no such file"
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PolicyError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: a policy must be a mapping of fields, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        raise PolicyError(f"{path}: {e}") from e
