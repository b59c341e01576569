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

Hooks (see :mod:`guardrail.langchain.agent_checks`):

* ``before_model``: the policy's request rules on the conversation; a rule that answers ends
  the run with its message (``jump_to: "end"``) before any model is loaded or decoded.
* ``wrap_model_call``: the model call decoded under the policy.
* ``after_model``: the step's decision (policy, refused, replaced, matched rule, ...) appended
  to the agent state's ``guardrail`` list, which the run returns.
* ``wrap_tool_call``: a tool's result through the request rules and the prompt probe (where the
  policy has a ``refuse_above`` zone) before the model reads it; a withheld result becomes an
  error ``ToolMessage`` naming the policy and the reason, recorded in ``guardrail`` too.

An adopted ``ChatLlamaCpp`` or ``ChatHuggingFace`` keeps its settings and its loaded weights
(:mod:`guardrail.langchain.adopt`).
"""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain.agents.middleware.types import hook_config
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    ToolMessage,
    convert_to_messages,
)
from langgraph.errors import GraphBubbleUp
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command
from typing_extensions import NotRequired

from guardrail.errors import ConfigError
from guardrail.langchain import agent_checks
from guardrail.langchain.adopt import guardable_model, llamacpp_settings, loaded_weights
from guardrail.langchain.chat_model import GuardedChatModel
from guardrail.langchain.options import CALL_OPTIONS, STRATEGY_OPTIONS
from guardrail.loading import get_engine
from guardrail.policy import Policy
from guardrail.policy.loader import default_policy_name

logger = logging.getLogger("guardrail.middleware")

StepCallback = Callable[[dict[str, Any]], None]


class GuardrailState(AgentState):  # type: ignore[type-arg]
    """The agent state with the guard's record of the run (one entry per decision)."""

    guardrail: NotRequired[Annotated[list[dict[str, Any]], operator.add]]


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
        # Validate the policy and options now (cheap: no model is loaded); it also resolves
        # the policy for the hooks that run no model call.
        self._policy_model = GuardedChatModel(
            policy=policy if isinstance(policy, Policy) else str(policy), **options)
        self.policy: str | Policy = policy if isinstance(policy, Policy) else str(policy)
        self.options: dict[str, Any] = dict(options)
        self.on_step = on_step
        self._models: dict[tuple[Any, ...], tuple[Any, GuardedChatModel]] = {}
        self._last: GuardedChatModel | None = None  # the model of the latest step

    state_schema = GuardrailState

    @property
    def name(self) -> str:
        """Middleware name shown in the agent graph."""
        return "GuardrailMiddleware"

    # ------------------------------------------------------------------ shared helpers

    def _guarded_model(self, model: Any) -> GuardedChatModel:
        """The agent's model under the middleware's policy and options, which are the
        operator's (instance fields, not caller options); built once per agent model."""
        own = isinstance(model, GuardedChatModel)
        key = (type(model).__name__, id(model))  # the cached entry holds the model: id is safe
        hit = self._models.get(key)
        if hit is not None and hit[0] is model:
            return hit[1]
        source = guardable_model(model)
        # The agent model's loading and sampling fields stay; its policy, its strategy options
        # (they belong to its own policy) and its caller rights do not.
        drop = {"policy", "callers", "policies", *STRATEGY_OPTIONS}
        fields = {k: getattr(source, k) for k in source.model_fields_set if k not in drop}
        built = GuardedChatModel(**{**fields, **self.options, "policy": self.policy})
        weights = None if own else loaded_weights(model)
        if weights is not None:  # its weights, not a second load
            get_engine(built._policy_for({}).model, loaded=weights)
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
        self._last = guarded.model  # type: ignore[assignment]
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
        self._last = guarded.model  # type: ignore[assignment]
        try:
            response = await handler(guarded)
        except GraphBubbleUp:
            raise
        return self._report(guarded, response)

    @property
    def _policy(self) -> Policy:
        """The operator's policy now (a policy file's edits reach the next step)."""
        return self._policy_model._policy_obj

    def _tell(self, record: dict[str, Any]) -> None:
        if self.on_step is not None:
            self.on_step(record)

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """End the run with a request rule's answer before any decode."""
        answer = agent_checks.blocked_answer(self._policy, state["messages"])
        if answer is None:
            return None
        record = agent_checks.step_record(answer)
        assert record is not None
        self._tell(answer.response_metadata["guardrail"])
        return {"messages": [answer], "guardrail": [record], "jump_to": "end"}

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """Async :meth:`before_model` (no model is run)."""
        return self.before_model(state, runtime)

    def after_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """Record the step's decision in the agent state."""
        messages = state.get("messages") or []
        record = agent_checks.step_record(messages[-1]) if messages else None
        return None if record is None else {"guardrail": [record]}

    async def aafter_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """Async :meth:`after_model`."""
        return self.after_model(state, runtime)

    def _tool_engine(self) -> Any:
        """The model that reads tool results with the policy's probe: the agent's model of the
        latest step, else (a run resumed in a new process) the policy's own model."""
        return (self._last or self._policy_model).engine()

    def _withheld(self, message: BaseMessage) -> tuple[BaseMessage, dict[str, Any]] | None:
        """``message`` (a tool's output) withheld, and the record why; None when it may pass."""
        policy = self._policy
        why = agent_checks.check_tool_result(policy, agent_checks.read_text(message),
                                             self._tool_engine)
        if why is None:
            return None
        out = agent_checks.withheld_message(message, policy, why)
        logger.info("tool result of %s withheld by policy %s (%s)",
                    getattr(message, "name", None), policy.name, why.reason)
        record = out.response_metadata["guardrail"]
        self._tell(record)
        return out, record

    def _checked(self, result: Any) -> Any:
        """A tool's output with every message the model would read checked: a ToolMessage, a
        list of them (or of Commands), and the messages a Command adds (in any form LangGraph's
        ``add_messages`` takes)."""
        if isinstance(result, ToolMessage):
            hit = self._withheld(result)
            return result if hit is None else Command(
                update={"messages": [hit[0]], "guardrail": [hit[1]]})
        if isinstance(result, list):
            return [self._checked(r) for r in result]
        if not isinstance(result, Command):
            return result
        # A Command steers the graph itself, but the messages it adds are the tool's output
        # too: each is checked like a result.
        update = result.update
        if isinstance(update, (list, tuple)) and all(
                isinstance(u, tuple) and len(u) == 2 for u in update):
            update = dict(update)
        if not isinstance(update, dict) or update.get("messages") is None:
            return result
        raw = update["messages"]
        messages = convert_to_messages(raw if isinstance(raw, list) else [raw])
        checked, records = [], []
        for m in messages:
            hit = self._withheld(m)
            checked.append(m if hit is None else hit[0])
            records += [] if hit is None else [hit[1]]
        if not records:
            return result
        new = {**update, "messages": checked,
               "guardrail": [*(update.get("guardrail") or []), *records]}
        return Command(graph=result.graph, update=new, resume=result.resume, goto=result.goto)

    def wrap_tool_call(
        self, request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        """Run the tool, then check its result before the model reads it."""
        return self._checked(handler(request))

    async def awrap_tool_call(
        self, request: ToolCallRequest,
        handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """Async :meth:`wrap_tool_call` (the probe runs in a worker thread)."""
        result = await handler(request)
        return await asyncio.to_thread(self._checked, result)


def is_local_model(model: BaseChatModel | str) -> bool:
    """Whether ``model`` can be guarded by :class:`GuardrailMiddleware`."""
    try:
        guardable_model(model)
    except ConfigError:
        return False
    return True


__all__ = ["GuardrailMiddleware", "GuardrailState", "guardable_model", "is_local_model",
           "llamacpp_settings"]
