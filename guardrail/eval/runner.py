"""Run every prompt under every policy on one loaded model, resumably.

The model is the first policy's (with ``model``/``backend`` overrides) and every policy is run on
it, so policies are compared on the same weights. Prompts are decoded in batches per policy
(``Engine.generate_many``), each answer is judged, and each row is made durable before the next
one is written (see :mod:`guardrail.eval.results`).

A prompt that cannot run (it does not fit the model's context) fails alone: it is recorded as an
error row (``finish_reason="error"``, ``error`` naming the dataset row id) and the evaluation
goes on. A resume skips error rows like answered ones (they would fail the same way under the
run's fixed settings) and refuses to go on when the dataset's rows changed since they were
written (:func:`~guardrail.eval.results.check_rows`).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from guardrail.engine import Engine
from guardrail.errors import ConfigError, GuardrailError, RefusalError
from guardrail.eval.datasets import Example, load_dataset, stratified_slice
from guardrail.eval.report import write_report
from guardrail.eval.results import ResultRow, ResultsFile, check_rows, check_settings, prompt_hash
from guardrail.eval.summary import EvalSummary
from guardrail.guard import Guard
from guardrail.loading import get_engine
from guardrail.policy import ModelConfig, Policy, load_policy
from guardrail.policy.schema import JudgeConfig, RefusalConfig, RefusalProbeConfig
from guardrail.refusal import DETECTORS, get_detector
from guardrail.refusal.base import Detector, RefusalResult

OnRow = Callable[[ResultRow], None]
log = logging.getLogger("guardrail.eval")


def prepare_policies(
    policies: Sequence[str | Path | Policy],
    *,
    model: str | None = None,
    backend: str | None = None,
    max_new_tokens: int | None = None,
) -> list[Policy]:
    """Load the policies and put them all on one model with the same token limit."""
    if not policies:
        raise ConfigError("--policy: give at least one policy (e.g. --policy plain --policy adacd)")
    loaded = [load_policy(p) for p in policies]
    names = [p.name for p in loaded]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--policy: policy names must be unique, repeated: {', '.join(dupes)}")
    update: dict[str, object] = {}
    if model is not None:
        update["path"] = model
    if backend is not None:
        update["backend"] = backend
    try:
        model_cfg = type(loaded[0].model).model_validate(
            {**loaded[0].model.model_dump(), **update}
        )
    except ValueError as e:
        raise ConfigError(f"--model/--backend: {e}") from e
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    out = []
    for p in loaded:
        sampling = p.sampling
        if max_new_tokens is not None:
            sampling = sampling.model_copy(update={"max_new_tokens": max_new_tokens})
        out.append(p.model_copy(update={"model": model_cfg, "sampling": sampling}))
    return out


@dataclass
class EvalPlan:
    """What a run still has to do, decided before any model loads: the prepared policies, the
    dataset slice, the refusal detector's settings and the rows already in ``results.jsonl``.

    A local run and a Ray run (:mod:`guardrail.scale.eval`) share it, so both check and record
    the same settings, resume from the same keyed rows and write the same files.
    """

    policies: list[Policy]
    examples: list[Example]
    out_dir: Path
    refusal: RefusalConfig
    store: ResultsFile
    done: set[tuple[str, str]] = field(default_factory=set)

    @property
    def total(self) -> int:
        """Rows of the whole run (every prompt under every policy)."""
        return len(self.policies) * len(self.examples)

    @property
    def model(self) -> ModelConfig:
        """The one model every policy is evaluated on."""
        return self.policies[0].model

    def todo(self) -> list[tuple[Policy, list[Example]]]:
        """Each policy with the examples it has no row for yet, in dataset order."""
        return [(p, [ex for ex in self.examples if (p.name, ex.id) not in self.done])
                for p in self.policies]

    @property
    def pending(self) -> int:
        """Rows still to make."""
        return sum(len(exs) for _, exs in self.todo())

    def batches(self, batch_size: int) -> list[tuple[Policy, list[Example]]]:
        """The pending rows cut into decode batches: per policy, ``batch_size`` examples at a
        time, in order (a local run and a Ray run cut them alike, so their answers match)."""
        return [(p, exs[start : start + batch_size]) for p, exs in self.todo()
                for start in range(0, len(exs), batch_size)]


def plan_run(
    policies: Sequence[str | Path | Policy],
    data: str | Path = "xstest",
    *,
    out: str | Path,
    model: str | None = None,
    backend: str | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    detector: str = "string_match",
    judge_model: str | None = None,
    probe_file: str | None = None,
    batch_size: int = 4,
) -> EvalPlan:
    """Check the options, record (or check) the run's settings in ``out/run.json``, repair and
    read ``out/results.jsonl`` and say what is left; loads no model (see :func:`run`)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    pols = prepare_policies(policies, model=model, backend=backend, max_new_tokens=max_new_tokens)
    refusal = refusal_config(detector, judge_model, pols[0], probe_file=probe_file)
    examples = stratified_slice(load_dataset(data), limit)
    out_dir = Path(out)
    check_settings(
        out_dir,
        {
            "dataset": str(data),
            "limit": limit,
            "model": pols[0].model.model_dump(),
            "max_new_tokens": pols[0].sampling.max_new_tokens if max_new_tokens else None,
            "detector": detector,
            "judge_model": judge_model,
            "probe_file": probe_file,
            "policies": {p.name: p.model_dump(mode="json") for p in pols},
        },
    )
    store = ResultsFile(out_dir)
    stored = store.read(repair=True)
    check_rows(store.path, stored, examples)
    return EvalPlan(pols, examples, out_dir, refusal, store, {r.key for r in stored})


