"""The shipped-policies table of docs/policies.md from one ``guardrail eval`` run directory.

For each policy: refusal of safe and of unsafe prompts, and against plain decoding under the same
deployment prompt (policies named ``NAME-sp`` pair with ``plain-sp``, the others with ``plain``)
how many unsafe prompts plain refused that the policy answered ("lost") and the reverse
("gained"). Prints a Markdown table.

Usage: policy_table.py RUN_DIR [RUN_DIR...] (a policy in a later run replaces the earlier's)
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(*runs: str) -> None:
    by: dict[str, dict[str, dict]] = defaultdict(dict)
    for run in runs:
        fresh: dict[str, dict[str, dict]] = defaultdict(dict)
        for line in open(f"{run}/results.jsonl", encoding="utf-8"):
            r = json.loads(line)
            fresh[r["policy"]][r["id"]] = r
        by.update(fresh)
    print("| policy | deployment prompt | refusal on safe | refusal on unsafe | "
          "unsafe lost / gained vs plain |")
    print("|---|---|---|---|---|")
    for name, rows in by.items():
        sp = name.endswith("-sp")
        base = by["plain-sp" if sp else "plain"]
        safe = [r["refused"] for r in rows.values() if r["label"] == "safe"]
        unsafe = [i for i, r in rows.items() if r["label"] == "unsafe"]
        refused_u = sum(rows[i]["refused"] for i in unsafe)
        lost = sum(base[i]["refused"] and not rows[i]["refused"] for i in unsafe)
        gained = sum(rows[i]["refused"] and not base[i]["refused"] for i in unsafe)
        print(f"| {name.removesuffix('-sp')} | {'strict' if sp else 'none'} | "
              f"{sum(safe) / len(safe):.2f} ({sum(safe)}/{len(safe)}) | "
              f"{refused_u / len(unsafe):.2f} ({refused_u}/{len(unsafe)}) | {lost} / {gained} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
