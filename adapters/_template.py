"""Render a Jinja chat template the way Hugging Face ``apply_chat_template`` does.

GGUF files carry the model's template as ``tokenizer.chat_template``; llama.cpp backends render it
here so both backends produce the same prompt text for the same messages. Where transformers
(5.x) is installed its own renderer (``render_jinja_template``, what ``apply_chat_template``
calls) renders it, so a template renders exactly as on the transformers backend, reasoning
fields and all. Without transformers a sandboxed environment here does what it does: the same
globals and filters, ``loopcontrols``, and ``{% generation %}...{% endgeneration %}`` (which marks
the assistant's part of a template for training masks) rendered as its body.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext  # `import jinja2` alone does not load the extensions module
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: rendered as its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationTag]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


@lru_cache(maxsize=1)
def _transformers_renderer() -> Callable[..., Any] | None:
    """transformers' ``render_jinja_template`` (5.x), or None where it is not installed."""
    try:
        import transformers
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:
        return None
    if int(str(transformers.__version__).split(".")[0]) < 5:  # another signature before 5
        return None
    return render_jinja_template


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render ``messages`` with ``template`` (sandboxed: a template cannot run code), with
    transformers' renderer where it is installed (see the module docstring)."""
    hf = _transformers_renderer()
    if hf is not None:
        rendered, _ = hf(
            [[dict(m) for m in messages]], tools=list(tools) if tools else None,
            chat_template=template, add_generation_prompt=add_generation_prompt,
            bos_token=bos_token, eos_token=eos_token, **extra,
        )
        return str(rendered[0])
    return render_here(template, messages, tools=tools,
                       add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                       eos_token=eos_token, **extra)


def render_here(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """Render with this module's own environment (what runs without transformers)."""
    return _compile(template).render(
        messages=[dict(m) for m in messages],
        tools=list(tools) if tools else None,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        **extra,
    )