class BatchRunner:
    """One loaded model and refusal detector that answer and judge batches of one policy.

    Made once per process that decodes: the local run makes one, a Ray run one per actor (each
    loading its model once). ``model`` is the plan's model, possibly with load options of the
    process's own (threads); the policies' own ``model`` sections are not read here.
    """

    def __init__(self, model: ModelConfig, refusal: RefusalConfig):
        self.engine = get_engine(model)
        self.judge = get_detector(refusal, self.engine)

    def __call__(self, policy: Policy, batch: list[Example]) -> list[ResultRow]:
        """The rows of ``batch`` under ``policy`` (see :func:`_run_batch`)."""
        return _run_batch(self.engine, self.judge, policy, batch)


def record(plan: EvalPlan, rows: Iterable[ResultRow], *, progress: bool = True,
           on_row: OnRow | None = None, desc: str = "eval") -> int:
    """Append each new row of ``rows`` to the plan's ``results.jsonl`` (durable before the next
    is taken) under one progress bar; returns how many were written.

    A row whose key is already recorded is not written again: a Ray run re-runs the shard of a
    worker that died, and the file holds every ``(policy, id)`` exactly once. Such a row is
    logged, never silently dropped.
    """
    written = 0
    shown = ""
    with tqdm(total=plan.total, initial=plan.total - plan.pending, desc=desc, unit="answer",
              disable=not progress, dynamic_ncols=True) as bar:
        for row in rows:
            if row.key in plan.done:
                log.warning("eval: row %r arrived again (a re-run shard); kept the first",
                            row.key)
                continue
            if row.policy != shown:
                shown = row.policy
                bar.set_postfix_str(shown)
            plan.store.append(row)
            plan.done.add(row.key)
            written += 1
            bar.update(1)
            if on_row is not None:
                on_row(row)
    return written


def run(
    policies: Sequence[str | Path | Policy],
    data: str | Path = "xstest",
    *,
    out: str | Path,
    model: str | None = None,
    backend: str | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    detector: str = "string_match",
    judge_model: str | None = None,
    probe_file: str | None = None,
    batch_size: int = 4,
    progress: bool = True,
    on_row: OnRow | None = None,
) -> EvalSummary:
    """Evaluate ``policies`` on ``data`` into ``out`` (resuming what is there) and report.

    ``limit`` takes a type-stratified slice (see :func:`stratified_slice`). ``on_row`` is called
    after each row is durable (progress hooks, notebooks, tests). ``judge_model`` is a model path
    for ``detector="judge"`` (default: the evaluated model judges its own answers), ``probe_file`` a
    refusal probe for ``detector="probe"`` (default: the shipped one). Returns the summary that
    was written to ``out/summary.json``.
    """
    plan = plan_run(policies, data, out=out, model=model, backend=backend, limit=limit,
                    max_new_tokens=max_new_tokens, detector=detector, judge_model=judge_model,
                    probe_file=probe_file, batch_size=batch_size)
    batches = plan.batches(batch_size)
    if batches:
        runner = BatchRunner(plan.model, plan.refusal)
        rows = (row for policy, exs in batches for row in runner(policy, exs))
        record(plan, rows, progress=progress, on_row=on_row)
    return write_report(plan.out_dir)


def refusal_config(
    detector: str, judge_model: str | None, policy: Policy, *, probe_file: str | None = None
) -> RefusalConfig:
    """The refusal section for ``--detector``, ``--judge-model`` (judge on the policy's backend)
    and ``--probe-file``."""
    if detector not in DETECTORS:
        raise ConfigError(f"--detector must be one of {', '.join(DETECTORS)}, got {detector!r}")
    if judge_model is not None and detector != "judge":
        raise ConfigError("--judge-model is only used with --detector judge")
    if probe_file is not None and detector != "probe":
        raise ConfigError("--probe-file is only used with --detector probe")
    if detector == "probe":
        return RefusalConfig(detector="probe",
                             probe=RefusalProbeConfig(path=probe_file) if probe_file else None)
    if detector == "string_match":
        return RefusalConfig(detector="string_match")
    model = None
    if judge_model is not None:
        model = ModelConfig(backend=policy.model.backend, path=judge_model)
    return RefusalConfig(detector="judge", judge=JudgeConfig(model=model))


