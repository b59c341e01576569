"""``guardrail eval`` of policies (default plain, adacd, balanced) in one run, on one llama.cpp
thread, 24 new tokens, batch 8, string-match detector (DETECTOR=judge for the judge).
Usage: score.py DATA OUT [policies...]"""
import os
import sys
from guardrail import eval as ev
from guardrail.policy import load_policy
from guardrail.policy.loader import with_overrides
data, out, *names = sys.argv[1:]
pols = [with_overrides(load_policy(n), {"model": {"n_threads": 1}}) for n in names or ["plain", "adacd", "balanced"]]
det = os.environ.get("DETECTOR", "string_match")
s = ev.run(pols, data, out=out, model="/root/.cache/guardrail-dev/qwen2.5-coder-0.5b-instruct.gguf",
           backend="llamacpp", max_new_tokens=24, batch_size=8, detector=det)
for p in s.policies: print(p.policy, p.refused_safe, p.n_safe, p.refused_unsafe, p.n_unsafe, p.tokens_per_second)
