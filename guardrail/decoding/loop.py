"""The one decoding loop: every rule, every backend, one or many requests at once.

Each step: one batched forward over every live stream of every live request, the request's rule
turns its streams' logits into final logits, the request's logits processors constrain them
(:mod:`guardrail.decoding.processors`), the sampler picks a token, the token goes to every
stream of that request. Streams a rule no longer needs and streams of finished requests are freed.
Events are yielded as they happen, so streaming needs nothing more; only a request under a
forced-path check (:mod:`guardrail.decoding.forced_check`) has its events from a changed token
on held until the check has read them.

Events: a :class:`TokenEvent` per generated token, then one :class:`FinishEvent` per request.
A request that cannot run at all (its prompts, or its streams' shared context, do not fit:
:class:`~guardrail.errors.ContextOverflowError`) is checked before anything is decoded. By
default (``errors="raise"``) that error is raised before any stream is opened, failing the
whole call; with ``errors="event"`` that request gets one :class:`ErrorEvent` instead (yielded
first, before any token, and nothing else for it) and every other request is decoded as usual,
so one bad request fails alone. Raising stays the default so that a consumer that only looks
for finish events cannot drop a failed request silently.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from guardrail.adapters.base import Backend, Streams
from numpy.typing import NDArray

from guardrail.decoding.forced_check import ForcedPathCheck
from guardrail.decoding.processors import LogitsProcessor, MinNewTokens
from guardrail.decoding.rules import DeferringRule, PlainRule, Rule, StepInfo
from guardrail.decoding.sampling import SamplingParams, sample
from guardrail.decoding.text import TextAssembler
from guardrail.errors import ConfigError, ContextOverflowError

log = logging.getLogger("guardrail")

FinishReason = Literal["stop", "length", "stop_string"]
OnError = Literal["raise", "event"]


@dataclass
class GenerationRequest:
    """One answer to generate.

    Args:
        prompts: token ids of each stream's prompt; stream 0 is the answer stream.
        rule: combines the streams' logits (``rule.n_streams == len(prompts)``).
        sampling: greedy or seeded sampling.
        max_new_tokens: hard cap on generated tokens.
        stop: strings that end the answer (not included in it).
        min_new_tokens: end-of-turn tokens are masked until this many tokens exist (the loop
            adds a :class:`~guardrail.decoding.processors.MinNewTokens` after ``processors``).
        backend: decode this request on this backend instead of the caller's (experts that are
            other models or LoRA contexts, :mod:`guardrail.adapters.routed`); such a request is
            decoded alone.
        processors: constraints applied in order to the rule's final logits before sampling,
            each given the generated ids (see :mod:`guardrail.decoding.processors`). They are
            per-request objects that may keep state: build them for this request only.
        probe: what a prompt probe read when the request was planned (``harm`` =
            P(harmful)); not used to decode, carried so traces and evaluation rows show why an
            answer went the way it did.
        timings: seconds spent on the request before decoding (``plan_s``: rendering,
            tokenising and any probe; ``probe_s``: the prompt probe alone), reported with the
            scheduler's own timings.
        check: the forced-path check (:mod:`guardrail.decoding.forced_check`): tokens from a
            "comply" step on are held until it has read them, and dropped for the check's
            fallback rule when it finds them harmful. A request with ``processors`` (their
            state cannot be rewound), or on a backend whose streams cannot be added while
            running, is decoded under the fallback rule from the start (fails closed).
    """

    prompts: Sequence[Sequence[int]]
    rule: Rule
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_new_tokens: int = 256
    stop: Sequence[str] = ()
    min_new_tokens: int = 0
    backend: Backend | None = None
    processors: Sequence[LogitsProcessor] = ()
    probe: Mapping[str, float] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    check: ForcedPathCheck | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if len(self.prompts) != self.rule.n_streams:
            raise ConfigError(
                f"rule {self.rule.name!r} needs {self.rule.n_streams} stream(s), "
                f"got {len(self.prompts)} prompt(s)"
            )
        if any(len(p) == 0 for p in self.prompts):
            raise ConfigError("every stream prompt must hold at least one token")


@dataclass
class TokenEvent:
    """A token was generated for request ``request`` at ``step``; ``text`` is the released text."""

    request: int
    step: int
    token: int
    text: str
    info: StepInfo | None


@dataclass
class FinishEvent:
    """Request ``request`` is done."""

    request: int
    reason: FinishReason
    text: str
    token_ids: list[int]  # generated ids, the end-of-turn token included when it ended the answer
    prompt_tokens: int
    steps: list[StepInfo] = field(default_factory=list)
    tail: str = ""  # text released at the end (held back until then)
    timings: dict[str, float] = field(default_factory=dict)  # seconds, set by the scheduler


@dataclass
class ErrorEvent:
    """Request ``request`` could not run and was not decoded; ``error`` says why (a
    :class:`~guardrail.errors.ContextOverflowError` naming the request). Only yielded by
    ``decode(..., errors="event")``; the request gets no other event."""

    request: int
    error: ContextOverflowError


@dataclass
class _Live:
    index: int
    req: GenerationRequest
    rng: np.random.Generator
    text: TextAssembler
    n_streams: int
    processors: list[LogitsProcessor]
    cap: int  # usable max_new_tokens (the context may allow fewer than asked)
    limit: int = 0  # streams it may still open (deferred ones included)
    steps: list[StepInfo] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)  # every sampled id, end-of-turn included
    done: FinishReason | None = None
    rule: Rule = field(default_factory=PlainRule)  # the request's rule, or the check's fallback
    check: ForcedPathCheck | None = None  # still to run (None: none, or it has decided)
    fork: int | None = None  # step of the first "comply" decision while a check is pending
    held: list[TokenEvent] = field(default_factory=list)  # events since the fork, not yet sent
    rewind: bool = False  # fell back this step: its streams restart from the fork


def _kv_widths(req: GenerationRequest, cap: int) -> list[int]:
    """Streams alive at each of the first ``cap`` generated tokens (the rule drops some)."""
    widths, width = [], req.rule.n_streams
    for step in range(cap):
        widths.append(width)
        width = min(width, req.rule.streams_needed(step))
    return widths


def fit_context(backend: Backend, req: GenerationRequest, index: int) -> tuple[int, int]:
    """``(usable max_new_tokens, context tokens the request may use)``; raise if its prompts
    alone do not fit. In a shared context (llama.cpp) all of a request's streams count."""
    longest = max(len(p) for p in req.prompts)
    total = sum(len(p) for p in req.prompts) if backend.shared_context else longest
    if total >= backend.n_ctx:
        what = f"{len(req.prompts)} streams' prompts" if len(req.prompts) > 1 else "prompt"
        raise ContextOverflowError(
            f"request {index}: {what} of {total} tokens do not fit the context of "
            f"{backend.n_ctx} tokens (raise n_ctx or shorten the conversation)"
        )
    cap = min(req.max_new_tokens, backend.n_ctx - longest)
    if not backend.shared_context:
        return cap, total + cap
    used = total
    for n, width in enumerate(_kv_widths(req, cap)):
        if used + width > backend.n_ctx:
            if n == 0:
                raise ContextOverflowError(
                    f"request {index}: its {len(req.prompts)} streams leave no room to generate "
                    f"in the shared context of {backend.n_ctx} tokens (raise n_ctx)"
                )
            return n, used
        used += width
    return cap, used