def _enforce(guard: Guard, prompt: str) -> tuple[str | None, str | None]:
    """The policy's request rules on one prompt: ``(answer, finish_reason)`` when a rule answers
    (``replace``) or blocks (``raise``: no answer), ``(None, None)`` when the model decodes."""
    try:
        verdict = guard.check_request([{"role": "user", "content": prompt}])
    except RefusalError:
        return "", "blocked"
    if verdict is not None and verdict.answers:
        return verdict.message, "rule"
    return None, None


def _deliver(guard: Guard, prompt: str, text: str) -> tuple[str, bool]:
    """The answer a deployment gives (``on_refusal`` applied) and whether it was blocked."""
    if not guard.holds_answer:
        return text, False
    try:
        return guard.review(prompt, text).text, False
    except RefusalError:
        return "", True


def _row_error(ex: Example, policy: Policy, err: GuardrailError) -> str:
    """The error of a row that could not run, naming the dataset row, not the batch slot."""
    detail = re.sub(r"^request \d+: ", "", str(err))
    return f"dataset row id {ex.id!r} (policy {policy.name!r}): {detail}"


def _run_batch(engine: Engine, judge: Detector, policy: Policy, batch: list[Example]
               ) -> list[ResultRow]:
    """Generate and judge one batch under the policy's Guard (request rules before decoding,
    ``on_refusal`` after); each row that ran gets an equal share of the generation time. A
    prompt that does not fit the context becomes an error row (no answer, not judged)."""
    guard = Guard(policy, engine)
    enforced = [_enforce(guard, ex.prompt) for ex in batch]
    decode = [ex for ex, (answer, _) in zip(batch, enforced) if answer is None]
    built: list[Any] = []
    for ex in decode:  # building reads the prompt (a probe): a prompt too long fails alone
        try:
            built.append(engine.request(policy, [{"role": "user", "content": ex.prompt}]))
        except GuardrailError as e:
            built.append(e)
    requests = [b for b in built if not isinstance(b, GuardrailError)]
    t0 = time.perf_counter()
    done = iter(engine.generate_many(requests, return_exceptions=True) if requests else [])
    elapsed = time.perf_counter() - t0
    gens = iter([b if isinstance(b, GuardrailError) else next(done) for b in built])
    rows: list[dict[str, Any]] = []
    for ex, (answer, reason) in zip(batch, enforced):
        if answer is not None:
            rows.append({"ex": ex, "text": answer, "blocked": reason == "blocked",
                         "finish_reason": reason, "new_tokens": 0, "prompt_tokens": 0,
                         "modes": {}})
            continue
        g = next(gens)
        if isinstance(g, GuardrailError):
            rows.append({"ex": ex, "text": "", "blocked": False, "finish_reason": "error",
                         "new_tokens": 0, "prompt_tokens": 0, "modes": {},
                         "error": _row_error(ex, policy, g)})
            continue
        text, blocked = _deliver(guard, ex.prompt, g.text)
        rows.append({"ex": ex, "text": text, "blocked": blocked,
                     "finish_reason": "blocked" if blocked else g.finish_reason,
                     "new_tokens": g.completion_tokens, "prompt_tokens": g.prompt_tokens,
                     "modes": dict(Counter(g.modes)), "harm": g.probe.get("harm")})
    ran = [r for r in rows if "error" not in r]
    share = elapsed / len(ran) if ran else 0.0
    judged = [r for r in ran if not r["blocked"]]
    verdicts = iter(judge.detect_many([(r["ex"].prompt, r["text"]) for r in judged]))
    out = []
    for r in rows:
        ex = r["ex"]
        if "error" in r:
            v, seconds = RefusalResult(False, "", ""), 0.0
        elif r["blocked"]:
            v, seconds = RefusalResult(True, "policy", "full_refusal"), share
        else:
            v, seconds = next(verdicts), share
        out.append(ResultRow(
            id=ex.id, prompt=ex.prompt, label=ex.label, type=ex.type, policy=policy.name,
            response=r["text"], refused=v.refused, detector=v.detector, refusal_label=v.label,
            refusal_score=v.score, harm=r.get("harm"),
            new_tokens=r["new_tokens"], prompt_tokens=r["prompt_tokens"],
            finish_reason=r["finish_reason"], seconds=seconds, modes=r["modes"],
            error=r.get("error", ""), prompt_sha256=prompt_hash(ex.prompt),
        ))
    return out
