"""``guardrail eval --ray``: the evaluation's decode batches sharded over Ray actors.

The driver plans the run exactly as a local one (:func:`guardrail.eval.runner.plan_run`: the
same settings check, keyed rows and resume), cuts the pending rows into the same decode batches
(per policy, ``batch_size`` prompts at a time) and hands them to Ray Data: one dataset row per
batch, ``map_batches`` over a pool of ``workers`` actors, each of which loads the model and
refusal detector once (:class:`EvalWorker` wraps the local :class:`BatchRunner`). The rows come
back to the driver in dataset order, and the driver alone writes ``results.jsonl`` (each row
durable before the next, as locally) under one progress bar for the whole cluster; the
summary and report are the local ones.

A worker that dies is restarted by Ray and the batch it held is run again (Ray Data's actor
pool retries it), so nothing is lost; a row that would arrive twice is not written twice
(:func:`~guardrail.eval.runner.record` keys rows by policy and id). A run interrupted as a
whole (the driver killed) resumes like a local run: re-run the same command.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from guardrail.errors import ConfigError
from guardrail.eval.datasets import Example
from guardrail.eval.report import write_report
from guardrail.eval.results import ResultRow
from guardrail.eval.runner import BatchRunner, EvalPlan, OnRow, plan_run, record
from guardrail.eval.summary import EvalSummary
from guardrail.policy import ModelConfig, Policy
from guardrail.policy.schema import RefusalConfig
from guardrail.scale.ray_runtime import connect, import_ray


class EvalWorker:
    """A Ray Data actor: loads the model once, then answers and judges whole decode batches.

    Each input row is one batch (``policy``: a policy name, ``examples``: the batch's examples
    as JSON); the output has one row per answer (``row``: a :class:`ResultRow` as JSON).
    """

    def __init__(self, policies: list[Policy], model: ModelConfig, refusal: RefusalConfig):
        self.policies = {p.name: p for p in policies}
        self.runner = BatchRunner(model, refusal)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: list[str] = []
        for name, examples in zip(batch["policy"], batch["examples"]):
            exs = [Example.model_validate(e) for e in json.loads(str(examples))]
            rows += [r.model_dump_json() for r in self.runner(self.policies[str(name)], exs)]
        return {"row": np.array(rows, dtype=object)}


def worker_model(model: ModelConfig, cpus_per_worker: float) -> ModelConfig:
    """The model as a worker loads it: llama.cpp with as many threads as CPUs Ray reserved for
    the worker (at least one), unless the policy sets ``n_threads``; llama.cpp would otherwise
    size its threads by the node's cores and workers sharing a node would oversubscribe it."""
    if model.backend != "llamacpp" or model.n_threads is not None:
        return model
    return model.model_copy(update={"n_threads": max(1, math.floor(cpus_per_worker))})


def check_options(workers: int, cpus_per_worker: float) -> None:
    """Refuse worker counts and sizes Ray could never schedule, naming the option."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a whole number of at least 1, got {workers!r}")
    if not (isinstance(cpus_per_worker, int | float) and cpus_per_worker > 0
            and math.isfinite(cpus_per_worker)):
        raise ConfigError(f"--cpus-per-worker must be a number above 0 (fractions share a "
                          f"core), got {cpus_per_worker!r}")


def sharded_rows(plan: EvalPlan, batches: Sequence[tuple[Policy, list[Example]]], *,
                 workers: int, cpus_per_worker: float) -> Iterator[ResultRow]:
    """The rows of ``batches``, decoded by ``workers`` actors, in batch order (Ray must be
    connected)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars,
             ctx.print_on_execution_start)
    ctx.execution_options.preserve_order = True  # rows in the order a local run writes them
    ctx.enable_progress_bars = False  # one bar, the driver's, counts the whole cluster
    ctx.print_on_execution_start = False
    try:
        items = [{"policy": p.name, "examples": json.dumps([e.model_dump() for e in exs])}
                 for p, exs in batches]
        ds = ray.data.from_items(items, override_num_blocks=len(items))  # a batch per block
        ds = ds.map_batches(
            EvalWorker, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker,
            fn_constructor_kwargs={"policies": plan.policies,
                                   "model": worker_model(plan.model, cpus_per_worker),
                                   "refusal": plan.refusal},
        )
        for row in ds.iter_rows():
            yield ResultRow.model_validate_json(row["row"])
    finally:  # the caller's own Ray Data settings, as they were
        (ctx.execution_options.preserve_order, ctx.enable_progress_bars,
         ctx.print_on_execution_start) = saved


def run_ray(
    policies: Sequence[str | Path | Policy],
    data: str | Path = "xstest",
    *,
    out: str | Path,
    workers: int = 1,
    address: str | None = None,
    cpus_per_worker: float = 1.0,
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
    """:func:`guardrail.eval.run` with the decoding on ``workers`` Ray actors of
    ``cpus_per_worker`` CPUs each, on the cluster at ``address`` (see
    :func:`~guardrail.scale.ray_runtime.connect`); same files, same resume.

    Ray is imported first: without the extra this fails at once, before anything is written.
    """
    import_ray("data")
    check_options(workers, cpus_per_worker)
    plan = plan_run(policies, data, out=out, model=model, backend=backend, limit=limit,
                    max_new_tokens=max_new_tokens, detector=detector, judge_model=judge_model,
                    probe_file=probe_file, batch_size=batch_size)
    batches = plan.batches(batch_size)
    if batches:
        connect(address, "data")
        rows = sharded_rows(plan, batches, workers=workers, cpus_per_worker=cpus_per_worker)
        record(plan, rows, progress=progress, on_row=on_row, desc=f"eval ({workers} ray workers)")
    return write_report(plan.out_dir)


__all__ = ["EvalWorker", "check_options", "run_ray", "sharded_rows", "worker_model"]
