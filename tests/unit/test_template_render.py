"""The llama.cpp backends' chat-template renderer (adapters/_template.py) in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jinja2
import pytest

from guardrail.adapters import _template


def _fresh(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_loop_controls_and_generation_tag_without_jinja2_ext_preloaded() -> None:
    """`jinja2.ext` was used after a bare `import jinja2` (AttributeError unless some other
    library had imported it), and `{% generation %}` (transformers' training-mask tag) failed."""
    out = _fresh('''
        import sys
        assert "jinja2.ext" not in sys.modules
        from guardrail.adapters._template import render_here as render_chat_template
        t = ("{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
             "<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
             "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}<assistant>{% endif %}")
        msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
        print(render_chat_template(t, msgs))
    ''')
    assert out.strip() == "<user>hi<assistant>hello<user>bye<assistant>"


TEMPLATES = {
    "chatml": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "tools": ("{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>"
              "{% endif %}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
              "{{ bos_token }}{% if add_generation_prompt %}[assistant]{% endif %}"),
    "generation": ("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}"
                   "{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}"
                   "{% endfor %}"),
}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo"},
            {"role": "assistant", "content": "hi"}, {"role": "user", "content": "tools?"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def test_transformers_renders_where_installed_and_the_fallback_agrees() -> None:
    pytest.importorskip("transformers")
    assert _template._transformers_renderer() is not None  # the preferred renderer
    for name, t in TEMPLATES.items():
        for tools in (None, [TOOL]):
            ours = _template.render_here(t, MESSAGES, tools=tools, bos_token="<s>")
            theirs = _template.render_chat_template(t, MESSAGES, tools=tools, bos_token="<s>")
            assert ours == theirs, name


def test_a_template_error_is_raised_by_either_renderer() -> None:
    t = "{{ raise_exception('roles must alternate') }}"
    for render in (_template.render_here, _template.render_chat_template):
        with pytest.raises(jinja2.TemplateError, match="roles must alternate"):
            render(t, MESSAGES)
