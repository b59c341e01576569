"""``strategy: experts``: a MidPO-style mix of a safety and a helpfulness expert (docs/experts.md).

Faithful mode: two LoRA experts on transformers, mixed inside every layer by a per-layer router
(guardrail/experts/faithful.py); the request is one stream. Portable mode: each expert is a token
stream (the model under a prompt, the model on a LoRA context of its own, or another model that
shares the tokenizer), mixed per token by :class:`~guardrail.decoding.experts.ExpertsRule`; the
streams that run elsewhere than the guarded model are placed by a routed backend.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from guardrail.adapters.base import Backend, HasLayerHooks, HasLoraContexts, require
from guardrail.adapters.routed import RoutedBackend
from guardrail.decoding.experts import AgreementWeights, ExpertsRule, FixedWeights
from guardrail.errors import ConfigError
from guardrail.probes.prompt import load_probe, probe_weights
from guardrail.experts.tokenizers import check_same_tokenizer
from guardrail.policy.strategies import (
    Expert,
    ExpertsStrategy,
    FileRouter,
    FixedRouter,
    LoraAdapterExpert,
    ModelExpert,
)
from guardrail.strategies.adacd import adacd_rule
from guardrail.strategies.prompts import add_safety_prompt
from guardrail.strategies.registry import Plan, Tools, register

if TYPE_CHECKING:
    from guardrail.engine import Engine


def is_faithful(s: ExpertsStrategy, backend: Backend) -> bool:
    """LoRA experts on transformers are mixed inside every layer (faithful mode); every other
    combination is portable mode (experts as token streams)."""
    kinds = {s.safety.kind, s.helpfulness.kind}
    if "lora" not in kinds or not isinstance(backend, HasLayerHooks):
        return False
    if kinds != {"lora"}:
        raise ConfigError(
            "strategy.safety / strategy.helpfulness: on transformers LoRA experts are mixed "
            "inside the model (faithful mode), so both must be kind: lora, got "
            f"{s.safety.kind!r} and {s.helpfulness.kind!r} (on llama.cpp each LoRA expert runs "
            "on a context of its own and mixes with prompt or model experts)"
        )
    return True


def _faithful_rule(s: ExpertsStrategy, engine: Engine) -> Any:
    """The backend's model with both LoRA experts and the router hooked into every
    down-projection (loaded once per engine and files)."""
    from guardrail.experts.faithful import FaithfulRule, load_mix  # torch: faithful mode only

    if s.adacd is not None:
        raise NotImplementedError("strategy.adacd on top of LoRA experts is not implemented")
    r = s.router
    if isinstance(r, FixedRouter):
        router: Any = (r.alpha, r.beta)
    elif isinstance(r, FileRouter):
        router = r.path
    else:
        raise ConfigError(
            "strategy.router: the agreement router mixes token streams (prompt experts); LoRA "
            "experts take a fixed router or a per-layer router file"
        )
    assert isinstance(s.safety, LoraAdapterExpert) and isinstance(s.helpfulness, LoraAdapterExpert)
    model = require(engine.backend, HasLayerHooks, "faithful expert mixing").model
    key = ("expert_mix", s.safety.path, s.helpfulness.path, router, s.scale)
    mix = engine.cached(key, lambda: load_mix(model, s.safety.path, s.helpfulness.path, router,
                                              scale=s.scale))
    return FaithfulRule(mix)


def _member(e: Expert, engine: Engine, scale: float | None) -> Engine:
    """Where one expert stream runs: the guarded model itself for a prompt expert, a LoRA
    context of it (llama.cpp; it shares this engine's lock), or another model checked to share
    its tokenizer."""
    if isinstance(e, LoraAdapterExpert):
        backend = engine.backend
        if not isinstance(backend, HasLoraContexts):
            raise ConfigError(f"strategy: backend {backend.name!r} cannot run a LoRA expert "
                              "stream (no LoRA contexts)")
        with engine.lock:  # the adapter's context belongs to this engine
            return engine.sibling(backend.with_lora(e.path, scale))
    if isinstance(e, ModelExpert):
        other = engine.load(e.model)
        if other.backend is not engine.backend:
            engine.cached(("same_tokenizer", id(other.backend)),
                          lambda: check_same_tokenizer(engine.backend, other.backend) or True)
        return other
    return engine


def _router(s: ExpertsStrategy, engine: Engine, messages: list[dict[str, Any]]) -> Any:
    """The per-token router; a probe file is read on this conversation now (fixed weights)."""
    r = s.router
    if isinstance(r, FixedRouter):
        return FixedWeights(r.alpha, r.beta)
    if isinstance(r, FileRouter):
        probe = load_probe(r.path)
        # the probe runs the model: where the model runs
        return engine.run(lambda: probe_weights(probe, engine.backend, messages))
    return AgreementWeights()


@register("experts")
def plan(s: ExpertsStrategy, engine: Engine, messages: list[dict[str, Any]], tools: Tools) -> Plan:
    """Faithful: one stream, the mix inside the model. Portable: the safety expert's stream, the
    helpfulness expert's, then AdaCD's safety stream (if any), each on its member model."""
    if is_faithful(s, engine.backend):
        return Plan([engine.backend.encode_chat(messages, tools=tools)], _faithful_rule(s, engine))
    t0 = time.perf_counter()
    router = _router(s, engine, messages)
    timings = {"probe_s": time.perf_counter() - t0} if isinstance(s.router, FileRouter) else {}
    rule = ExpertsRule(router=router, adacd=adacd_rule(s.adacd) if s.adacd else None)
    # a probe router's weights are (P(harmful), 1 - P(harmful)): the reading, for traces
    probe = {"harm": router.alpha} if isinstance(s.router, FileRouter) else {}
    runs = [(_member(e, engine, s.scale), getattr(e, "system_prompt", None))
            for e in (s.safety, s.helpfulness)]
    if s.adacd is not None and s.adacd.steps > 0:
        runs.append((engine, s.adacd.safety_prompt))
    prompts = [
        m.backend.encode_chat(add_safety_prompt(messages, prompt, system_role=m.system_role),
                              tools=tools)
        for m, prompt in runs
    ]
    members = list({id(m.backend): m for m in [engine, *(m for m, _ in runs)]}.values())
    if len(members) == 1:
        return Plan(prompts, rule, probe=probe, timings=timings)
    index = {id(m.backend): i for i, m in enumerate(members)}
    routed = RoutedBackend(
        [m.backend for m in members], [index[id(m.backend)] for m, _ in runs],
        locks=list({id(m.lock): m.lock for m in members}.values()),
    )
    return Plan(prompts, rule, routed, probe=probe, timings=timings)
