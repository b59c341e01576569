"""``GuardedChatModel``: a LangChain chat model that decodes a local model under a safety policy.

Every call renders the conversation with the model's own chat template, decodes it with the
policy's strategy through guardrail's one decoding loop, and returns an ``AIMessage`` whose
``response_metadata["guardrail"]`` says how it was made (policy, strategy, per-step trace with
the refuse/comply modes, refusal detection).

* One code path: ``_generate`` collects ``_stream``; ``_agenerate`` collects ``_astream``, which
  runs the same token loop in a worker thread (:mod:`guardrail.langchain.threads`); the sync
  path decodes ahead in a worker too, so a paused ``stream()`` never holds the model.
* Lazy and shared: constructing the object loads nothing; the model is loaded on first use and
  cached by backend, path and load options (:mod:`guardrail.loading`), so a per-request policy
  switch or option never reloads weights.
* Thread and task safe: the instance keeps no per-request state; the engine's lock gives one
  generation at a time per loaded model, and every generation opens fresh token streams.
* ``batch``/``abatch`` put all inputs into one batched decode per model
  (:mod:`guardrail.langchain.batching`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from guardrail.langchain.batching import batch as batch_inputs
from guardrail.langchain.threads import iterate_ahead, iterate_in_thread
from guardrail.langchain.calls import Call, decode_calls, prepare, to_generation
from guardrail.langchain.options import (
    CALL_OPTIONS,
    LOAD_OPTIONS,
    SAMPLING_OPTIONS,
    STRATEGY_OPTIONS,
    build_policy,
    from_config,
    split_call_kwargs,
    stop_list,
    validation_summary,
)
from guardrail.engine import Engine
from guardrail.loading import model_name as loaded_model_name
from guardrail.errors import ConfigError
from guardrail.policy import Policy, PolicySource
from guardrail.policy.loader import default_policy_name
from guardrail.policy.schema import CallerRights
from guardrail.langchain.structured import response_schema
from guardrail.langchain.tool_calls import check_tools, normalise_tool_choice

_INSTANCE_OPTIONS = ("model", "backend", "system_prompt", *LOAD_OPTIONS, *SAMPLING_OPTIONS,
                     *STRATEGY_OPTIONS)
_SPELLED = {"max_new_tokens": "max_new_tokens/max_tokens"}


class GuardedChatModel(BaseChatModel):
    """A local LLM decoded under a guardrail safety policy, as a LangChain chat model.

    Example:
        ```python
        from guardrail import GuardedChatModel

        llm = GuardedChatModel(policy="adacd", max_new_tokens=64)  # embedded model, llama.cpp
        msg = llm.invoke("How do I pick a lock?")
        msg.response_metadata["guardrail"]["modes"]  # ["refuse", "comply", ...]
        ```

    Fields left ``None`` come from the policy (its ``model``, ``sampling`` and ``strategy``
    sections); set ones override it, validated by the policy schema. Per call, the same options
    can be given as keyword arguments (``llm.invoke(x, temperature=0.7)``) or through the config
    (``llm.with_config(configurable={"policy": "plain", "alpha": 2.0})``); precedence is
    call keyword > configurable > instance field > policy.
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid", protected_namespaces=())

    policy: str | Policy | PolicySource = Field(
        default_factory=default_policy_name,
        description="Shipped policy name (plain, adacd, ...), a YAML path, a Policy, or a "
        "PolicySource (follows its file: an edit reaches the next call, a bad edit keeps the "
        "last good policy); by default $GUARDRAIL_POLICY, else balanced.",
    )
    model: str | None = Field(None, description="GGUF file or model directory; None uses the "
                              "policy's model (by default the embedded SmolLM2-135M-Instruct).")
    backend: Literal["llamacpp", "transformers"] | None = Field(
        None, description="Model backend; None uses the policy's (llama.cpp by default)."
    )
    n_ctx: int | None = Field(None, description="Context size in tokens (llama.cpp).")
    n_threads: int | None = Field(None, description="CPU threads (llama.cpp).")
    n_gpu_layers: int | None = Field(None, description="Layers on the GPU (llama.cpp).")
    n_streams: int | None = Field(
        None, description="Most token streams decoded at once (llama.cpp), all callers together."
    )
    kv: Literal["unified", "per_stream"] | None = Field(
        None, description="llama.cpp KV cache: unified (shared; batched answers may drift) or "
        "per_stream (n_ctx per stream; batched greedy answers equal those decoded alone).",
    )
    device: str | None = Field(None, description="Device (transformers): cpu, cuda or auto.")
    dtype: str | None = Field(None, description="Weight dtype (transformers).")
    max_new_tokens: int | None = Field(
        None, alias="max_tokens", description="Most tokens generated per answer."
    )
    temperature: float | None = Field(None, description="0 = greedy.")
    top_p: float | None = Field(None, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, description="Keep the k most likely tokens (0 = off).")
    seed: int | None = Field(None, description="Sampling seed.")
    stop: list[str] | None = Field(None, description="Strings that end every answer.")
    alpha: float | None = Field(None, description="Contrast strength α (contrastive strategies).")
    lam: float | None = Field(None, description="Agreement threshold λ (contrastive strategies).")
    beta: float | None = Field(None, description="Plausibility cut-off β (contrastive strategies).")
    steps: int | None = Field(None, description="K, tokens decoded under contrast.")
    safety_prompt: str | None = Field(None, description="The extreme safety prompt.")
    system_prompt: str | None = Field(
        None, description="Deployment system prompt put before every conversation."
    )
    callers: CallerRights | None = Field(
        None,
        description="What callers may change per call (options, policies to switch to by name); "
        "None uses the policy's `callers` section (by default: sampling options only). "
        "`guardrail.policy.callers.trusting()` grants everything, for code that is its own "
        "operator.",
    )
    policies: dict[str, str | Policy] | None = Field(
        None, description="Policies callers may switch to by these names (paths or Policy "
        "objects given by the operator); each name must also be in `callers.policies`.",
    )
    streaming: bool = Field(
        False, description="Route invoke() through streaming callbacks (LangChain convention)."
    )

    _policy_obj: Policy = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        """Validate the fields; a bad one is a :class:`ConfigError` naming it."""
        try:
            super().__init__(**kwargs)
        except ValidationError as e:
            raise ConfigError(f"GuardedChatModel: {validation_summary(e)}") from None

    # ------------------------------------------------------------------ construction

    @model_validator(mode="after")
    def _check_policy(self) -> GuardedChatModel:
        """Resolve the policy and apply the fields now, so bad values fail at construction (no
        model is loaded here). Each call resolves it again (cheaply: policy files are cached
        while unchanged), so an edited policy file or a changed field reaches the next call."""
        self._policy_obj = self._policy_for({})
        return self

    def engine(self) -> Engine:
        """The loaded model of this chat model's policy (loaded on first use, then shared):
        its :attr:`~guardrail.engine.Engine.scheduler` says what is being decoded."""
        from guardrail.langchain import calls  # (tests point calls.get_engine at a fake model)

        return calls.get_engine(self._policy_for({}).model)

    def _resolve_model_profile(self) -> ModelProfile | None:
        """The profile LangChain reads (``create_agent``, SummarizationMiddleware's fractional
        triggers): from the policy's model section, without loading the model."""
        from guardrail.langchain.counting import model_profile

        return model_profile(self._policy_for({}))

    def get_token_ids(self, text: str) -> list[int]:
        """``text``'s token ids by the guarded model's own tokenizer (no special tokens)."""
        return self.engine().backend.tokenize_text(text)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the prompt the model reads for ``messages`` (chat template, deployment
        system prompt, ``tools`` rendered as a call renders them), by its own tokenizer."""
        from guardrail.langchain.counting import prompt_ids

        return len(prompt_ids(self.engine(), self._policy_for({}), messages, tools))

    def _instance_options(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _INSTANCE_OPTIONS if getattr(self, k) is not None}

    def _policy_for(self, call: dict[str, Any]) -> Policy:
        """The policy a call with options ``call`` runs under (the caller's options checked
        against the operator's rights: :mod:`guardrail.policy.callers`)."""
        return build_policy(self.policy, self._instance_options(), call, rights=self.callers,
                            registry=self.policies, names=_SPELLED)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """The configuration is plain data, so the model serialises with ``dumpd``."""
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        """``["guardrail", "chat_model"]``."""
        return ["guardrail", "chat_model"]

    @property
    def _llm_type(self) -> str:
        return "guardrail"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        p = self._policy_obj
        return {
            "policy": p.name, "strategy": p.strategy.model_dump(), "backend": p.model.backend,
            "model": p.model.path, "sampling": p.sampling.model_dump(),
            "system_prompt": p.system_prompt,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        s = self._policy_obj.sampling
        label = loaded_model_name(self._policy_obj.model)  # = response_metadata["model_name"]
        params = LangSmithParams(
            ls_provider="guardrail",
            ls_model_name=kwargs.get("model") or label,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", s.temperature),
            ls_max_tokens=kwargs.get("max_new_tokens", kwargs.get("max_tokens", s.max_new_tokens)),
        )
        stops = stop_list(stop) or self.stop or list(s.stop)
        if stops:
            params["ls_stop"] = list(stops)
        return params

    # ------------------------------------------------------------------ calls

    def _prepare(
        self, messages: Sequence[BaseMessage], stop: Sequence[str] | None, kwargs: dict[str, Any]
    ) -> Call:
        policy = self._policy_for(split_call_kwargs(kwargs))
        return prepare(policy, messages, stop=[*(self.stop or []), *stop_list(stop)],
                       tools=kwargs.get("tools"), tool_choice=kwargs.get("tool_choice"),
                       response_format=kwargs.get("response_format"),
                       parallel_tool_calls=kwargs.get("parallel_tool_calls"))

    def _stream_call(
        self, call: Call, run_manager: CallbackManagerForLLMRun | None
    ) -> Iterator[ChatGenerationChunk]:
        # Decoded ahead in a worker thread: a paused stream never holds the model.
        for chunk in iterate_ahead(lambda cancel: (c for _, c in decode_calls([call], cancel))):
            if run_manager is not None:
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    def _stream(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._stream_call(self._prepare(messages, stop, kwargs), run_manager)

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, stop, kwargs)
        total: ChatGenerationChunk | None = None
        for chunk in self._stream_call(call, run_manager):
            total = chunk if total is None else total + chunk
        assert total is not None  # the final chunk is always yielded
        return ChatResult(generations=[to_generation(total, call.parsed)])

    async def _astream_call(
        self, call: Call, run_manager: AsyncCallbackManagerForLLMRun | None
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Decode in a worker thread; the event loop stays free."""
        chunks = iterate_in_thread(lambda cancel: (c for _, c in decode_calls([call], cancel)),
                                   name="guardrail-astream")
        async for chunk in chunks:
            if run_manager is not None:
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    async def _astream(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # Preparing may load the model on first use: keep that off the event loop too.
        call = await asyncio.to_thread(self._prepare, messages, stop, kwargs)
        async for chunk in self._astream_call(call, run_manager):
            yield chunk

    async def _agenerate(
        self, messages: list[BaseMessage], stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any,
    ) -> ChatResult:
        call = await asyncio.to_thread(self._prepare, messages, stop, kwargs)
        total: ChatGenerationChunk | None = None
        async for chunk in self._astream_call(call, run_manager):
            total = chunk if total is None else total + chunk
        assert total is not None
        return ChatResult(generations=[to_generation(total, call.parsed)])

    # ------------------------------------------------------------------ runnable methods

    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        """Answer ``input`` (a string, messages or a prompt value) under the policy."""
        return super().invoke(input, config, stop=stop, **from_config(config, kwargs))

    async def ainvoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                      stop: list[str] | None = None, **kwargs: Any) -> AIMessage:
        """Async :meth:`invoke`; decoding runs in a worker thread."""
        return await super().ainvoke(input, config, stop=stop, **from_config(config, kwargs))

    def stream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        """Stream the answer token by token (tool calls arrive in the last chunk)."""
        yield from super().stream(input, config, stop=stop, **from_config(config, kwargs))

    async def astream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                      stop: list[str] | None = None, **kwargs: Any
                      ) -> AsyncIterator[AIMessageChunk]:
        """Async :meth:`stream`; the event loop stays free while tokens are decoded."""
        async for chunk in super().astream(input, config, stop=stop,
                                           **from_config(config, kwargs)):
            yield chunk

    def batch(self, inputs: list[LanguageModelInput],
              config: RunnableConfig | list[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        """Answer every input in one batched decode per loaded model; each input gets its own
        callback run and may carry its own ``configurable`` policy or options."""
        return batch_inputs(self, inputs, config, return_exceptions=return_exceptions,
                              **kwargs)

    async def abatch(self, inputs: list[LanguageModelInput],
                     config: RunnableConfig | list[RunnableConfig] | None = None, *,
                     return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        """Async :meth:`batch`: the one batched decode runs in a worker thread."""
        return await asyncio.to_thread(
            self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` to the model through its chat template.

        Args:
            tools: LangChain tools, Pydantic models, functions or OpenAI tool dicts.
            tool_choice: ``"auto"`` (default), ``"none"``, ``"any"``/``"required"``/``True``
                (the answer is made to start as a tool call), or a tool name to force it.
            **kwargs: further call options bound with the tools.
        """
        formatted = []
        for i, t in enumerate(tools):
            try:
                formatted.append(convert_to_openai_tool(t))
            except (ValueError, TypeError) as e:
                raise ConfigError(f"tools[{i}]: not a tool LangChain can describe ({e})") from None
        check_tools(formatted)
        normalise_tool_choice(tool_choice, formatted)  # fail now on a bad value
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(  # type: ignore[override]
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Answers as ``schema`` (a Pydantic class, TypedDict, JSON schema or OpenAI tool).

        Args:
            schema: the output schema; a Pydantic class gives instances, anything else dicts.
                May be ``None`` with ``method="json_mode"`` (any JSON object).
            method: ``"json_schema"`` (default): the answer is decoded as JSON under the
                schema (``response_format``); ``"json_mode"``: as any JSON object when no
                schema is given (describe the keys in the prompt), under the schema when one
                is (a local model can follow it, and the parser demands it);
                ``"function_calling"``: as a forced call of a tool made from the schema. All
                three are constrained token by token, so the JSON parses whenever the token
                budget lets it close.
            include_raw: return ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``
                instead of raising when parsing fails.
            strict: accepted for LangChain compatibility; the schema is always enforced by
                constrained decoding (``strict=False`` loosens nothing and tightens nothing).

        When the policy answers instead of the model (a request rule, or a refusal it
        replaced), parsing raises :class:`~guardrail.errors.RefusalError`, a LangChain
        ``ModelRefusalError``, with the policy's message as ``raw_message``.
        """
        from guardrail.langchain.structured import structured_runnable

        if kwargs:
            raise ConfigError(f"with_structured_output: unknown argument(s) "
                              f"{', '.join(sorted(kwargs))}; allowed: schema, method, "
                              "include_raw, strict")
        return structured_runnable(self, schema, method=method, include_raw=include_raw,
                                   strict=strict)

    def bind(self, **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind call options, checked now: an option the model does not take, or a
        ``response_format`` it cannot follow, fails here, naming it, not at the first invoke."""
        split_call_kwargs(kwargs)
        response_schema(kwargs.get("response_format"))
        return super().bind(**kwargs)


__all__ = ["CALL_OPTIONS", "GuardedChatModel"]
