"""The one place that turns a policy into a loaded backend, a rule and a sampler.

Backends are cached by (backend, path, load options), so switching policy per request never
reloads weights. Each backend comes with a lock: a backend is not re-entrant, so generations on
one backend are serialised (llama.cpp contexts and KV caches cannot be shared mid-decode).
"""

from __future__ import annotations

import threading
from contextlib import ExitStack, nullcontext
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from guardrail.adapters.base import Backend, Message
from guardrail.decoding.adacd import AdaCDRule
from guardrail.decoding.loop import FinishEvent, GenerationRequest, TokenEvent, decode
from guardrail.decoding.rules import PlainRule, Rule, StepInfo
from guardrail.decoding.sampling import SamplingParams
from guardrail.errors import ConfigError
from guardrail.models import resolve_model_path
from guardrail.policy.schema import AdaCDStrategy, ModelConfig, PlainStrategy, Policy
from guardrail.policy.strategies import ExpertsStrategy, GatedCDStrategy

BACKENDS = ("llamacpp", "transformers")

_cache: dict[tuple[Any, ...], Engine] = {}
_cache_lock = threading.Lock()
load_count = 0  # models loaded in this process (tests count reloads with it)


def _cache_key(cfg: ModelConfig) -> tuple[Any, ...]:
    path = str(resolve_model_path(cfg.path))
    if cfg.backend == "llamacpp":
        return (cfg.backend, path, cfg.n_ctx, cfg.n_threads, cfg.n_gpu_layers)
    return (cfg.backend, path, cfg.device, cfg.dtype, cfg.trust_remote_code)


def _load_backend(cfg: ModelConfig) -> Backend:
    global load_count
    path = resolve_model_path(cfg.path)
    if cfg.backend == "llamacpp":
        from guardrail.adapters.llamacpp import LlamaCppBackend

        backend: Backend = LlamaCppBackend(
            path, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads, n_gpu_layers=cfg.n_gpu_layers
        )
    elif cfg.backend == "transformers":
        from guardrail.adapters.transformers import TransformersBackend

        backend = TransformersBackend(
            path, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
        )
    else:  # pragma: no cover - the schema rejects it first
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    load_count += 1
    return backend


def get_engine(cfg: ModelConfig) -> Engine:
    """The engine for ``cfg``, loading the model on first use only."""
    key = _cache_key(cfg)
    with _cache_lock:
        engine = _cache.get(key)
        if engine is None:
            engine = _cache[key] = Engine(_load_backend(cfg))
        return engine


def engine_for(backend: Backend) -> Engine:
    """Wrap an already-loaded backend (it is cached by identity)."""
    key = ("object", id(backend))
    with _cache_lock:
        engine = _cache.get(key)
        if engine is None or engine.backend is not backend:
            engine = _cache[key] = Engine(backend)
        return engine


def clear_cache() -> None:
    """Forget every cached model (they are freed once no caller holds them)."""
    with _cache_lock:
        _cache.clear()


def make_rule(policy: Policy, backend: Backend | None = None) -> Rule:
    """The decoding rule a policy's strategy names (``gated_cd`` needs the backend's tokenizer
    to find its refusal-start tokens)."""
    s = policy.strategy
    if isinstance(s, GatedCDStrategy):
        from guardrail.decoding.gated_cd import GatedCDRule, refusal_start_ids

        if backend is None:
            raise ConfigError("strategy gated_cd needs a loaded backend (its refusal tokens)")
        ids = refusal_start_ids(s.refusal_phrases, backend.tokenize) if s.steps else frozenset()
        gate = {"threshold": s.probe.threshold, "ban_below": s.probe.ban_below,
                "refuse_above": s.probe.refuse_above} if s.probe else {}
        return GatedCDRule(ids, alpha=s.alpha, lam=s.lam, beta=s.beta, steps=s.steps, **gate)
    if isinstance(s, PlainStrategy):
        return PlainRule()
    if isinstance(s, AdaCDStrategy):
        return AdaCDRule(alpha=s.alpha, lam=s.lam, beta=s.beta, steps=s.steps)
    if isinstance(s, ExpertsStrategy):
        from guardrail.experts.policy import experts_rule

        return experts_rule(s, backend)
    raise ConfigError(f"strategy {s.kind!r} is not implemented")  # pragma: no cover


