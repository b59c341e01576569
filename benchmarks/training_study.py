"""The training study of docs/training.md, end to end, on a model you name (by hand, never CI).

    python benchmarks/training_study.py --model ~/.cache/guardrail-dev/qwen2.5-coder-0.5b-instruct.gguf \
        --shared ../shared --out runs/training-study [--threads 2]

Stages (each resumable: re-run the same command after an interruption):

1. ``guardrail train preferences`` on the shipped calibration prompts only (XSTest rows whose
   index is not a multiple of 3, JailbreakBench's even rows, Vicuna-Bench), teachers plain
   (2 samples), balanced and safety_prompt;
2. ``guardrail train experts`` and ``guardrail train porover`` on those pairs;
3. ``guardrail eval`` on the scoring prompts only (XSTest rows with index % 3 == 0,
   JailbreakBench's odd rows, MT-Bench's first turns): plain, balanced and the trained experts
   (portable policy, llama.cpp) in one run; the POROver adapter under plain decoding in a second
   run (another model: the adapter applied); both rescored with the keyword detector.

Prints the wall-clock of each stage and a table of refusal rates by detector. The scoring
prompts are built from ``--shared`` (the licensed copies in ../shared/data) and never reach
training.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from guardrail import eval as ev
from guardrail.eval.results import ResultsFile
from guardrail.policy import load_policy
from guardrail.policy.loader import with_overrides
from guardrail.training.dpo import LoraSettings
from guardrail.training.pipeline import train_experts, train_porover
from guardrail.training.preferences import generate_preferences
from guardrail.training.router import RouterSettings


def scoring_set(shared: Path, out: Path) -> Path:
    """XSTest index % 3 == 0 (150), JailbreakBench odd rows (50 harmful), MT-Bench (80)."""
    rows = []
    with (shared / "data/xstest/xstest_prompts.csv").open(newline="") as f:
        for i, r in enumerate(csv.DictReader(f)):
            if i % 3 == 0:
                rows.append({"id": f"xstest-{r['id']}", "prompt": r["prompt"],
                             "label": r["label"], "type": f"xstest-{r['type']}"})
    with (shared / "data/jailbreakbench/harmful-behaviors.csv").open(newline="") as f:
        for i, r in enumerate(csv.DictReader(f)):
            if i % 2 == 1:
                rows.append({"id": f"jbb-{i}", "prompt": r["Goal"], "label": "unsafe",
                             "type": "jailbreakbench"})
    for line in (shared / "data/mt_bench/question.jsonl").read_text().splitlines():
        q = json.loads(line)
        rows.append({"id": f"mt-{q['question_id']}", "prompt": q["turns"][0], "label": "safe",
                     "type": "mt_bench"})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def rates(run_dir: Path) -> dict[str, dict[str, float]]:
    """Refusal rate per policy and prompt group: XSTest safe and unsafe (the targets' "scoring
    prompts"), JailbreakBench's odd rows, MT-Bench."""
    out: dict[str, dict[str, list[bool]]] = {}
    for r in ResultsFile(run_dir).read():
        if r.failed:
            continue
        group = f"xstest-{r.label}" if r.type.startswith("xstest") else r.type
        out.setdefault(r.policy, {}).setdefault(group, []).append(bool(r.refused))
    return {p: {k: sum(v) / len(v) for k, v in g.items()} for p, g in out.items()}


GROUPS = ("xstest-safe", "xstest-unsafe", "jailbreakbench", "mt_bench")


def table(runs: dict[str, Path]) -> str:
    """The study's table: each run by each detector (the run's own and the keyword rescore)."""
    lines = ["policy | detector | XSTest safe refused | XSTest unsafe refused | "
             "JailbreakBench refused | MT-Bench refused", "|---|---|---|---|---|---|"]
    for run_dir in [*runs.values(), *(d.with_name(d.name + "-keyword") for d in runs.values())]:
        detector = "keyword" if run_dir.name.endswith("-keyword") else "probe"
        for policy, r in rates(run_dir).items():
            cells = " | ".join(f"{r[g]:.3f}" if g in r else "-" for g in GROUPS)
            lines.append(f"{policy} | {detector} | {cells}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="GGUF of the model to study.")
    ap.add_argument("--shared", type=Path, required=True, help="Folder holding data/.")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tokens", type=int, default=48, help="Answer length, both stages.")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--samples", type=int, default=2, help="Answers per teacher and prompt.")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--teacher", action="append", dest="teachers", default=None,
                    help="Teacher policy (repeatable; default plain, balanced, safety_prompt).")
    ap.add_argument("--router-steps", type=int, default=-1,
                    help="Cap on the in-layer router's steps (-1: one epoch).")
    args = ap.parse_args()
    threads = {} if args.threads is None else {"model": {"n_threads": args.threads}}

    def policy(ref):  # type: ignore[no-untyped-def]
        return with_overrides(load_policy(ref), threads) if threads else load_policy(ref)
    clock: dict[str, float] = {}

    def stage(name: str, fn):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        result = fn()
        clock[name] = time.perf_counter() - t0
        print(f"{name}: {clock[name]:.0f} s", flush=True)
        return result

    prefs = args.out / "preferences"
    stage("preferences", lambda: generate_preferences(
        "calibration", prefs, teachers=args.teachers or ["plain", "balanced", "safety_prompt"],
        samples=args.samples, temperature=args.temperature, max_new_tokens=args.tokens, model=args.model, backend="llamacpp",
        batch_size=8, threads=args.threads))
    lora = LoraSettings(learning_rate=args.lr, epochs=args.epochs, threads=args.threads)
    router = RouterSettings(threads=args.threads, max_steps=args.router_steps)
    experts = stage("experts", lambda: train_experts(prefs / "pairs.jsonl", args.out / "experts",
                                                      model=args.model, lora=lora,
                                                      router=router))
    porover = stage("porover", lambda: train_porover(prefs / "pairs.jsonl", args.out / "porover",
                                                      model=args.model, lora=lora))
    data = scoring_set(args.shared, args.out / "scoring.jsonl")
    trained = policy(experts.files["policy-portable"])
    runs = {"main": args.out / "eval", "porover": args.out / "eval-porover"}
    stage("eval", lambda: ev.run([policy("plain"), policy("balanced"), trained], data, out=runs["main"],
                                 model=args.model, backend="llamacpp",
                                 max_new_tokens=args.tokens, batch_size=8, detector="probe"))
    stage("eval porover", lambda: ev.run([policy(porover.files["policy-llamacpp"])], data,
                                         out=runs["porover"], max_new_tokens=args.tokens,
                                         batch_size=8, detector="probe"))
    for name, run_dir in runs.items():
        stage(f"rescore {name}", lambda d=run_dir: ev.rescore(
            d, out=d.with_name(d.name + "-keyword"), detector="string_match"))
    print("\n" + table(runs))
    print("\n" + json.dumps({k: round(v) for k, v in clock.items()}))


if __name__ == "__main__":
    main()
