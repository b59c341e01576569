"""The hand-written part of the policy reference (appended after the generated tables)."""

GUIDE = """\
## Writing policies

A policy is a YAML file read with a safe loader (no tags that build objects, no code). Every
section forbids unknown keys; a typo is an error that names the file, the line, the field path,
a "did you mean" suggestion and the allowed keys. Check files with
`guardrail policy validate FILE...` (exit status 1, every problem listed) and see the fully
resolved result with `guardrail policy show NAME_OR_PATH`.

Shipped policies (`guardrail policy list`): `plain`, `adacd`, `balanced` (the default),
`strict`, `permissive`. `$GUARDRAIL_POLICY` names the default policy (a shipped name or a path).

### `extends`

```yaml
extends: balanced          # a shipped name, or a path relative to this file
name: support-bot
system_prompt: You answer questions about our product.
strategy:
  alpha: 3.0               # merged into balanced's strategy
sampling:
  stop: ["###"]            # lists replace the parent's list
```

Mappings merge key by key, lists and single values replace. A mapping with a different `kind`
(another strategy) replaces the parent's whole. `name` is never inherited. Cycles are errors.

### Environment variables

String values may use `${VAR}` (an error if unset) or `${VAR:-default}`; `$$` is a literal `$`.
They are resolved at load time, before validation, so `alpha: "${ALPHA:-2.0}"` is a number.

### Reloading

`guardrail.policy.PolicySource(path)` follows a file: `source.get()` looks at the modification
times of the file and everything it extends at most once per second and reloads on a change.
A reload that fails keeps the last good policy and logs the problems on the
`guardrail.policy` logger.

### Editor support

Write the JSON Schema once and point the YAML language server (VS Code's YAML extension, and
other editors using it) at it with a comment on the first line of each policy:

```console
guardrail policy schema -o policy.schema.json
```

```yaml
# yaml-language-server: $schema=./policy.schema.json
extends: strict
```

The reference above is regenerated with `guardrail policy docs -o docs/policies.md`.
"""
