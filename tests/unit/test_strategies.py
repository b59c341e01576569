"""Strategies as plans (guardrail/strategies) on the fake backend: the registry, each planner's
streams and rule, and the deployment prompt merged once for all of them."""

from __future__ import annotations

import pytest

from guardrail.decoding.adacd import AdaCDRule
from guardrail.decoding.experts import AgreementWeights, ExpertsRule, FixedWeights
from guardrail.decoding.gated_cd import GatedCDRule
from guardrail.decoding.rules import PlainRule
from guardrail.engine import Engine
from guardrail.errors import ConfigError
from guardrail.policy import Policy, load_policy, with_overrides
from guardrail.strategies import planner, register, registered
from guardrail.strategies.prompts import add_safety_prompt, merge_system, with_system_prompt

POEM = [{"role": "user", "content": "Write a poem about rain."}]


def test_every_strategy_kind_of_the_schema_has_a_planner() -> None:
    from guardrail.policy.strategies import Strategy
    from typing import get_args

    kinds = {t.model_fields["kind"].default for t in get_args(get_args(Strategy)[0])}
    assert kinds == set(registered())


def test_unknown_kind_names_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match="registered: adacd, experts, gated_cd, plain"):
        planner("nope")


def test_a_kind_cannot_be_registered_twice() -> None:
    with pytest.raises(ConfigError, match="twice"):
        register("plain")(lambda *a: None)  # type: ignore[arg-type, return-value]


def test_plain_plans_one_stream(fake_engine: Engine) -> None:
    p = fake_engine.plan(load_policy("plain"), POEM)
    assert isinstance(p.rule, PlainRule) and p.backend is None
    assert p.prompts == [fake_engine.backend.encode_chat(POEM)]


def test_adacd_plans_the_safety_stream_only_while_contrasting(fake_engine: Engine) -> None:
    pol = load_policy("adacd")
    p = fake_engine.plan(pol, POEM)
    assert isinstance(p.rule, AdaCDRule) and len(p.prompts) == 2
    safety = add_safety_prompt(POEM, pol.strategy.safety_prompt)  # type: ignore[union-attr]
    assert p.prompts[1] == fake_engine.backend.encode_chat(safety)
    none = fake_engine.plan(with_overrides(pol, {"strategy": {"steps": 0}}), POEM)
    assert len(none.prompts) == 1 and none.rule.n_streams == 1


def test_gated_cd_without_probe_builds_refusal_ids_once_per_engine(fake_engine: Engine) -> None:
    pol = Policy.model_validate({"strategy": {"kind": "gated_cd"}})
    a = fake_engine.plan(pol, POEM)
    b = fake_engine.plan(pol, POEM)
    assert isinstance(a.rule, GatedCDRule) and a.rule.harm is None and len(a.prompts) == 2
    assert a.rule.refusal_ids is b.rule.refusal_ids  # cached on the engine
    assert a.probe == {}


def test_portable_experts_plan_three_streams_on_the_one_model(fake_engine: Engine) -> None:
    pol = Policy.model_validate({"strategy": {"kind": "experts", "adacd": {"steps": 2}}})
    p = fake_engine.plan(pol, POEM)
    assert isinstance(p.rule, ExpertsRule) and isinstance(p.rule.router, AgreementWeights)
    assert len(p.prompts) == 3 and p.backend is None  # every stream runs on the guarded model
    fixed = Policy.model_validate(
        {"strategy": {"kind": "experts", "router": {"kind": "fixed", "alpha": 1, "beta": 0}}}
    )
    assert fake_engine.plan(fixed, POEM).rule.router == FixedWeights(1, 0)  # type: ignore[attr-defined]


def test_the_deployment_prompt_reaches_every_stream(fake_engine: Engine) -> None:
    pol = with_overrides(load_policy("adacd"), {"system_prompt": "Please answer me."})
    p = fake_engine.plan(pol, POEM)
    deployed = with_system_prompt(POEM, "Please answer me.")
    assert p.prompts[0] == fake_engine.backend.encode_chat(deployed)
    safety = add_safety_prompt(deployed, pol.strategy.safety_prompt)  # type: ignore[union-attr]
    assert p.prompts[1] == fake_engine.backend.encode_chat(safety)


def test_merge_system_is_the_one_system_merge() -> None:
    sys_first = [{"role": "system", "content": "S"}, *POEM]
    assert with_system_prompt(sys_first, "D")[0]["content"] == "D\n\nS"
    assert add_safety_prompt(sys_first, "X")[0]["content"] == "S\n\nX"
    assert merge_system(POEM, "", before=True) == POEM
    no_role = add_safety_prompt(POEM, "X", system_role=False)
    assert no_role == [{"role": "user", "content": "X\n\nWrite a poem about rain."}]
    with pytest.raises(ConfigError, match="at least one user message"):
        add_safety_prompt([{"role": "assistant", "content": "a"}], "X", system_role=False)
