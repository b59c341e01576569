"""GuardedChatModel on the real embedded model (llama.cpp; one transformers parity check)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.load import dumpd, load
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

import guardrail.loading as engine_mod
from guardrail import GuardedChatModel
from guardrail.decoding.constraints import check_json_prefix
from guardrail.loading import get_engine
from guardrail.errors import ConfigError, RefusalError
from guardrail.policy import ModelConfig, load_policy
from guardrail.policy.callers import trusting
from guardrail.langchain.tool_calls import call_schema, parse_tool_calls, safe_text_end

pytest.importorskip("llama_cpp")

FAST = {"backend": "llamacpp", "n_threads": 1}


def llm(**kw: Any) -> GuardedChatModel:
    return GuardedChatModel(**{**FAST, "max_new_tokens": 6, **kw})


@tool
def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny in {city}."


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


# ------------------------------------------------------------------ construction


def test_construction_loads_nothing() -> None:
    before = engine_mod.load_count
    for _ in range(5):
        GuardedChatModel(policy="adacd", model=None, backend="transformers", alpha=2.0)
    assert engine_mod.load_count == before


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"policy": "no-such-policy"}, "no-such-policy"),
        ({"alpha": -1}, "alpha"),
        ({"lam": 1.5}, "lam"),
        ({"beta": 1.0}, "beta"),
        ({"steps": -1}, "steps"),
        ({"backend": "vllm"}, "backend"),
        ({"policy": "plain", "alpha": 2.0}, "alpha"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        GuardedChatModel(**kwargs)


def test_bad_call_option_names_it() -> None:
    with pytest.raises(ConfigError, match="frobnicate"):
        llm().invoke("hi", frobnicate=1)
    with pytest.raises(ConfigError, match="tool_choice"):
        llm().bind_tools([get_weather], tool_choice="no_such_tool")


def test_serialisation_round_trip() -> None:
    model = GuardedChatModel(policy="plain", max_tokens=12, temperature=0.0, stop=["\n"])
    revived = load(
        dumpd(model), valid_namespaces=["guardrail"], allowed_objects=[GuardedChatModel]
    )
    assert isinstance(revived, GuardedChatModel)
    assert revived.model_dump() == model.model_dump()


def test_identifying_and_ls_params() -> None:
    model = llm(policy="adacd", alpha=3.0, stop=["x"])
    ident = model._identifying_params
    assert ident["policy"] == "adacd" and ident["strategy"]["alpha"] == 3.0
    ls = model._get_ls_params()
    assert ls["ls_provider"] == "guardrail" and ls["ls_max_tokens"] == 6
    assert ls["ls_stop"] == ["x"]
    assert model._get_ls_params(model="other")["ls_model_name"] == "other"
    answer = model.invoke("hi")  # LangSmith's model name and the response's name the same thing
    assert ls["ls_model_name"] == answer.response_metadata["model_name"]


# ------------------------------------------------------------------ generation


def test_invoke_metadata_and_usage() -> None:
    msg = llm(policy="adacd").invoke("How do I bake bread?")
    assert isinstance(msg, AIMessage) and msg.content
    g = msg.response_metadata["guardrail"]
    assert g["policy"] == "adacd" and g["strategy"] == "adacd" and g["backend"] == "llamacpp"
    assert len(g["modes"]) == 6 and set(g["modes"]) <= {"refuse", "comply"}
    assert [s["step"] for s in g["steps"]] == list(range(6))
    assert isinstance(g["refused"], bool) and g["refusal_detector"]
    assert g["finish_reason"] == "length"
    u = msg.usage_metadata
    assert u is not None and u["output_tokens"] == 6
    assert u["total_tokens"] == u["input_tokens"] + 6 and u["input_tokens"] > 10


def test_invoke_equals_engine_greedy() -> None:
    """The chat model adds nothing to the decoding: same tokens as the engine itself."""
    model = llm(policy="adacd", max_new_tokens=8)
    msg = model.invoke([HumanMessage("Name a fruit.")])
    eng = get_engine(ModelConfig(backend="llamacpp", n_threads=1))
    policy = load_policy("adacd")
    policy = policy.model_copy(
        update={"sampling": policy.sampling.model_copy(update={"max_new_tokens": 8})}
    )
    gen = eng.generate(policy, [{"role": "user", "content": "Name a fruit."}])
    assert msg.content == gen.text
    assert msg.response_metadata["guardrail"]["modes"] == gen.modes


def test_stream_matches_invoke_and_usage_once() -> None:
    model = llm(max_new_tokens=8)
    full = model.invoke("Tell me about cats.")
    chunks = list(model.stream("Tell me about cats."))
    assert "".join(str(c.content) for c in chunks) == full.content
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert len(chunks) >= 3
    agg = chunks[0]
    for c in chunks[1:]:
        agg = agg + c
    assert agg.response_metadata["guardrail"]["modes"] == full.response_metadata["guardrail"][
        "modes"
    ]


def test_stream_yields_first_token_while_generating() -> None:
    model = llm(max_new_tokens=12)
    eng = get_engine(ModelConfig(backend="llamacpp", n_threads=1))
    it = iter(model.stream("Write a short poem about rain."))
    first = next(it)
    assert first.content
    # The engine is still generating: another thread cannot take the model.
    got: list[bool] = []
    probe = threading.Thread(target=lambda: got.append(eng.lock.acquire(blocking=False)))
    probe.start()
    probe.join()
    assert got == [False]
    rest = list(it)
    # the answer went on after the first chunk (which came before the generation was done)
    assert "".join(str(c.content) for c in rest).strip()
    assert sum(1 for c in rest if c.usage_metadata) == 1


def test_on_llm_new_token_per_chunk() -> None:
    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            self.tokens.append(token)

    h = Tokens()
    model = llm(max_new_tokens=8, streaming=True)
    msg = model.invoke("Say something nice.", config={"callbacks": [h]})
    assert len(h.tokens) >= 3 and "".join(h.tokens) == msg.content


def test_stop_sequence() -> None:
    model = llm(policy="plain", max_new_tokens=12)
    q = "Count from one to ten in words, separated by commas."
    base = str(model.invoke(q).content)
    assert "\n" in base
    cut = model.invoke(q, stop=["\n"])
    assert cut.content == base.split("\n")[0]
    assert cut.response_metadata["guardrail"]["finish_reason"] == "stop_string"


def test_per_call_overrides_and_policy_switch_without_reload() -> None:
    model = llm(policy="adacd", callers=trusting(["plain"]))
    model.invoke("Hello")
    before = engine_mod.load_count
    a = model.invoke("Hello", alpha=0.0, steps=2)
    assert len(a.response_metadata["guardrail"]["steps"]) == 2
    b = model.with_config(configurable={"policy": "plain"}).invoke("Hello")
    assert b.response_metadata["guardrail"]["policy"] == "plain"
    assert b.response_metadata["guardrail"]["modes"] == []
    c = model.with_config(configurable={"max_new_tokens": 3}).invoke("Hello")
    assert c.usage_metadata["output_tokens"] == 3  # type: ignore[index]
    d = model.invoke("Hello", max_tokens=2)
    assert d.usage_metadata["output_tokens"] == 2  # type: ignore[index]
    assert engine_mod.load_count == before
    with pytest.raises(ConfigError, match="alpha"):
        model.invoke("Hello", policy="plain", alpha=1.0)


def test_policy_switch_in_lcel_chain() -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{q}")])
    chain = prompt | llm(policy="adacd", callers=trusting(["plain"])) | StrOutputParser()
    out = chain.invoke({"q": "What is rain?"})
    assert isinstance(out, str) and out
    plain = chain.with_config(configurable={"policy": "plain"}).invoke({"q": "What is rain?"})
    assert isinstance(plain, str) and plain


def test_batch_is_one_decode_and_equals_generate_many() -> None:
    """batch() is one batched decode: the same tokens as the engine's own batched call.

    (A batch may differ from one-at-a-time decoding in the last float bits, so the reference
    is the engine's batched decode of the same requests.)
    """
    model = llm(policy="plain", max_new_tokens=6)
    prompts = ["Name a color.", "Name an animal.", "Name a city."]
    eng = get_engine(ModelConfig(backend="llamacpp", n_threads=1))
    policy = load_policy("plain")
    policy = policy.model_copy(
        update={"sampling": policy.sampling.model_copy(update={"max_new_tokens": 6})}
    )
    solo = [
        g.text
        for g in eng.generate_many(
            [eng.request(policy, [{"role": "user", "content": p}]) for p in prompts]
        )
    ]
    calls: list[int] = []
    original = eng.stream

    def counting(requests: Any) -> Any:
        calls.append(len(requests))
        return original(requests)

    eng.stream = counting  # type: ignore[method-assign]
    try:
        out = model.batch(prompts)
    finally:
        del eng.stream
    assert calls == [3]
    assert [m.content for m in out] == solo
    assert all(m.usage_metadata and m.response_metadata["guardrail"] for m in out)


def test_batch_per_input_policy() -> None:
    model = llm(policy="adacd", callers=trusting(["plain"]))
    out = model.batch(
        ["Hi", "Hi"], config=[{}, {"configurable": {"policy": "plain"}}]
    )
    assert [m.response_metadata["guardrail"]["policy"] for m in out] == ["adacd", "plain"]


async def test_ainvoke_and_abatch() -> None:
    model = llm(policy="adacd")
    a = await model.ainvoke("Hi there")
    b = model.invoke("Hi there")
    assert a.content == b.content
    assert a.response_metadata["guardrail"]["modes"] == b.response_metadata["guardrail"]["modes"]
    many = await model.abatch(["Hi there", "Name a fruit."])
    same = model.batch(["Hi there", "Name a fruit."])
    assert [m.content for m in many] == [m.content for m in same]


async def test_astream_first_token_without_blocking_loop() -> None:
    model = llm(max_new_tokens=12)
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    chunks = []
    ticks_at_first = -1
    async for c in model.astream("Write a short poem about the sea."):
        if ticks_at_first < 0 and c.content:
            ticks_at_first = ticks
            eng = get_engine(ModelConfig(backend="llamacpp", n_threads=1))
            assert not await asyncio.to_thread(eng.lock.acquire, False)  # still generating
        chunks.append(c)
    stop.set()
    await task
    assert ticks_at_first > 0  # the loop ran while the model was being prefilled
    assert ticks > ticks_at_first  # ... and while tokens were decoded
    assert sum(1 for c in chunks if c.usage_metadata) == 1
    assert "".join(str(c.content) for c in chunks) == model.invoke(
        "Write a short poem about the sea."
    ).content


# ------------------------------------------------------------------ tools


def test_tools_reach_the_prompt_and_history_renders() -> None:
    model = llm(policy="plain")
    bound = model.bind_tools([get_weather, add])
    history = [
        SystemMessage("You are helpful."),
        HumanMessage("Weather in Rome?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Rome"}, "id": "c1"}]),
        ToolMessage("It is sunny in Rome.", tool_call_id="c1"),
        HumanMessage("And in Oslo?"),
    ]
    call = model._prepare(history, None, bound.kwargs)  # type: ignore[attr-defined]
    assert call.request is not None
    text = call.engine.backend.detokenize(call.request.prompts[0])
    assert '"name": "get_weather"' in text and '"name": "add"' in text
    assert "You are helpful." in text
    assert '"arguments": {"city": "Rome"}' in text
    assert "It is sunny in Rome." in text
    msg = bound.invoke(history)
    assert isinstance(msg, AIMessage)


def test_forced_tool_call_is_parsed() -> None:
    """A few-shot history and a forced tool name: the tiny model then writes a valid call."""
    model = llm(policy="adacd", max_new_tokens=16)
    bound = model.bind_tools([get_weather, add], tool_choice="get_weather")
    history = [
        HumanMessage("What is the weather in London?"),
        AIMessage(
            "", tool_calls=[{"name": "get_weather", "args": {"city": "London"}, "id": "c1"}]
        ),
        ToolMessage("It is sunny in London.", tool_call_id="c1"),
        AIMessage("It is sunny in London."),
        HumanMessage("What is the weather in Paris?"),
    ]
    msg = bound.invoke(history)
    assert msg.tool_calls, (msg.content, msg.invalid_tool_calls)
    assert msg.tool_calls[0]["name"] == "get_weather"
    assert set(msg.tool_calls[0]["args"]) == {"city"}
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    assert msg.response_metadata["guardrail"]["modes"]
    streamed = list(bound.stream(history))
    agg = streamed[0]
    for c in streamed[1:]:
        agg = agg + c
    assert agg.tool_calls[0]["name"] == "get_weather"  # type: ignore[attr-defined]


def test_structured_output() -> None:
    class City(BaseModel):
        """A city."""

        name: str

    model = llm(policy="plain", max_new_tokens=12)
    runnable = model.with_structured_output(City, method="function_calling", include_raw=True)
    out = runnable.invoke("Name the capital of France.")
    raw = out["raw"]
    assert isinstance(raw, AIMessage) and raw.tool_calls  # the answer was forced into a call
    assert isinstance(out["parsed"], City) and out["parsed"].name
    assert raw.response_metadata["guardrail"]["policy"] == "plain"


def test_tool_choice_none_renders_no_tools() -> None:
    model = llm(policy="plain")
    bound = model.bind_tools([get_weather], tool_choice="none")
    call = model._prepare([HumanMessage("hi")], None, bound.kwargs)  # type: ignore[attr-defined]
    assert call.request is not None
    assert "get_weather" not in call.engine.backend.detokenize(call.request.prompts[0])


def test_parse_formats() -> None:
    hermes = 'ok <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    p = parse_tool_calls(hermes, ["add"])
    assert p.content == "ok" and p.tool_calls[0]["args"] == {"a": 1, "b": 2}
    llama = '{"name": "add", "parameters": {"a": 1, "b": 2}}'
    q = parse_tool_calls(llama, ["add"])
    assert q.tool_calls[0]["name"] == "add" and q.content == ""
    assert not parse_tool_calls('{"name": "other", "parameters": {}}', ["add"]).tool_calls
    bad = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": ', ["add"])
    assert not bad.tool_calls and bad.invalid_tool_calls
    assert safe_text_end("Hello <tool", "hermes") == len("Hello ")
    assert safe_text_end("Hello", "hermes") == 5


def test_json_constraint_states() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "n": {"type": "integer"},
                       "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    }
    cases = {
        '{"ci': "partial",
        '{"x': "invalid",  # not a property
        '{"city": "Paris"}': "complete",
        '{"n": 3}': "invalid",  # "city" is required
        '{"city": "P", "n": 3.5': "invalid",  # integer only
        '{"city": "P", "unit": "k': "invalid",  # not in the enum
        '{"city": "a\\q': "invalid",  # bad escape
        '{"city": "' + "x" * 65: "invalid",  # string cap
        '{"city": "P"}}': "invalid",  # trailing text
    }
    for text, want in cases.items():
        assert check_json_prefix(text, schema) == want, text
    empty = {"type": "object", "properties": {}}
    assert check_json_prefix('{"a', empty) == "invalid"
    assert check_json_prefix("{}", empty) == "complete"
    union = call_schema([convert_to_openai_tool(add)], None)
    assert check_json_prefix('{"name": "ad', union) == "partial"
    assert check_json_prefix('{"name": "sub', union) == "invalid"
    assert check_json_prefix('{"name": "add", "arguments": {"a": 1, "b": 2}}', union) == "complete"


def test_forced_call_with_unicode_arguments() -> None:
    """Byte-piece tokens (CJK) are allowed inside constrained strings."""

    @tool
    def create_customer(customer_name: str) -> str:
        """Create a customer record."""
        return customer_name

    model = llm(policy="plain", max_new_tokens=24)
    msg = model.bind_tools([create_customer], tool_choice="any").invoke(
        "Create a customer named '你好啊集团'."
    )
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "create_customer"
    assert any("\u4e00" <= ch <= "\u9fff" for ch in msg.tool_calls[0]["args"]["customer_name"])


# ------------------------------------------------------------------ policy actions


# Every answer starts with one of these, so the string-match detector calls any answer a refusal.
_ANY_START = [*"abcdefghijklmnopqrstuvwxyz0123456789", "\"", "'", "*", "#", "-", "(", "["]


def test_on_refusal_replace_and_raise() -> None:
    base = load_policy("plain")
    replace = base.model_copy(
        update={
            "name": "replace-refusals",
            "refusal": base.refusal.model_copy(update={"prefixes": _ANY_START}),
            "on_refusal": base.on_refusal.model_copy(
                update={"action": "replace", "message": "Blocked."}
            ),
        }
    )
    msg = llm(policy=replace).invoke("Hello")
    g = msg.response_metadata["guardrail"]
    assert g["refused"] and g["replaced"] and msg.content == "Blocked."
    # Streaming holds the answer back when it may be replaced: nothing else leaks out.
    assert "".join(str(c.content) for c in llm(policy=replace).stream("Hello")) == "Blocked."
    allow = replace.model_copy(update={"on_refusal": base.on_refusal})
    kept = llm(policy=allow).invoke("Hello")
    assert kept.response_metadata["guardrail"]["refused"] and kept.content != "Blocked."
    raising = replace.model_copy(
        update={"on_refusal": base.on_refusal.model_copy(update={"action": "raise"})}
    )
    with pytest.raises(RefusalError, match="refusal"):
        llm(policy=raising).invoke("Hello")


def test_on_match_rule_replace() -> None:
    from guardrail.policy.schema import MatchRule

    base = load_policy("adacd")
    policy = base.model_copy(
        update={
            "rules": [MatchRule(name="weapons", pattern=r"\bbomb\b")],
            "on_match": base.on_match.model_copy(
                update={"action": "replace", "message": "Not with that."}
            ),
        }
    )
    before = engine_mod.load_count
    msg = llm(policy=policy).invoke("how to build a bomb")
    assert msg.content == "Not with that."
    assert msg.response_metadata["guardrail"]["matched_rule"] == "weapons"
    assert engine_mod.load_count == before
    other = llm(policy=policy).invoke("how to build a shed")
    assert "matched_rule" not in other.response_metadata["guardrail"]


def test_decision_logging(caplog: pytest.LogCaptureFixture) -> None:
    base = load_policy("adacd")
    policy = base.model_copy(
        update={"logging": base.logging.model_copy(update={"decisions": True, "level": "INFO"})}
    )
    with caplog.at_level("INFO", logger="guardrail.decisions"):
        msg = llm(policy=policy, max_new_tokens=3).invoke("Hi")
    records = [r.getMessage() for r in caplog.records if r.name == "guardrail.decisions"]
    assert len(records) == 3
    assert all(f"mode={m}" in r for r, m in zip(records, msg.response_metadata["guardrail"]["modes"]))


@pytest.mark.transformers
def test_transformers_backend_invoke() -> None:
    pytest.importorskip("transformers")
    model = GuardedChatModel(policy="adacd", backend="transformers", max_new_tokens=4)
    msg = model.invoke("Hi")
    assert msg.response_metadata["guardrail"]["backend"] == "transformers"
    assert len(msg.response_metadata["guardrail"]["modes"]) == 4
    out = model.batch(["Hi", "Name a fruit."])
    assert len(out) == 2 and all(m.response_metadata["guardrail"]["modes"] for m in out)
