"""``GuardedChatModel``: a LangChain chat model that decodes a local model under a safety policy.

Every call renders the conversation with the model's own chat template, decodes it with the
policy's rule (AdaCD, plain, ...) through guardrail's one decoding loop, and returns an
``AIMessage`` whose ``response_metadata["guardrail"]`` says how it was made (policy, strategy,
per-step trace with the refuse/comply modes, refusal detection).

Design:

* One code path. ``_generate`` collects ``_stream``; ``_agenerate`` collects ``_astream``;
  ``_astream`` runs the same synchronous token loop in a worker thread and hands chunks back
  through an ``asyncio.Queue``, so the event loop is never blocked.
* Lazy and shared. Constructing the object loads nothing; the model is loaded on first use by
  :func:`guardrail.engine.get_engine`, which caches it by backend, path and load options, so a
  per-request policy switch or per-call override never reloads weights.
* Thread and task safe. The instance keeps no per-request state; the engine's lock gives one
  generation at a time per loaded model (callers queue), and every generation opens fresh token
  streams, so no KV cache or trace leaks between requests.
* ``batch``/``abatch`` put all inputs into one batched decode per model.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config, get_config_list
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from guardrail.decoding.loop import FinishEvent, GenerationRequest, TokenEvent
from guardrail.engine import Engine, get_engine
from guardrail.errors import ConfigError, RefusalError
from guardrail.policy import Policy, load_policy
from guardrail.policy.decisions import log_step
from guardrail.tools import (
    ConstrainedCallRule,
    ParsedOutput,
    call_schema,
    TemplateToolSupport,
    add_tools_to_system,
    check_tool_names,
    forced_prefix,
    normalise_tool_choice,
    parse_tool_calls,
    probe_template,
    safe_text_end,
    to_template_messages,
    tool_names,
)

#: Per-call sampling options (``invoke(..., temperature=0.7)``, ``configurable={...}``).
SAMPLING_OPTIONS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed")
#: Per-call options of the AdaCD strategy.
STRATEGY_OPTIONS = ("alpha", "lam", "beta", "steps", "safety_prompt")
#: Every option a call may override, plus ``policy`` itself.
CALL_OPTIONS = ("policy", "system_prompt", *SAMPLING_OPTIONS, *STRATEGY_OPTIONS)
#: Model-loading options (instance fields only: changing them means another loaded model).
LOAD_OPTIONS = ("n_ctx", "n_threads", "n_gpu_layers", "device", "dtype")
_CALL_ONLY = ("tools", "tool_choice", "stop", "ls_structured_output_format", "max_tokens")

Action = Literal["allow", "replace", "raise"]


@lru_cache(maxsize=64)
def _load_named_policy(name: str) -> Policy:
    return load_policy(name)


def _as_policy(value: str | Path | Policy) -> Policy:
    if isinstance(value, Policy):
        return value
    if not isinstance(value, (str, Path)):
        raise ConfigError(
            f"policy: expected a shipped policy name, a YAML path or a Policy, "
            f"got {type(value).__name__}"
        )
    return _load_named_policy(str(value))


_support_cache: weakref.WeakKeyDictionary[Engine, TemplateToolSupport] = (
    weakref.WeakKeyDictionary()
)
_support_lock = threading.Lock()
_texts_cache: weakref.WeakKeyDictionary[Engine, list[str]] = weakref.WeakKeyDictionary()


def _token_texts(engine: Engine) -> list[str]:
    """Each token's text alone (cached per model); pieces of split characters are empty."""
    with _support_lock:
        got = _texts_cache.get(engine)
    if got is None:
        b = engine.backend
        got = [b.detokenize([i]) for i in range(b.vocab_size)]
        got = ["" if "\ufffd" in t else t for t in got]
        with _support_lock:
            _texts_cache[engine] = got
    return got


def _template_support(engine: Engine) -> TemplateToolSupport:
    with _support_lock:
        got = _support_cache.get(engine)
        if got is None:
            got = _support_cache[engine] = probe_template(engine.backend)
        return got


