"""Evaluation harness: datasets, resumable runs, summaries and reports.

``run(policies, data, out=DIR)`` is what ``guardrail eval`` does; ``write_report(DIR)`` is
``guardrail eval --report DIR``; ``rescore(DIR, out=DIR2, detector=...)`` is
``guardrail eval rescore`` (the same answers decided by another refusal detector). Summaries
are pydantic models (:class:`EvalSummary`).
"""

from guardrail.eval.datasets import DatasetError, Example, load_dataset, stratified_slice
from guardrail.eval.report import write_report
from guardrail.eval.rescore import rescore
from guardrail.eval.results import ResultRow, ResultsFile
from guardrail.eval.runner import run
from guardrail.eval.summary import EvalSummary, PolicySummary, TypeRate, f1_score, summarize

__all__ = [
    "DatasetError",
    "EvalSummary",
    "Example",
    "PolicySummary",
    "ResultRow",
    "ResultsFile",
    "TypeRate",
    "f1_score",
    "load_dataset",
    "rescore",
    "run",
    "stratified_slice",
    "summarize",
    "write_report",
]
