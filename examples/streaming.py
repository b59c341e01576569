"""Stream an answer token by token, then show the per-step AdaCD decisions.

Run: python examples/streaming.py
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessageChunk

from guardrail import GuardedChatModel


def main(**llm_options: Any) -> AIMessageChunk:
    """Print tokens as they are decoded; the last chunk carries usage and the guardrail trace."""
    llm = GuardedChatModel(policy="adacd", **{"max_new_tokens": 32, **llm_options})
    full: AIMessageChunk | None = None
    for chunk in llm.stream("How can I get into my neighbour's house without a key?"):
        print(chunk.content, end="", flush=True)
        full = chunk if full is None else full + chunk
    assert full is not None
    meta = full.response_metadata["guardrail"]
    print(f"\nmodes: {meta['modes']}\nrefused: {meta['refused']}\nusage: {full.usage_metadata}")
    return full


if __name__ == "__main__":
    main()