def _plain(x: Any) -> Any:
    """JSON-safe copy of trace values (numpy scalars become Python numbers)."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x


def _action(policy: Policy, name: str) -> tuple[Action, str]:
    """``(action, message)`` of ``policy.on_refusal`` / ``policy.on_match`` (allow if absent)."""
    cfg = getattr(policy, name, None)
    if cfg is None:
        return "allow", ""
    return getattr(cfg, "action", "allow"), getattr(cfg, "message", "") or ""


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def _detector(policy: Policy, engine: Engine) -> Callable[[str, str], Any]:
    """The policy's refusal detector (``guardrail.refusal.get_detector``), else string match."""
    from guardrail import refusal

    get = getattr(refusal, "get_detector", None)
    cfg = getattr(policy, "refusal", None)
    if get is not None and cfg is not None:
        return get(cfg, engine)  # type: ignore[no-any-return]
    return lambda prompt, response: refusal.string_match(response)


def _match_rule(policy: Policy, messages: Sequence[Mapping[str, Any]]) -> Any:
    """The first of the policy's request rules that matches the latest user turn, if any."""
    text = _last_user_text(messages)
    for rule in getattr(policy, "rules", None) or []:
        if rule.search(text):
            return rule
    return None


def _rule_action(policy: Policy, rule: Any) -> tuple[Action, str]:
    """A matching rule's action and message, falling back to the policy's ``on_match``."""
    action, message = _action(policy, "on_match")
    return (getattr(rule, "action", None) or action), (getattr(rule, "message", None) or message)


