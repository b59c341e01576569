"""``GuardrailMiddleware``: decode every model call of a LangChain v1 agent under a policy.

``create_agent(model=..., tools=..., middleware=[GuardrailMiddleware(policy="adacd")])`` runs
each step of the agent loop (tool-calling steps included) through a :class:`GuardedChatModel`
with the middleware's policy and options. Decode-time guarding needs the model's logits, so the
agent's model must be local: a ``GuardedChatModel`` (its policy is replaced per call, its
loaded model is reused) or a ``ChatLlamaCpp`` (its GGUF file is loaded once into guardrail's
cache). Any other model is refused with an error that says so.

Each guarded step's ``response_metadata["guardrail"]`` gains ``agent_step`` (1 for the model
call answering the latest user message, 2 for the call after its tool results, ...) and is
passed to ``on_step`` if given, so an application can log or audit every decision of the run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.errors import GraphBubbleUp

from guardrail.langchain.chat_model import GuardedChatModel
from guardrail.langchain.options import CALL_OPTIONS, STRATEGY_OPTIONS
from guardrail.errors import ConfigError
from guardrail.policy import Policy
from guardrail.policy.loader import default_policy_name

logger = logging.getLogger("guardrail.middleware")

StepCallback = Callable[[dict[str, Any]], None]


def guardable_model(model: Any) -> GuardedChatModel:
    """The ``GuardedChatModel`` that decodes for ``model``, or a ``ConfigError`` saying why not."""
    if isinstance(model, GuardedChatModel):
        return model
    if type(model).__name__ == "ChatLlamaCpp" and getattr(model, "model_path", None):
        return GuardedChatModel(model=str(Path(model.model_path)), backend="llamacpp")
    name = type(model).__name__ if not isinstance(model, str) else repr(model)
    raise ConfigError(
        f"GuardrailMiddleware: the agent's model {name} cannot be guarded; decode-time "
        "guarding needs the model's logits, so the model must be local: use "
        "GuardedChatModel(model=PATH_OR_NONE, backend='llamacpp'|'transformers') (or a "
        "ChatLlamaCpp) as the agent's model"
    )


class GuardrailMiddleware(AgentMiddleware):  # type: ignore[type-arg]
    """Agent middleware that decodes every model call under a guardrail policy.

    Args:
        policy: shipped policy name, YAML path or ``Policy`` for every model call; None:
            ``$GUARDRAIL_POLICY``, else ``balanced``.
        on_step: called with each step's guardrail metadata (after the step).
        **options: per-call options applied to every step (``max_new_tokens``,
            ``temperature``, ``alpha``, ``lam``, ``beta``, ``steps``, ``safety_prompt``, ...).
    """

    def __init__(
        self,
        policy: str | Path | Policy | None = None,
        *,
        on_step: StepCallback | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        bad = [k for k in options if k not in CALL_OPTIONS or k == "policy"]
        if bad:
            allowed = ", ".join(k for k in CALL_OPTIONS if k != "policy")
            raise ConfigError(f"GuardrailMiddleware: unknown option {bad[0]!r}; allowed: {allowed}")
        if policy is None:
            policy = default_policy_name()
        # Validate the policy and options now (cheap: no model is loaded).
        GuardedChatModel(policy=policy if isinstance(policy, Policy) else str(policy), **options)
        self.policy: str | Policy = policy if isinstance(policy, Policy) else str(policy)
        self.options: dict[str, Any] = dict(options)
        self.on_step = on_step
        self._models: dict[tuple[Any, ...], tuple[Any, GuardedChatModel]] = {}

    @property
    def name(self) -> str:
        """Middleware name shown in the agent graph."""
        return "GuardrailMiddleware"

    # ------------------------------------------------------------------ shared helpers

    def _guarded_model(self, model: Any) -> GuardedChatModel:
        """The agent's model under the middleware's policy and options, which are the
        operator's (instance fields, not caller options); built once per agent model."""
        own = isinstance(model, GuardedChatModel)
        key = (type(model).__name__, id(model) if own else getattr(model, "model_path", None))
        hit = self._models.get(key)
        if hit is not None and (hit[0] is model or not own):  # a ChatLlamaCpp: by its file
            return hit[1]
        source = guardable_model(model)
        # The agent model's loading and sampling fields stay; its policy, its strategy options
        # (they belong to its own policy) and its caller rights do not.
        drop = {"policy", "callers", "policies", *STRATEGY_OPTIONS}
        fields = {k: getattr(source, k) for k in source.model_fields_set if k not in drop}
        built = GuardedChatModel(**{**fields, **self.options, "policy": self.policy})
        self._models[key] = (model, built)
        return built

    def _guarded_request(self, request: ModelRequest) -> ModelRequest:
        """``request`` with the guarded model; the agent's own model settings stay call options
        (checked against the policy's caller rights)."""
        return request.override(model=self._guarded_model(request.model))

    def _report(self, request: ModelRequest, response: Any) -> Any:
        """Number the step and hand its guardrail metadata to ``on_step``."""
        messages = (
            [response] if isinstance(response, AIMessage) else getattr(response, "result", [])
        )
        since_user = 0
        for m in reversed(request.messages):
            if isinstance(m, HumanMessage):
                break
            since_user += isinstance(m, AIMessage)
        step = since_user + 1
        for m in messages:
            if not isinstance(m, AIMessage):
                continue
            meta = m.response_metadata.get("guardrail")
            if not isinstance(meta, Mapping):
                continue
            meta = {**meta, "agent_step": step}
            m.response_metadata["guardrail"] = meta
            logger.debug(
                "agent step %d: policy=%s modes=%s tool_calls=%d",
                step, meta.get("policy"), meta.get("modes"), len(m.tool_calls),
            )
            if self.on_step is not None:
                self.on_step(meta)
        return response

    # ------------------------------------------------------------------ hooks

    def wrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], ModelResponse],
    ) -> ModelResponse:
        """Run the model call under the policy."""
        guarded = self._guarded_request(request)
        try:
            response = handler(guarded)
        except GraphBubbleUp:
            raise  # interrupts and control flow belong to the graph, not to us
        return self._report(guarded, response)

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse:
        """Async :meth:`wrap_model_call`."""
        guarded = self._guarded_request(request)
        try:
            response = await handler(guarded)
        except GraphBubbleUp:
            raise
        return self._report(guarded, response)


def is_local_model(model: BaseChatModel | str) -> bool:
    """Whether ``model`` can be guarded by :class:`GuardrailMiddleware`."""
    try:
        guardable_model(model)
    except ConfigError:
        return False
    return True


__all__ = ["GuardrailMiddleware", "guardable_model", "is_local_model"]
