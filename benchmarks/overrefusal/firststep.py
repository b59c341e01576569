"""First-step statistics on the tuning split: plain top token, is it a refusal start, p_o, p_s."""
import csv, json
import numpy as np
from guardrail.loading import get_engine
from guardrail.policy import ModelConfig, Policy
from guardrail.decoding.mathops import softmax
M = "/root/.cache/guardrail-dev/qwen2.5-coder-0.5b-instruct.gguf"
eng = get_engine(ModelConfig(backend="llamacpp", path=M, n_threads=1))
pol = Policy.model_validate({"name": "g", "strategy": {"kind": "gated_cd"}})
rule = eng.plan(pol, [{"role": "user", "content": "hi"}]).rule
rows = list(csv.DictReader(open("/tmp/oc/xstest_tune.csv")))
with open("/tmp/oc/firststep.jsonl", "w") as f:
    for r in rows:
        ps = eng.stream_prompts(pol, [{"role": "user", "content": r["prompt"]}])
        with eng.backend.open(ps) as st:
            z = st.logits()
        po, pss = softmax(z[0]), softmax(z[1])
        top = int(np.argmax(z[0]))
        f.write(json.dumps({"id": r["id"], "label": r["label"], "type": r["type"], "top": eng.backend.detokenize([top]),
            "ref": top in rule.refusal_ids, "po": float(po.max()), "ps": float(pss.max()),
            "agree": int(np.argmax(z[1])) == top, "pref_o": float(sum(po[i] for i in rule.refusal_ids)),
            "pref_s": float(sum(pss[i] for i in rule.refusal_ids))}) + "\n")