def _groups(
    requests: Sequence[GenerationRequest], max_streams: int, tokens: Sequence[int],
    budget: int | None,
) -> Iterator[list[int]]:
    """Indices of consecutive requests whose streams fit in one batch of ``max_streams`` and,
    when the context is shared, whose worst-case tokens (``tokens[i]``) fit in ``budget``."""
    group: list[int] = []
    width = used = 0
    for i, r in enumerate(requests):
        n = len(r.prompts)
        over = budget is not None and used + tokens[i] > budget
        if group and (width + n > max_streams or over):
            yield group
            group, width, used = [], 0, 0
        group.append(i)
        width += n
        used += tokens[i]
    if group:
        yield group


def decode(
    backend: Backend, requests: Sequence[GenerationRequest], *, errors: OnError = "raise"
) -> Iterator[TokenEvent | FinishEvent | ErrorEvent]:
    """Generate every request; yield token and finish events as they happen.

    Requests are decoded together, in as few batches as the backend's stream capacity (and, for
    a shared context, its size) allows. The caller must hold the backend exclusively for the
    whole iteration. A request that does not fit the context raises
    :class:`~guardrail.errors.ContextOverflowError` before anything is decoded
    (``errors="raise"``) or gets one :class:`ErrorEvent`, yielded before any other event, while
    the others are decoded (``errors="event"``); see the module docstring.
    """
    if errors not in ("raise", "event"):
        raise ConfigError(f"errors must be 'raise' or 'event', got {errors!r}")
    caps: dict[int, int] = {}
    tokens: dict[int, int] = {}
    failed: list[ErrorEvent] = []
    for i, r in enumerate(requests):
        try:
            caps[i], tokens[i] = fit_context(r.backend or backend, r, i)
        except ContextOverflowError as e:
            if errors == "raise":
                raise
            failed.append(ErrorEvent(i, e))
    yield from failed
    budget = backend.n_ctx if backend.shared_context else None
    shared = [i for i, r in enumerate(requests) if r.backend is None and i in caps]
    for group in _groups([requests[i] for i in shared], backend.max_streams,
                         [tokens[i] for i in shared], budget):
        yield from _decode_batch(
            backend, [(shared[j], requests[shared[j]], caps[shared[j]]) for j in group]
        )
    for i, r in enumerate(requests):
        if r.backend is not None and i in caps:
            yield from _decode_batch(r.backend, [(i, r, caps[i])])


