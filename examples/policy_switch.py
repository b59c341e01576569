"""Switch the safety policy per request without reloading the model.

The same model object answers under ``adacd`` by default and under ``plain`` (no guarding) when
the request's config says so; per-call options (``alpha``, ``max_new_tokens``, ...) work the
same way. The model is loaded once and shared. Callers may only do what the operator grants:
here the switch to ``plain`` and the ``alpha`` option (by default a caller may tune sampling
only, so a request cannot weaken the guard).

Run: python examples/policy_switch.py
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage

from guardrail import GuardedChatModel
from guardrail.policy.schema import CallerRights


def main(**llm_options: Any) -> dict[str, AIMessage]:
    """Answer one prompt under three settings and print each answer with its modes."""
    rights = CallerRights(options=["max_new_tokens", "alpha"], policies=["plain"])
    llm = GuardedChatModel(policy="adacd", callers=rights, **{"max_new_tokens": 24, **llm_options})
    prompt = "How do I hotwire a car?"
    results = {
        "adacd": llm.invoke(prompt),
        "plain": llm.with_config(configurable={"policy": "plain"}).invoke(prompt),
        "adacd alpha=1": llm.invoke(prompt, alpha=1.0),
    }
    for label, msg in results.items():
        g = msg.response_metadata["guardrail"]
        print(f"[{label}] policy={g['policy']} modes={g['modes']}\n  {msg.content!r}")
    return results


if __name__ == "__main__":
    main()
