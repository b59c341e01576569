"""The llama.cpp backends' chat-template renderer (adapters/_template.py) in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap


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
        from guardrail.adapters._template import render_chat_template
        t = ("{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
             "<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}"
             "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}"
             "{% if add_generation_prompt %}<assistant>{% endif %}")
        msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
        print(render_chat_template(t, msgs))
    ''')
    assert out.strip() == "<user>hi<assistant>hello<user>bye<assistant>"