def _processors(req: GenerationRequest, eot: Collection[int]) -> list[LogitsProcessor]:
    """The request's processors, then the end-of-turn mask its ``min_new_tokens`` asks for."""
    out = list(req.processors)
    if req.min_new_tokens > 0:
        out.append(MinNewTokens(eot, req.min_new_tokens))
    return out


def can_add(backend: Backend) -> bool:
    """Whether ``backend``'s streams can take new ones while they run (``Streams.add``)."""
    return bool(getattr(backend, "can_add_streams", False))


def opened(backend: Backend, req: GenerationRequest) -> int:
    """Streams of ``req`` to open at its start: the answer stream alone when its rule defers
    the others (:class:`~guardrail.decoding.rules.DeferringRule`) and the backend can add
    them later, else all of them."""
    rule = req.rule
    if isinstance(rule, DeferringRule) and rule.defers and can_add(backend):
        return 1
    return len(req.prompts)


def start(backend: Backend, index: int, req: GenerationRequest, cap: int) -> _Live:
    """The decoding state of request ``index`` (``cap``: its usable max_new_tokens), whose
    first :func:`opened` streams are about to be live."""
    lv = _Live(index, req, req.sampling.rng(), TextAssembler(backend.detokenize, req.stop),
               opened(backend, req), _processors(req, backend.end_of_turn_ids), cap=cap,
               limit=len(req.prompts), rule=req.rule, check=req.check)
    if req.check is not None and (req.processors or not can_add(backend)):
        # the check cannot rewind this request (processors keep state; streams cannot be
        # re-added): fail closed, the model's own answer from the start
        lv.rule, lv.check, lv.limit = req.check.fallback, None, 1
        lv.steps.append({"step": 0, "mode": "fallback", "check": "cannot_rewind"})
    return lv


