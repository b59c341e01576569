"""Decide a finished run's answers again with another refusal detector, without regenerating.

The answers stay those of the source run (same prompts, policies, model and decoding), so two
detectors' rates are measured on one run. The rescored run is a run directory like any other:
``results.jsonl`` (rows with the new ``refused``, ``detector`` and ``refusal_label``),
``run.json`` (the source's settings, the new detector and ``rescored_from``), the summary and
the report; it resumes when interrupted.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from guardrail.loading import get_engine

from guardrail.errors import ConfigError
from guardrail.eval.report import write_report
from guardrail.eval.results import ResultsFile, check_settings, read_settings
from guardrail.eval.runner import refusal_config
from guardrail.eval.summary import EvalSummary
from guardrail.policy import ModelConfig, Policy
from guardrail.refusal import get_detector


def rescore(
    source: str | Path,
    *,
    out: str | Path,
    detector: str,
    judge_model: str | None = None,
    probe_file: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> EvalSummary:
    """Decide every answer of the run in ``source`` with ``detector`` into the run ``out``."""
    src, dst = Path(source), Path(out)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if src.resolve() == dst.resolve():
        raise ConfigError("--out must be another directory than the run being rescored")
    rows = ResultsFile(src).read()
    if not rows:
        raise ConfigError(f"{src}: no answers to rescore (no {src / 'results.jsonl'} rows)")
    settings = read_settings(src)
    model = ModelConfig.model_validate(settings.get("model") or {})
    check_settings(dst, {**settings, "detector": detector, "judge_model": judge_model,
                         "probe_file": probe_file, "rescored_from": str(src)})
    store = ResultsFile(dst)
    done = {r.key for r in store.read(repair=True)}
    todo = [r for r in rows if r.key not in done]
    if todo:
        engine = None
        if detector == "judge" and judge_model is None:  # the evaluated model judges itself
            engine = get_engine(model)
        config = refusal_config(detector, judge_model, Policy(name="rescore", model=model),
                                 probe_file=probe_file)
        judge = get_detector(config, engine)
        with tqdm(total=len(rows), initial=len(rows) - len(todo), desc=f"rescore {judge.name}",
                  unit="answer", disable=not progress, dynamic_ncols=True) as bar:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                answered = [r for r in chunk if not r.failed]  # an error row has no answer
                verdicts = iter(judge.detect_many([(r.prompt, r.response) for r in answered]))
                for row in chunk:
                    if row.failed:
                        store.append(row)
                    else:
                        v = next(verdicts)
                        store.append(row.model_copy(update={
                            "refused": v.refused, "detector": v.detector,
                            "refusal_label": v.label, "refusal_score": v.score}))
                    bar.update(1)
    return write_report(dst)
