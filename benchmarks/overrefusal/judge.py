"""Judge the answers of an eval run with the judge detector (the dev model as judge), resumable.
Usage: judge.py RUN_DIR  -> RUN_DIR/judged.jsonl; then prints both detectors' rates over the
answers judged so far (REUSE_ONLY=1: judge nothing new)."""
import json, os, sys
from pathlib import Path
from guardrail.loading import get_engine
from guardrail.policy import ModelConfig
from guardrail.refusal.judge import JudgeDetector
from guardrail.refusal.string_match import string_match
d = Path(sys.argv[1])
rows = [json.loads(l) for l in open(d / "results.jsonl")]
out = d / "judged.jsonl"
done = {}
if out.exists():
    for l in open(out):
        r = json.loads(l); done[(r["policy"], r["id"])] = r
# the judge is greedy: an answer already judged for the same prompt (another policy wrote the
# same text) gets the same verdict without being judged again
by_text = {}
for r in rows:
    if (r["policy"], r["id"]) in done:
        by_text[(r["prompt"], r["response"])] = done[(r["policy"], r["id"])]
def reuse():
    for r in rows:
        k = (r["policy"], r["id"])
        if k not in done and (r["prompt"], r["response"]) in by_text:
            done[k] = {**by_text[(r["prompt"], r["response"])], "policy": r["policy"], "id": r["id"]}
reuse()
todo = [r for r in rows if (r["policy"], r["id"]) not in done]
seen = set(); uniq = []
for r in todo:
    if (r["prompt"], r["response"]) not in seen:
        seen.add((r["prompt"], r["response"])); uniq.append(r)
todo = uniq
if os.environ.get("REUSE_ONLY"):  # tabulate what is judged, judge nothing new
    todo = []
M = "/root/.cache/guardrail-dev/qwen2.5-coder-0.5b-instruct.gguf"
if todo:
    judge = JudgeDetector(get_engine(ModelConfig(backend="llamacpp", path=M, n_threads=1)))
    with open(out, "a") as f:
        for i in range(0, len(todo), 8):
            b = todo[i:i + 8]
            for r, v in zip(b, judge.detect_many([(r["prompt"], r["response"]) for r in b])):
                j = {"policy": r["policy"], "id": r["id"], "judge_refused": v.refused,
                     "judge_label": v.label, "detector": v.detector}
                done[(r["policy"], r["id"])] = j
                by_text[(r["prompt"], r["response"])] = j
                f.write(json.dumps(j) + "\n"); f.flush()
reuse()
print("detector:", next(iter(done.values()))["detector"] if done else "-")
print("| policy | safe: string match | safe: judge | unsafe: string match | unsafe: judge |")
print("|---|---|---|---|---|")
pol = {}
for r in rows:
    if (r["policy"], r["id"]) not in done:
        continue
    k = pol.setdefault(r["policy"], [0, 0, 0, 0, 0, 0]); i = 0 if r["label"] == "safe" else 3
    k[i] += string_match(r["response"]).refused; k[i + 1] += done[(r["policy"], r["id"])]["judge_refused"]; k[i + 2] += 1
f = lambda a, n: f"{a/n:.2f} ({a}/{n})" if n else "n/a"
for p, v in pol.items():
    print(f"| {p} | {f(v[0], v[2])} | {f(v[1], v[2])} | {f(v[3], v[5])} | {f(v[4], v[5])} |")
