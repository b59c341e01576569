"""Cost of constrained JSON: ms per generated token for forced tool calls and ``json_schema``
answers under each JSON engine (llguidance, the built-in automaton), beside plain decoding of
the same prompts, all in one run on one loaded model.

Rows: ``plain`` (no constraint), then for each engine ``tool_call`` (a forced call of a
three-argument tool) and ``json_schema`` (structured output of a four-field schema with an
integer range and an enum). Each row decodes every prompt ``--repeats`` times, greedily.
Columns: ms per token for the whole call (prefill included, as a user sees it), ms per step
spent inside the constraint itself, its ratio to plain decoding's ms per token, and how many
answers parsed and followed the schema. The table is in docs/langchain.md.

    python benchmarks/bench_constraints.py [--model PATH] [--backend llamacpp] [--repeats 3]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from guardrail import GuardedChatModel
from guardrail.decoding.constraints import ToolCallConstraint
from guardrail.decoding.constraints.grammar import GrammarConstraint, available

PROMPTS = [
    "Describe Paris for a travel card.",
    "Describe Tokyo for a travel card.",
    "Describe a small fishing village for a travel card.",
    "Describe Cairo for a travel card.",
    "Describe the city where you would most like to live.",
]


class Card(BaseModel):
    """A travel card for a city."""

    city: str
    country: str
    population_millions: int = Field(ge=0, le=40)
    season: Literal["spring", "summer", "autumn", "winter"]


def book_trip(city: str, nights: int, budget: Literal["low", "mid", "high"]) -> str:
    """Book a trip to a city for some nights within a budget."""
    return "booked"


class _Timed:
    """Accumulates the time spent inside constraint processors (patched ``__call__``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.steps = 0
        self._orig: list[tuple[type, Callable[..., Any]]] = []

    def __enter__(self) -> _Timed:
        for cls in (ToolCallConstraint, GrammarConstraint):
            orig = cls.__call__
            self._orig.append((cls, orig))

            def timed(obj: Any, *a: Any, _orig: Callable[..., Any] = orig) -> Any:
                t0 = time.perf_counter()
                try:
                    return _orig(obj, *a)
                finally:
                    self.seconds += time.perf_counter() - t0
                    self.steps += 1

            cls.__call__ = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, orig in self._orig:
            cls.__call__ = orig  # type: ignore[method-assign]


def run_row(llm: GuardedChatModel, kind: str, repeats: int) -> dict[str, Any]:
    runnable: Any
    if kind == "plain":
        runnable = llm
    elif kind == "tool_call":
        runnable = llm.bind_tools([book_trip], tool_choice="book_trip")
    else:
        runnable = llm.with_structured_output(Card, include_raw=True)
    tokens = ok = n = 0
    wall = 0.0
    with _Timed() as timer:
        for _ in range(repeats):
            for prompt in PROMPTS:
                t0 = time.perf_counter()
                out = runnable.invoke(prompt)
                wall += time.perf_counter() - t0
                msg = out["raw"] if kind == "json_schema" else out
                tokens += msg.usage_metadata["output_tokens"]
                n += 1
                if kind == "json_schema":
                    ok += out["parsed"] is not None
                elif kind == "tool_call":
                    ok += _valid_call(msg.tool_calls)
    return {
        "row": kind, "answers": n, "tokens": tokens,
        "ms_per_token": round(1000 * wall / max(tokens, 1), 2),
        "constraint_ms_per_step": (round(1000 * timer.seconds / timer.steps, 3)
                                   if timer.steps else 0.0),
        "valid": f"{ok}/{n}" if kind != "plain" else "-",
    }


def _valid_call(calls: list[dict[str, Any]]) -> bool:
    if len(calls) != 1:
        return False
    args = calls[0]["args"]
    try:
        return (isinstance(args.get("city"), str) and isinstance(args.get("nights"), int)
                and args.get("budget") in ("low", "mid", "high"))
    except (AttributeError, ValidationError):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--backend", default="llamacpp", choices=["llamacpp", "transformers"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    llm = GuardedChatModel(policy="plain", model=args.model, backend=args.backend,
                           max_new_tokens=args.max_new_tokens, temperature=0)
    llm.invoke("Hello")  # load the model and warm up
    engines = ["builtin", *(["llguidance"] if available() else [])]
    rows = []
    os.environ["GUARDRAIL_GRAMMAR"] = "builtin"
    rows.append({"engine": "-", **run_row(llm, "plain", args.repeats)})
    for engine in engines:
        os.environ["GUARDRAIL_GRAMMAR"] = engine
        llm.bind_tools([book_trip], tool_choice="book_trip").invoke("warm up")  # tokenizer
        for kind in ("tool_call", "json_schema"):
            rows.append({"engine": engine, **run_row(llm, kind, args.repeats)})
    plain = rows[0]["ms_per_token"]
    for r in rows:
        r["vs_plain"] = round(r["ms_per_token"] / plain, 2)
    head = ["engine", "row", "answers", "tokens", "ms_per_token", "vs_plain",
            "constraint_ms_per_step", "valid"]
    print(" | ".join(head))
    for r in rows:
        print(" | ".join(str(r[h]) for h in head))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": args.backend, "model": llm.engine().backend.model_name,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
