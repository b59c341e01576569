"""Answer several prompts concurrently: abatch decodes them together in one batched loop, and
astream keeps the event loop free while tokens are decoded.

Run: python examples/async_batch.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from langchain_core.messages import AIMessage

from guardrail import GuardedChatModel

PROMPTS = [
    "What is the capital of France?",
    "How do I pick a lock?",
    "Give me a tip for learning Python.",
]


async def run(**llm_options: Any) -> list[AIMessage]:
    """``abatch`` the prompts, then ``astream`` one while another task keeps running."""
    llm = GuardedChatModel(policy="adacd", **{"max_new_tokens": 24, **llm_options})
    answers: list[AIMessage] = await llm.abatch(PROMPTS)
    for prompt, msg in zip(PROMPTS, answers):
        modes = msg.response_metadata["guardrail"]["modes"]
        print(f"{prompt}\n  -> {msg.content!r}\n  modes: {modes}")

    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(heartbeat())
    async for chunk in llm.astream("Tell me a fun fact about owls."):
        print(chunk.content, end="", flush=True)
    beat.cancel()
    print(f"\n(the event loop ran {ticks} heartbeat ticks meanwhile)")
    return answers


def main(**llm_options: Any) -> list[AIMessage]:
    """Run :func:`run` in a fresh event loop."""
    return asyncio.run(run(**llm_options))


if __name__ == "__main__":
    main()
