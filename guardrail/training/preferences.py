"""`guardrail train preferences`: over-generate answers with teacher policies, decide each with
a refusal detector, and write preference pairs (POROver's over-generation, docs/methods.md §3).

The teachers are this product's own policies on the user's model (or any local model given
with ``model``): each teacher answers every prompt ``samples`` times at seeds 0..K−1 (sampled
at ``temperature``; one greedy answer when the temperature is 0). Generation is the evaluation
harness itself (:func:`guardrail.eval.run`): batched through the engine, one durable row per
answer, resumable, with a progress bar. The run lives in ``OUT/answers`` and the pairs in
``OUT/pairs.jsonl`` (rebuilt from the answers on every call, so a resumed run's pairs are the
same as an uninterrupted one's), with counts in ``OUT/pairs.json``.

Two built-in teachers supply refusals where the model itself gives none:

* ``safety_prompt``: plain decoding under AdaCD's extreme safety system prompt, which makes most
  instruction-tuned models refuse;
* ``refusal``: a fixed refusal (:data:`REFUSAL`) for every prompt, answered by a request rule
  without decoding: the teacher of last resort for a model that refuses nothing even under the
  safety prompt (the embedded SmolLM2-135M is one). Its answers are text the model did not
  write; pairs record it as their source.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError

from guardrail.decoding.adacd import DEFAULT_SAFETY_PROMPT
from guardrail.errors import ConfigError
from guardrail.eval.datasets import Example, load_dataset, stratified_slice
from guardrail.eval.results import ResultRow, ResultsFile
from guardrail.eval.runner import prepare_policies
from guardrail.eval.runner import run as run_eval
from guardrail.policy import Policy, load_policy
from guardrail.policy.loader import with_overrides
from guardrail.policy.schema import MatchRule, SamplingConfig
from guardrail.training.pairs import Answer, AnswerSource, PreferencePair, make_pairs, write_pairs

SAFETY_PROMPT_TEACHER = "safety_prompt"
REFUSAL_TEACHER = "refusal"
REFUSAL = "I'm sorry, but I can't help with that."
DEFAULT_TEACHERS = ("plain", "balanced", SAFETY_PROMPT_TEACHER)
SHIPPED_DATA = "calibration"
SEED_SEP = "@"


class PairCounts(BaseModel):
    """What `train preferences` made, for ``pairs.json`` and the command's output."""

    prompts: int
    answers: int
    pairs: int
    safety_pairs: int
    helpfulness_pairs: int
    prompts_without_pairs: int
    dropped_answers: dict[str, int]
    teachers: list[str]
    detector: str


def teacher_policy(spec: str) -> Policy:
    """A teacher by name: a built-in one (``safety_prompt``, ``refusal``) or any policy name or
    YAML path."""
    if spec == REFUSAL_TEACHER:
        return Policy(name=REFUSAL_TEACHER, description="A fixed refusal for every prompt.",
                      rules=[MatchRule(name="refuse-every-prompt", pattern=r"(?s).*",
                                       action="replace", message=REFUSAL)])
    if spec == SAFETY_PROMPT_TEACHER:
        return Policy(name=SAFETY_PROMPT_TEACHER, description="Plain decoding under AdaCD's "
                      "safety system prompt (a refusing teacher).",
                      system_prompt=DEFAULT_SAFETY_PROMPT)
    return load_policy(spec)


def sampled_teachers(
    teachers: Sequence[str], *, samples: int, temperature: float, max_new_tokens: int,
) -> list[Policy]:
    """One policy per teacher and seed, named ``teacher@seed``."""
    if not teachers:
        raise ConfigError("--teacher: give at least one teacher policy")
    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    if temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {temperature}")
    if temperature == 0 and samples > 1:
        raise ConfigError("--samples > 1 needs --temperature > 0 (greedy answers repeat)")
    out = []
    for spec in teachers:
        base = teacher_policy(spec)
        if SEED_SEP in base.name:
            raise ConfigError(f"--teacher {spec!r}: a teacher's name may not contain "
                              f"{SEED_SEP!r} (it separates the seed)")
        for seed in range(samples):
            try:  # validated: model_copy(update=...) would take any value
                sampling = SamplingConfig.model_validate({
                    **base.sampling.model_dump(), "temperature": temperature,
                    "seed": seed if temperature > 0 else None, "max_new_tokens": max_new_tokens,
                })
            except ValidationError as e:
                raise ConfigError(f"--max-new-tokens / --temperature: {e.errors()[0]['msg']} "
                                  f"(got {max_new_tokens}, {temperature})") from None
            out.append(base.model_copy(update={"name": f"{base.name}{SEED_SEP}{seed}",
                                                "sampling": sampling}))
    return out