def with_system_prompt(messages: Sequence[Message], prompt: str | None) -> list[dict[str, Any]]:
    """``messages`` under a deployment system prompt (merged into a leading system message)."""
    out = [dict(m) for m in messages]
    if not prompt:
        return out
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{prompt}\n\n{out[0].get('content') or ''}".rstrip()
        return out
    return [{"role": "system", "content": prompt}, *out]


def add_safety_prompt(
    messages: Sequence[Message], safety_prompt: str, *, system_role: bool = True
) -> list[dict[str, Any]]:
    """The extreme-safety stream's messages (docs/methods.md §1.3, streams O and S).

    With a system role the safety prompt is the system message (appended to an existing one);
    without one it is prefixed to the first user turn, as the reference does for Gemma-2.
    """
    out = [dict(m) for m in messages]
    if system_role:
        if out and out[0].get("role") == "system":
            out[0]["content"] = f"{out[0].get('content') or ''}\n\n{safety_prompt}".lstrip()
            return out
        return [{"role": "system", "content": safety_prompt}, *out]
    for m in out:
        if m.get("role") == "user":
            m["content"] = f"{safety_prompt}\n\n{m.get('content') or ''}"
            return out
    raise ConfigError("messages: the safety prompt needs at least one user message")


_MARK = "\x00guardrail-system-marker\x00"


def default_system_prompt(backend: Backend) -> str | None:
    """The system text a chat template inserts when the conversation has none, or ``None``.

    Found by rendering once with a marker system message and once without, and taking what the
    no-system rendering has where the marker stands."""
    user = [{"role": "user", "content": "hi"}]
    marked = backend.render([{"role": "system", "content": _MARK}, *user])
    bare = backend.render(user)
    head, _, tail = marked.partition(_MARK)
    if not head or not bare.startswith(head) or not bare.endswith(tail):
        return None
    text = bare[len(head) : len(bare) - len(tail)]
    return text or None


def contrast_messages(
    messages: Sequence[Message], safety_prompt: str, default_system: str | None, *,
    system_role: bool = True,
) -> list[dict[str, Any]]:
    """The safety stream that differs from ``messages`` by the safety instruction alone: with no
    system message the template's default one is written out and the instruction added to it."""
    has_system = bool(messages) and messages[0].get("role") == "system"
    if system_role and not has_system and default_system:
        messages = [{"role": "system", "content": default_system}, *messages]
    return add_safety_prompt(messages, safety_prompt, system_role=system_role)


