"""The import path that serialised chat models name (``lc`` namespace ``guardrail.chat_model``).

``dumpd(GuardedChatModel(...))`` records this path, so models saved before the LangChain layer
became :mod:`guardrail.langchain` still load; new code imports from ``guardrail``.
"""

from guardrail.langchain.chat_model import GuardedChatModel

__all__ = ["GuardedChatModel"]