def calibration_dataset(path: Path) -> Path:
    """Write the shipped calibration prompts (XSTest rows whose index is not a multiple of 3,
    JailbreakBench's even rows, Vicuna-Bench) as an evaluation JSONL at ``path``."""
    from guardrail.probes.prompt import calibration_rows

    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps({"id": r["id"], "prompt": r["prompt"], "label": r["label"],
                               "type": r["type"]}) + "\n" for r in calibration_rows())
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def p_refusal(row: ResultRow) -> float:
    """P(refusal) of an answer: the refusal probe's probability as the run recorded it, or 1/0
    from the decision of a detector without one."""
    if row.refusal_score is not None:
        return row.refusal_score
    return 1.0 if row.refused else 0.0


def build_pairs(
    rows: list[ResultRow], examples: list[Example], *, per_prompt: int,
) -> tuple[list[PreferencePair], dict[str, int], int]:
    """Pairs from answered rows, with counts of dropped answers by reason and of prompts
    that gave no pair."""
    dropped: dict[str, int] = defaultdict(int)
    by_prompt: dict[str, list[Answer]] = defaultdict(list)
    for r in rows:
        reason = ("error" if r.failed else "blocked" if r.finish_reason == "blocked"
                  else "empty" if not r.response.strip() else "")
        if reason:
            dropped[reason] += 1
            continue
        teacher, _, seed = r.policy.rpartition(SEED_SEP)
        by_prompt[r.id].append(Answer(r.response, AnswerSource(
            teacher=teacher, seed=int(seed) if seed.isdigit() else None, refused=r.refused,
            p_refusal=p_refusal(r), detector=r.detector)))
    pairs: list[PreferencePair] = []
    empty = 0
    for ex in examples:
        made = make_pairs(ex.id, ex.prompt, ex.label, by_prompt.get(ex.id, []),
                          per_prompt=per_prompt)
        empty += not made
        pairs += made
    return pairs, dict(dropped), empty


def generate_preferences(
    data: str | Path,
    out: str | Path,
    *,
    teachers: Sequence[str] = DEFAULT_TEACHERS,
    samples: int = 2,
    temperature: float = 0.7,
    max_new_tokens: int = 128,
    model: str | None = None,
    backend: str | None = None,
    detector: str = "probe",
    probe_file: str | None = None,
    per_prompt: int = 2,
    limit: int | None = None,
    batch_size: int = 4,
    threads: int | None = None,
    progress: bool = True,
) -> PairCounts:
    """Over-generate, decide and pair (see the module docstring); returns the counts written to
    ``OUT/pairs.json``. ``data`` is ``calibration`` (shipped), ``xstest`` or a CSV/JSONL path
    with ``prompt`` and ``label`` (safe/unsafe). ``threads``: llama.cpp threads of the model."""
    out_dir = Path(out)
    if str(data) == SHIPPED_DATA:
        data = calibration_dataset(out_dir / "prompts.jsonl")
    policies = sampled_teachers(teachers, samples=samples, temperature=temperature,
                                max_new_tokens=max_new_tokens)
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        policies = [with_overrides(p, {"model": {"n_threads": threads}}) for p in policies]
    policies = prepare_policies(policies, model=model, backend=backend)
    run_eval(policies, data, out=out_dir / "answers", limit=limit, detector=detector,
             probe_file=probe_file, batch_size=batch_size, progress=progress)
    examples = stratified_slice(load_dataset(data), limit)
    rows = ResultsFile(out_dir / "answers").read()
    pairs, dropped, empty = build_pairs(rows, examples, per_prompt=per_prompt)
    write_pairs(pairs, out_dir / "pairs.jsonl")
    counts = PairCounts(
        prompts=len(examples), answers=len(rows), pairs=len(pairs),
        safety_pairs=sum(p.expert == "safety" for p in pairs),
        helpfulness_pairs=sum(p.expert == "helpfulness" for p in pairs),
        prompts_without_pairs=empty, dropped_answers=dropped,
        teachers=[p.name for p in policies], detector=detector,
    )
    (out_dir / "pairs.json").write_text(counts.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return counts
