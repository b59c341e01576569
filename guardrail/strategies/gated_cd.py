"""``strategy: gated_cd``: refusal-gated contrast (guardrail/decoding/gated_cd.py), optionally
switched by a prompt probe's P(harmful), read here once per request before the rule is built."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from guardrail.decoding.forced_check import ForcedPathCheck
from guardrail.decoding.gated_cd import GatedCDRule, refusal_start_ids
from guardrail.policy.strategies import GatedCDStrategy
from guardrail.probes.answer import answer_reader
from guardrail.probes.prompt import conversation_harm, resolve_probe
from guardrail.probes.weights import ProbeWeights
from guardrail.strategies.prompts import contrast_messages
from guardrail.strategies.registry import Plan, Tools, register

if TYPE_CHECKING:
    from guardrail.engine import Engine


@register("gated_cd")
def plan(s: GatedCDStrategy, engine: Engine, messages: list[dict[str, Any]], tools: Tools) -> Plan:
    """The probe's reading (if any), the rule, then only the streams the rule needs: a prompt
    the probe calls harmful is decoded from the answer stream alone."""
    ids = frozenset()
    if s.steps:
        ids = engine.cached(("refusal_ids", tuple(s.refusal_phrases)),
                            lambda: refusal_start_ids(s.refusal_phrases, engine.backend.tokenize))
    harm = None
    weights: ProbeWeights | None = None
    timings: dict[str, float] = {}
    gate: dict[str, Any] = {}
    if s.probe is not None:
        gate = {"threshold": s.probe.threshold, "ban_below": s.probe.ban_below,
                "refuse_above": s.probe.refuse_above}
        if s.steps > 0:
            path = s.probe.path  # the probe runs the model: where the model runs

            def read() -> tuple[ProbeWeights, float]:
                w = resolve_probe(path, engine.backend)
                return w, conversation_harm(w, engine.backend, messages)

            t0 = time.perf_counter()
            weights, harm = engine.run(read)
            timings["probe_s"] = time.perf_counter() - t0
    rule = GatedCDRule(ids, alpha=s.alpha, lam=s.lam, beta=s.beta, steps=s.steps, harm=harm,
                       **gate)
    check = None
    if s.probe is not None and s.probe.check is not None and weights is not None \
            and harm is not None and harm < s.probe.threshold:  # where an answer may change
        check = ForcedPathCheck(s.probe.check.after, s.probe.check.threshold,
                                answer_reader(weights, engine.backend, messages, tools))
    convs = [messages]
    if rule.n_streams > 1:
        convs.append(contrast_messages(messages, s.safety_prompt, engine.default_system,
                                       system_role=engine.system_role))
    prompts = [engine.backend.encode_chat(c, tools=tools) for c in convs]
    return Plan(prompts, rule, probe={} if harm is None else {"harm": harm}, timings=timings,
                check=check)