@dataclass
class Generation:
    """A finished answer and everything known about how it was made."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str
    steps: list[StepInfo] = field(default_factory=list)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def modes(self) -> list[str]:
        return [s["mode"] for s in self.steps if "mode" in s]


class Engine:
    """A loaded backend, its lock, and request building from policies."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.lock = threading.RLock()
        self._system_role: bool | None = None
        self._default_system: tuple[str | None] | None = None

    @property
    def default_system(self) -> str | None:
        """The chat template's default system prompt (see :func:`default_system_prompt`)."""
        if self._default_system is None:
            try:
                self._default_system = (default_system_prompt(self.backend),)
            except Exception:  # a template that needs more than a user turn: treat as none
                self._default_system = (None,)
        return self._default_system[0]

    @property
    def system_role(self) -> bool:
        if self._system_role is None:
            self._system_role = self.backend.supports_system_role()
        return self._system_role

    def stream_prompts(
        self,
        policy: Policy,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[list[int]]:
        """Token ids of each stream the policy's strategy needs, answer stream first."""
        return self._streams(policy, messages, tools=tools)[0]

    def _streams(
        self,
        policy: Policy,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        n_streams: int | None = None,
    ) -> tuple[list[list[int]], Backend | None]:
        """Each stream's prompt, and the backend that runs them when it is not this one (experts
        on other models or LoRA contexts); only the first ``n_streams`` are rendered when the
        bound rule needs fewer (gated_cd decodes a harmful-called prompt in one stream)."""
        plain = with_system_prompt(messages, policy.system_prompt)
        s = policy.strategy
        if isinstance(s, ExpertsStrategy):
            from guardrail.experts.policy import expert_streams

            return expert_streams(s, self, plain, tools=tools)
        convs = [plain]
        if isinstance(s, AdaCDStrategy) and s.steps > 0:
            convs.append(add_safety_prompt(plain, s.safety_prompt, system_role=self.system_role))
        if isinstance(s, GatedCDStrategy) and s.steps > 0:
            convs.append(contrast_messages(
                plain, s.safety_prompt, self.default_system, system_role=self.system_role
            ))
        return [self.backend.encode_chat(c, tools=tools) for c in convs[:n_streams]], None

    def _bound_rule(self, policy: Policy, messages: Sequence[Message]) -> Rule:
        """``make_rule``, plus what a prompt probe reads from this conversation: an experts
        router's weights, or gated_cd's P(harmful)."""
        rule = make_rule(policy, self.backend)
        s = policy.strategy
        plain = with_system_prompt(messages, policy.system_prompt)
        if isinstance(s, ExpertsStrategy):
            from guardrail.experts.policy import bind_prompt_router

            with self.lock:  # the probe runs the model (llama.cpp: the streams' own context)
                rule = bind_prompt_router(rule, self.backend, plain)
        elif isinstance(s, GatedCDStrategy) and s.probe is not None and s.steps > 0:
            from guardrail.experts.probe import prompt_harm

            with self.lock:
                harm = prompt_harm(s.probe.path, self.backend, plain)
            rule = replace(rule, harm=harm)  # type: ignore[type-var]
        return rule

    def request(
        self,
        policy: Policy,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        stop: Sequence[str] = (),
    ) -> GenerationRequest:
        """A ready request: streams, rule, sampling and stops from the policy."""
        sp = policy.sampling
        rule = self._bound_rule(policy, messages)
        prompts, backend = self._streams(policy, messages, tools=tools, n_streams=rule.n_streams)
        return GenerationRequest(
            prompts=prompts[: rule.n_streams],
            rule=rule,
            backend=backend,
            sampling=SamplingParams(sp.temperature, sp.top_k, sp.top_p, sp.seed),
            max_new_tokens=sp.max_new_tokens,
            stop=[*sp.stop, *stop],
        )

    def stream(
        self, requests: Sequence[GenerationRequest]
    ) -> Iterator[TokenEvent | FinishEvent]:
        """Decode ``requests`` together, holding the backend for the whole run. A request whose
        rule changes the model while it runs (faithful experts: ``rule.attached()``) is decoded
        alone inside that context, after the others; a request on its own backend (experts on
        other models) is decoded alone too, holding those models' locks as well."""
        alone = [i for i, r in enumerate(requests) if hasattr(r.rule, "attached")]
        together = [i for i in range(len(requests)) if i not in alone]
        locks = {id(self.lock): self.lock}
        for r in requests:
            locks.update((id(k), k) for k in getattr(r.backend, "locks", ()))
        with ExitStack() as held:
            for _, lock in sorted(locks.items()):  # one global order: no lock-order deadlock
                held.enter_context(lock)
            groups = [(together, nullcontext())] if together else []
            groups += [([i], requests[i].rule.attached()) for i in alone]  # type: ignore[attr-defined]
            for idx, ctx in groups:
                with ctx:
                    for ev in decode(self.backend, [requests[i] for i in idx]):
                        ev.request = idx[ev.request]
                        yield ev

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Decode ``requests`` together and collect each answer."""
        out: list[Generation | None] = [None] * len(requests)
        for ev in self.stream(requests):
            if isinstance(ev, FinishEvent):
                out[ev.request] = Generation(
                    ev.text, ev.token_ids, ev.prompt_tokens, ev.reason, ev.steps
                )
        return [g for g in out if g is not None]

    def generate(
        self, policy: Policy, messages: Sequence[Message], **kw: Any
    ) -> Generation:
        """One answer under ``policy``."""
        return self.generate_many([self.request(policy, messages, **kw)])[0]
