"""An LCEL chain: prompt | guarded model | StrOutputParser.

Run: python examples/lcel_chain.py
"""

from __future__ import annotations

from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from guardrail import GuardedChatModel


def main(**llm_options: Any) -> str:
    """Answer one question through a chain decoded under the AdaCD policy."""
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a concise assistant."), ("human", "{question}")]
    )
    llm = GuardedChatModel(policy="adacd", **{"max_new_tokens": 32, **llm_options})
    chain = prompt | llm | StrOutputParser()
    answer = chain.invoke({"question": "How do I make a cup of tea?"})
    print(answer)
    return answer


if __name__ == "__main__":
    main()