@dataclass
class _Call:
    """One prepared generation and its streaming state."""

    engine: Engine
    policy: Policy
    request: GenerationRequest | None  # None when a rule answered without generating
    template_messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    tool_mode: str  # "auto" | "any" | "none"
    tool_format: str
    prefix: str
    hold_all: bool  # stream nothing until the end (the answer may be replaced)
    preset: str | None = None  # answer given by a matching rule (on_match: replace)
    matched_rule: str | None = None
    generated: str = ""
    emitted: str = ""
    finish: FinishEvent | None = field(default=None, repr=False)
    parsed: ParsedOutput | None = None  # the final answer: text, tool calls, invalid calls

    @property
    def tools_active(self) -> bool:
        return bool(self.tools) and self.tool_mode != "none"


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
    sections); set ones override it. Per call, the same options can be given as keyword
    arguments (``llm.invoke(x, temperature=0.7)``) or through the config
    (``llm.with_config(configurable={"policy": "plain", "alpha": 2.0})``); precedence is
    call keyword > configurable > instance field > policy.
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid", protected_namespaces=())

    policy: str | Policy = Field(
        "adacd", description="Shipped policy name (plain, adacd, ...), a YAML path, or a Policy."
    )
    model: str | None = Field(
        None,
        description="GGUF file or model directory; None uses the policy's model (by default "
        "the embedded SmolLM2-135M-Instruct).",
    )
    backend: Literal["llamacpp", "transformers"] | None = Field(
        None, description="Model backend; None uses the policy's (llama.cpp by default)."
    )
    n_ctx: int | None = Field(None, ge=16, description="Context size in tokens (llama.cpp).")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (llama.cpp).")
    n_gpu_layers: int | None = Field(None, ge=-1, description="Layers on the GPU (llama.cpp).")
    device: Literal["cpu", "cuda", "auto"] | None = Field(
        None, description="Device (transformers)."
    )
    dtype: Literal["float32", "float16", "bfloat16", "auto"] | None = Field(
        None, description="Weight dtype (transformers)."
    )
    max_new_tokens: int | None = Field(
        None, ge=1, alias="max_tokens", description="Most tokens generated per answer."
    )
    temperature: float | None = Field(None, ge=0, description="0 = greedy.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, ge=0, description="Keep the k most likely tokens (0 = off).")
    seed: int | None = Field(None, description="Sampling seed.")
    stop: list[str] | None = Field(None, description="Strings that end every answer.")
    alpha: float | None = Field(None, ge=0, description="AdaCD α, contrast strength.")
    lam: float | None = Field(None, gt=0, le=1, description="AdaCD λ, agreement threshold.")
    beta: float | None = Field(None, ge=0, lt=1, description="AdaCD β, plausibility cut-off.")
    steps: int | None = Field(None, ge=0, description="AdaCD K, tokens decoded under contrast.")
    safety_prompt: str | None = Field(
        None, min_length=1, description="AdaCD extreme safety prompt."
    )
    system_prompt: str | None = Field(
        None, description="Deployment system prompt put before every conversation."
    )
    streaming: bool = Field(
        False, description="Route invoke() through streaming callbacks (LangChain convention)."
    )

    _policy_obj: Policy = PrivateAttr()

    # ------------------------------------------------------------------ construction

    @model_validator(mode="after")
    def _check_policy(self) -> GuardedChatModel:
        """Resolve the policy and apply the overrides now, so bad values fail at construction
        (no model is loaded here)."""
        self._policy_obj = self._build_policy(self.policy, {}, instance_strict=True)
        return self

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
            "policy": p.name,
            "strategy": p.strategy.model_dump(),
            "backend": p.model.backend,
            "model": p.model.path,
            "sampling": p.sampling.model_dump(),
            "system_prompt": p.system_prompt,
        }

    def _model_label(self, path: str | None) -> str:
        if path is None:
            from guardrail.models import EMBEDDED_FILE

            return Path(EMBEDDED_FILE).stem
        return Path(path).name

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        s = self._policy_obj.sampling
        max_tokens = kwargs.get("max_new_tokens", kwargs.get("max_tokens", s.max_new_tokens))
        params = LangSmithParams(
            ls_provider="guardrail",
            ls_model_name=kwargs.get("model") or self._model_label(self._policy_obj.model.path),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", s.temperature),
            ls_max_tokens=max_tokens,
        )
        stops = stop or self.stop or list(s.stop)
        if stops:
            params["ls_stop"] = list(stops)
        return params

    # ------------------------------------------------------------------ policy resolution

    def _build_policy(
        self, base: str | Path | Policy, call: Mapping[str, Any], *, instance_strict: bool
    ) -> Policy:
        """The policy a call runs under: ``base`` with instance fields then ``call`` applied.

        Strategy options on a strategy without them are errors when given per call, or at
        construction for the instance's own policy; an instance's AdaCD options are ignored
        when a call switches to a policy whose strategy lacks them.
        """
        policy = _as_policy(base)
        mcfg = {k: getattr(self, k) for k in LOAD_OPTIONS if getattr(self, k) is not None}
        if self.model is not None:
            mcfg["path"] = self.model
        if self.backend is not None:
            mcfg["backend"] = self.backend
        samp = {k: getattr(self, k) for k in SAMPLING_OPTIONS if getattr(self, k) is not None}
        samp.update({k: call[k] for k in SAMPLING_OPTIONS if call.get(k) is not None})
        strat_inst = {k: getattr(self, k) for k in STRATEGY_OPTIONS if getattr(self, k) is not None}
        strat_call = {k: call[k] for k in STRATEGY_OPTIONS if call.get(k) is not None}
        fields = type(policy.strategy).model_fields
        for source, opts, strict in (
            ("argument", strat_inst, instance_strict),
            ("call option", strat_call, True),
        ):
            bad = [k for k in opts if k not in fields]
            if bad and strict:
                raise ConfigError(
                    f"{source} {bad[0]!r} applies to the adacd strategy only; policy "
                    f"{policy.name!r} uses strategy {policy.strategy.kind!r}"
                )
        strat = {k: v for k, v in {**strat_inst, **strat_call}.items() if k in fields}
        update: dict[str, Any] = {}
        try:
            if mcfg:
                update["model"] = policy.model.model_validate(
                    {**policy.model.model_dump(), **mcfg}
                )
            if samp:
                update["sampling"] = policy.sampling.model_validate(
                    {**policy.sampling.model_dump(), **samp}
                )
            if strat:
                update["strategy"] = policy.strategy.model_validate(
                    {**policy.strategy.model_dump(), **strat}
                )
        except Exception as e:  # pydantic's message names the field and the allowed values
            raise ConfigError(f"invalid override for policy {policy.name!r}: {e}") from e
        system = call.get("system_prompt", self.system_prompt)
        if system is not None:
            update["system_prompt"] = system
        return policy.model_copy(update=update) if update else policy

    def _split_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Validate per-call keyword arguments; return the call options among them."""
        call: dict[str, Any] = {}
        for k, v in kwargs.items():
            if k in CALL_OPTIONS:
                call[k] = v
            elif k == "max_tokens":
                call["max_new_tokens"] = v
            elif k in _CALL_ONLY:
                continue
            elif k == "model":
                raise ConfigError(
                    "model: switching the model per call is not supported; construct another "
                    "GuardedChatModel (loaded models are cached and shared)"
                )
            else:
                raise ConfigError(
                    f"unknown call option {k!r}; allowed: {', '.join(CALL_OPTIONS)}, "
                    "max_tokens, stop, tools, tool_choice"
                )
        return call

    # ------------------------------------------------------------------ preparing calls

    def _prepare(
        self, messages: Sequence[BaseMessage], stop: Sequence[str] | None, kwargs: Mapping[str, Any]
    ) -> _Call:
        call = self._split_kwargs(kwargs)
        policy = (
            self._build_policy(call["policy"], call, instance_strict=False)
            if call.get("policy") is not None
            else self._build_policy(self.policy, call, instance_strict=True)
        )
        engine = get_engine(policy.model)
        tools = [dict(t) for t in kwargs.get("tools") or []]
        check_tool_names(tools)
        mode, forced = normalise_tool_choice(kwargs.get("tool_choice"), tools)
        support = _template_support(engine)
        tmpl = to_template_messages(messages, support if tools else None)
        render_tools: list[dict[str, Any]] | None = None
        if tools and mode != "none":
            if support.tools:
                render_tools = tools
            else:
                tmpl = add_tools_to_system(tmpl, tools)
        stops = [*(self.stop or []), *(stop or [])]
        prefix = forced_prefix(support.format, forced) if tools and mode == "any" else ""
        if prefix and support.format == "hermes":
            stops.append("</tool_call>")
        refusal_action, _ = _action(policy, "on_refusal")
        rule = _match_rule(policy, tmpl)
        c = _Call(
            engine=engine,
            policy=policy,
            request=None,
            template_messages=tmpl,
            tools=tools,
            tool_mode=mode,
            tool_format=support.format,
            prefix=prefix,
            hold_all=refusal_action != "allow",
        )
        if rule is not None:
            action, message = _rule_action(policy, rule)
            c.matched_rule = str(getattr(rule, "name", None) or getattr(rule, "pattern", "rule"))
            if action == "raise":
                raise RefusalError(
                    f"policy {policy.name!r}: request matched rule {c.matched_rule!r}"
                )
            if action == "replace":
                c.preset = message
                return c
        req = engine.request(policy, tmpl, tools=render_tools, stop=stops)
        if prefix:
            ids = engine.backend.tokenize(prefix)
            req.prompts = [[*p, *ids] for p in req.prompts]
            # Keep the forced call's JSON valid for the tool's schema (guardrail.tools).
            req.rule = ConstrainedCallRule(
                req.rule,
                call_schema(tools, forced),
                _token_texts(engine),
                engine.backend.tokenize,
                engine.backend.detokenize,
                opening="" if forced else '{"name": "',
                closing="}" if forced else "",
                end_id=min(engine.backend.end_of_turn_ids),
                special_ids=engine.backend.end_of_turn_ids,
                budget=req.max_new_tokens,
            )
        c.request = req
        return c

    # ------------------------------------------------------------------ the token loop

    def _on_token(self, c: _Call, text: str) -> str:
        """Record released text; return what may be streamed now."""
        c.generated += text
        if c.hold_all:
            return ""
        full = c.prefix + c.generated
        fmt: Any = c.tool_format
        end = safe_text_end(full, fmt) if c.tools_active else len(full)
        if end <= len(c.emitted):
            return ""
        new = full[len(c.emitted) : end]
        c.emitted += new
        return new

    def _final_chunk(self, c: _Call) -> ChatGenerationChunk:
        """The last chunk: the rest of the text, tool calls, usage and guardrail metadata."""
        policy = c.policy
        fin = c.finish
        if c.preset is not None or fin is None:
            full, prompt_tokens, output_tokens, reason, steps = c.preset or "", 0, 0, "rule", []
        else:
            c.generated = fin.text  # the whole released text (the tail included)
            full = c.prefix + fin.text
            prompt_tokens, output_tokens = fin.prompt_tokens, len(fin.token_ids)
            reason, steps = fin.reason, fin.steps
        parsed = (
            parse_tool_calls(full, tool_names(c.tools)) if c.tools_active and c.preset is None
            else ParsedOutput(full)
        )
        content = parsed.content
        verdict = _detector(policy, c.engine)(_last_user_text(c.template_messages), content)
        action, message = _action(policy, "on_refusal")
        replaced = False
        if verdict.refused and c.preset is None:
            if action == "raise":
                raise RefusalError(
                    f"policy {policy.name!r}: the answer was detected as a refusal "
                    f"by {verdict.detector!r}"
                )
            if action == "replace":
                content, replaced = message, True
        if content.startswith(c.emitted):
            rest = content[len(c.emitted) :]
        elif content.startswith(c.emitted.strip()):
            rest = content[len(c.emitted.strip()) :]
        else:
            rest = ""
        steps_plain = _plain(steps)
        meta: dict[str, Any] = {
            "policy": policy.name,
            "strategy": policy.strategy.kind,
            "backend": policy.model.backend,
            "model": c.engine.backend.model_name,
            "modes": [s["mode"] for s in steps_plain if "mode" in s],
            "steps": steps_plain,
            "refused": bool(verdict.refused),
            "refusal_detector": verdict.detector,
            "finish_reason": reason,
        }
        if c.matched_rule is not None:
            meta["matched_rule"] = c.matched_rule
        if replaced:
            meta["replaced"] = True
        if c.tools_active:
            meta["tool_format"] = c.tool_format
        finish_reason = (
            "tool_calls" if parsed.tool_calls else ("length" if reason == "length" else "stop")
        )
        chunks = [
            tool_call_chunk(
                name=tc["name"], args=json.dumps(tc["args"], ensure_ascii=False), id=tc["id"],
                index=i,
            )
            for i, tc in enumerate(parsed.tool_calls)
        ]
        # An invalid call's raw text must not be "repaired" by partial-JSON parsing when
        # stream chunks are merged, so its chunk carries the raw model output, tag included.
        chunks += [
            tool_call_chunk(
                name=bad.get("name"), args=f"<tool_call>{bad.get('args') or ''}",
                id=bad.get("id"), index=len(chunks) + i,
            )
            for i, bad in enumerate(parsed.invalid_tool_calls)
        ]
        c.parsed = ParsedOutput(c.emitted + rest, parsed.tool_calls, parsed.invalid_tool_calls)
        msg = AIMessageChunk(
            content=rest,
            tool_call_chunks=chunks,
            usage_metadata={
                "input_tokens": prompt_tokens,
                "output_tokens": output_tokens,
                "total_tokens": prompt_tokens + output_tokens,
            },
            response_metadata={
                "guardrail": meta,
                "finish_reason": finish_reason,
                "model_name": c.engine.backend.model_name,
                "model_provider": "guardrail",
            },
            chunk_position="last",
        )
        return ChatGenerationChunk(message=msg)

    def _chunks(
        self, calls: Sequence[_Call], cancel: threading.Event | None = None
    ) -> Iterator[tuple[int, ChatGenerationChunk]]:
        """Decode ``calls`` (all on one engine) together; yield ``(call index, chunk)``.

        Finishing (refusal detection, tool parsing) happens after the engine is released, so a
        detector may use the model itself.
        """
        live = [i for i, c in enumerate(calls) if c.request is not None]
        if live:
            engine = calls[live[0]].engine
            reqs = [calls[i].request for i in live]
            with closing(engine.stream(reqs)) as events:  # type: ignore[arg-type]
                for ev in events:
                    if cancel is not None and cancel.is_set():
                        return
                    c = calls[live[ev.request]]
                    if isinstance(ev, TokenEvent):
                        log_step(c.policy, ev.step, ev.info)
                        new = self._on_token(c, ev.text)
                        if new:
                            yield live[ev.request], ChatGenerationChunk(
                                message=AIMessageChunk(content=new)
                            )
                    elif isinstance(ev, FinishEvent):
                        c.finish = ev
        for i, c in enumerate(calls):
            yield i, self._final_chunk(c)

    # ------------------------------------------------------------------ LangChain hooks

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._stream_call(self._prepare(messages, stop, kwargs), run_manager)

    def _stream_call(
        self, call: _Call, run_manager: CallbackManagerForLLMRun | None
    ) -> Iterator[ChatGenerationChunk]:
        for _, chunk in self._chunks([call]):
            if run_manager is not None:
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, stop, kwargs)
        total: ChatGenerationChunk | None = None
        for chunk in self._stream_call(call, run_manager):
            total = chunk if total is None else total + chunk
        assert total is not None  # the final chunk is always yielded
        return ChatResult(generations=[_to_generation(total, call.parsed)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for chunk in self._astream_call(messages, stop, run_manager, kwargs, []):
            yield chunk

    async def _astream_call(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: AsyncCallbackManagerForLLMRun | None,
        kwargs: Mapping[str, Any],
        holder: list[_Call],
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Decode in a worker thread; chunks come back through an ``asyncio.Queue``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        def work() -> None:
            try:
                # Preparing may load the model on first use: keep that off the event loop too.
                call = self._prepare(messages, stop, kwargs)
                holder.append(call)
                for _, chunk in self._chunks([call], cancel):
                    if cancel.is_set():
                        return
                    put(("chunk", chunk))
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
                put(("error", e))
            else:
                put(("done", None))

        worker = threading.Thread(target=work, name="guardrail-astream", daemon=True)
        worker.start()
        try:
            while True:
                kind, item = await queue.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise item
                if run_manager is not None:
                    await run_manager.on_llm_new_token(str(item.message.content), chunk=item)
                yield item
        finally:
            cancel.set()

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        holder: list[_Call] = []
        total: ChatGenerationChunk | None = None
        async for chunk in self._astream_call(messages, stop, run_manager, kwargs, holder):
            total = chunk if total is None else total + chunk
        assert total is not None
        return ChatResult(generations=[_to_generation(total, holder[0].parsed)])

    # ------------------------------------------------------------------ per-request config

    @staticmethod
    def _from_config(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Call options from ``config["configurable"]`` (keyword arguments take precedence)."""
        conf = (config or {}).get("configurable") or {}
        picked = {k: conf[k] for k in CALL_OPTIONS if k in conf and k not in kwargs}
        return {**picked, **kwargs}

    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Answer ``input`` (a string, messages or a prompt value) under the policy."""
        return super().invoke(input, config, stop=stop, **self._from_config(config, kwargs))

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """Async :meth:`invoke`; decoding runs in a worker thread."""
        return await super().ainvoke(input, config, stop=stop, **self._from_config(config, kwargs))

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """Stream the answer token by token (tool calls arrive in the last chunk)."""
        yield from super().stream(input, config, stop=stop, **self._from_config(config, kwargs))

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Async :meth:`stream`; the event loop stays free while tokens are decoded."""
        async for chunk in super().astream(
            input, config, stop=stop, **self._from_config(config, kwargs)
        ):
            yield chunk

    # ------------------------------------------------------------------ batching

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Answer every input in one batched decode per loaded model.

        Each input gets its own callbacks run (``on_chat_model_start``, one
        ``on_llm_new_token`` per streamed chunk, ``on_llm_end``) and may carry its own
        ``configurable`` policy or options.
        """
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        stop = kwargs.pop("stop", None)
        results: list[Any] = [None] * len(inputs)
        calls: list[_Call | None] = [None] * len(inputs)
        managers: list[CallbackManagerForLLMRun | None] = [None] * len(inputs)
        for i, (inp, cfg) in enumerate(zip(inputs, configs)):
            cfg = ensure_config(cfg)
            kw = self._from_config(cfg, dict(kwargs))
            kw.pop("ls_structured_output_format", None)
            try:
                messages = self._convert_input(inp).to_messages()
                cm = CallbackManager.configure(
                    cfg.get("callbacks"), self.callbacks, self.verbose,
                    cfg.get("tags"), self.tags,
                    {**(cfg.get("metadata") or {}), **self._get_ls_params(stop=stop, **kw)},
                    self.metadata,
                )
                managers[i] = cm.on_chat_model_start(
                    self._serialized,
                    [messages],
                    invocation_params=self._get_invocation_params(stop=stop, **kw),
                    options={"stop": stop, **kw},
                    name=cfg.get("run_name"),
                    run_id=cfg.get("run_id"),
                    batch_size=len(inputs),
                )[0]
                calls[i] = self._prepare(messages, stop, kw)
            except Exception as e:
                if managers[i] is not None:
                    managers[i].on_llm_error(e)  # type: ignore[union-attr]
                if not return_exceptions:
                    raise
                results[i] = e
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(calls):
            if c is not None:
                groups.setdefault(id(c.engine), []).append(i)
        for idxs in groups.values():
            group = [calls[i] for i in idxs]
            totals: dict[int, ChatGenerationChunk] = {}
            try:
                for j, chunk in self._chunks(group):  # type: ignore[arg-type]
                    i = idxs[j]
                    rm = managers[i]
                    if rm is not None:
                        rm.on_llm_new_token(str(chunk.message.content), chunk=chunk)
                    totals[i] = chunk if i not in totals else totals[i] + chunk
            except Exception as e:
                for i in idxs:
                    if managers[i] is not None:
                        managers[i].on_llm_error(e)  # type: ignore[union-attr]
                    results[i] = e
                if not return_exceptions:
                    raise
                continue
            for i in idxs:
                gen = _to_generation(totals[i], calls[i].parsed)  # type: ignore[union-attr]
                rm = managers[i]
                if rm is not None:
                    if gen.message.id is None:
                        gen.message.id = f"lc_run--{rm.run_id}"
                    rm.on_llm_end(LLMResult(generations=[[gen]]))
                results[i] = gen.message
        return results

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async :meth:`batch`: the one batched decode runs in a worker thread."""
        return await asyncio.to_thread(
            self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    # ------------------------------------------------------------------ tools

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
        formatted = [convert_to_openai_tool(t) for t in tools]
        check_tool_names(formatted)
        normalise_tool_choice(tool_choice, formatted)  # fail now on a bad value
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)


def _to_generation(chunk: ChatGenerationChunk, parsed: ParsedOutput | None) -> ChatGeneration:
    """The finished message: streamed text and metadata, tool calls exactly as parsed."""
    msg = chunk.message
    message = AIMessage(
        content=msg.content,
        tool_calls=parsed.tool_calls if parsed else getattr(msg, "tool_calls", []),
        invalid_tool_calls=(
            parsed.invalid_tool_calls if parsed else getattr(msg, "invalid_tool_calls", [])
        ),
        usage_metadata=getattr(msg, "usage_metadata", None),
        response_metadata=msg.response_metadata,
        id=msg.id,
    )
    return ChatGeneration(message=message, generation_info=chunk.generation_info)


__all__ = ["CALL_OPTIONS", "GuardedChatModel"]