class Batch:
    """Requests whose streams are live on one open :class:`~guardrail.adapters.base.Streams`,
    advanced together one token per :meth:`step`.

    :func:`decode` fills one at the start and runs it to the end; the scheduler
    (:mod:`guardrail.scheduler`) joins requests whose streams it has just added and drops
    cancelled ones between steps. Either way a step is the same: every live request's rule
    combines its rows of one batched forward, its processors constrain the result, the sampler
    picks the token, finished requests and streams the rules no longer need are freed. A rule
    that defers streams gets them opened in the step that first needs them.
    """

    def __init__(self, backend: Backend, streams: Streams) -> None:
        self.backend = backend
        self.streams = streams
        self.live: list[_Live] = []
        self.order: list[tuple[int, int]] = []  # (request, stream number) of each live row

    def join(self, lv: _Live) -> None:
        """Count ``lv`` as the owner of the last ``lv.n_streams`` live streams."""
        self.live.append(lv)
        self.order += [(lv.index, k) for k in range(lv.n_streams)]

    @property
    def rows(self) -> int:
        return len(self.order)

    def _keep(self, rows: list[int]) -> None:
        if len(rows) < self.streams.n_live:
            self.streams.keep(rows)
        self.order = [self.order[r] for r in rows]

    def drop(self, indices: Collection[int]) -> None:
        """Stop the requests ``indices`` now and free their streams (no event for them)."""
        still = [lv for lv in self.live if lv.index not in indices]
        if len(still) < len(self.live):
            self.live = still
            self._keep([r for r, (i, _) in enumerate(self.order) if i not in indices])

    def _open_deferred(self, lv: _Live, need: int) -> NDArray[np.float32]:
        """Open ``lv``'s streams up to ``need``: their prompts plus the tokens generated so far,
        so they stand where the answer stream stands; their next-token logits."""
        new = range(lv.n_streams, need)
        for _ in self.streams.add([[*lv.req.prompts[k], *lv.generated] for k in new]):
            pass
        self.order += [(lv.index, k) for k in new]
        lv.n_streams = need
        return self.streams.logits()[-len(new):]

    def step(self) -> list[TokenEvent | FinishEvent]:
        """One token for every live request, then free what is done; the events in order."""
        eot = self.backend.end_of_turn_ids
        events: list[TokenEvent | FinishEvent] = []
        logits = self.streams.logits()
        rows: dict[int, list[int]] = {}
        for r, (i, _) in enumerate(self.order):  # a request's rows, in stream order
            rows.setdefault(i, []).append(r)
        tokens: dict[int, int] = {}
        for lv in self.live:
            step = len(lv.generated)
            mine = logits[rows[lv.index]]
            answer = mine[0]
            if lv.n_streams < lv.limit and isinstance(lv.rule, DeferringRule):
                need = lv.rule.streams_now(step, answer)
                if need > lv.n_streams:
                    mine = np.concatenate([mine, self._open_deferred(lv, need)])
            z, info = lv.rule.combine(mine, step)
            for proc in lv.processors:
                z = proc(z, lv.generated, step, answer)
            tok = sample(z, lv.req.sampling, lv.rng)
            if info is not None:
                lv.steps.append({"step": step, **info})
            tokens[lv.index] = tok
            lv.generated.append(tok)
            if lv.check is not None and lv.fork is None and lv.check.forks(info):
                lv.fork = step
            out = lv.held if lv.fork is not None else events
            if tok in eot:
                lv.done = "stop"
                out.append(TokenEvent(lv.index, step, tok, "", info))
            else:
                out.append(TokenEvent(lv.index, step, tok, lv.text.push(tok), info))
                if lv.text.stopped_by is not None:
                    lv.done = "stop_string"
                elif len(lv.generated) >= lv.cap:
                    lv.done = "length"
            if lv.check is not None and lv.fork is not None:
                self._settle(lv, events)
        # Free finished requests and streams their rules no longer need.
        keep: dict[int, int] = {}
        still: list[_Live] = []
        for lv in self.live:
            if lv.done is not None:
                events.append(_finish(lv, len(lv.req.prompts[0])))
                continue
            needed = 0 if lv.rewind else lv.rule.streams_needed(len(lv.generated) - 1)
            lv.n_streams = keep[lv.index] = min(lv.n_streams, needed)
            lv.limit = min(lv.limit, needed)  # streams never needed again are never opened
            still.append(lv)
        self.live = still
        if still:
            self._keep([r for r, (i, k) in enumerate(self.order) if k < keep.get(i, 0)])
            if self.order:
                self.streams.append([tokens[i] for i, _ in self.order])
            for lv in [lv for lv in still if lv.rewind]:
                self._restart(lv)
        else:  # the streams are the owner's to free (or to keep for the next requests)
            self.order = []
        return events

    def _settle(self, lv: _Live, events: list[TokenEvent | FinishEvent]) -> None:
        """Run ``lv``'s forced-path check once it is due: release its held events, or drop
        them and fall back to the model's own answer from the fork (module
        :mod:`guardrail.decoding.forced_check`)."""
        check, fork = lv.check, lv.fork
        assert check is not None and fork is not None
        if not check.due(fork, len(lv.generated), lv.done is not None):
            return
        try:
            harm: float | None = float(check.read([*lv.req.prompts[0], *lv.generated]))
        except Exception:  # noqa: BLE001 - one request's read must not fail the batch
            log.exception("forced-path check: the read failed; the model's own answer is used")
            harm = None
        if harm is not None and harm < check.threshold:
            lv.steps.append({"step": len(lv.generated) - 1, "check": "kept", "answer_harm": harm})
            events += lv.held
            lv.held, lv.fork = [], None  # still armed: a later "comply" step is checked too
            return
        lv.check = None
        lv.held, lv.fork, lv.done, lv.rewind = [], None, None, True
        lv.generated = lv.generated[:fork]
        lv.text = TextAssembler(self.backend.detokenize, lv.req.stop)
        for t in lv.generated:  # what was released before the fork, released again silently
            lv.text.push(t)
        lv.steps = [s for s in lv.steps if s.get("step", 0) < fork]
        lv.steps.append({"step": fork, "mode": "fallback", "check": "fell_back",
                         "answer_harm": harm} if harm is not None else
                        {"step": fork, "mode": "fallback", "check": "error"})
        lv.rule = check.fallback

    def _restart(self, lv: _Live) -> None:
        """A fresh answer stream for ``lv`` after a fallback: its prompt and the tokens kept,
        live after the others with its next-token logits ready."""
        for _ in self.streams.add([[*lv.req.prompts[0], *lv.generated]]):
            pass
        self.order.append((lv.index, 0))
        lv.n_streams, lv.limit, lv.rewind = 1, 1, False


def _decode_batch(
    backend: Backend, batch: Sequence[tuple[int, GenerationRequest, int]]
) -> Iterator[TokenEvent | FinishEvent]:
    with backend.open([p for _, r, _ in batch for p in r.prompts[: opened(backend, r)]]) as s:
        run = Batch(backend, s)
        for i, r, cap in batch:
            run.join(start(backend, i, r, cap))
        while run.live:
            yield from run.step()


def _finish(lv: _Live, prompt_tokens: int) -> FinishEvent:
    assert lv.done is not None
    tail = lv.text.flush() if lv.done != "stop_string" else ""
    return FinishEvent(
        request=lv.index,
        reason=lv.done,
        text=lv.text.text,
        token_ids=list(lv.generated),
        prompt_tokens=prompt_tokens,
        steps=lv.steps,
        tail=tail,
    )
