"""``summary.json``, ``report.md`` and ``report.png`` from a run directory.

The plot is drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global
backend switch), so reports can be made on servers and inside notebooks alike.
"""

from __future__ import annotations

from pathlib import Path

from guardrail.errors import ConfigError
from guardrail.eval.results import ResultsFile, read_settings
from guardrail.eval.summary import EvalSummary, PolicySummary, summarize

SUMMARY, REPORT_MD, REPORT_PNG = "summary.json", "report.md", "report.png"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = "{:.1f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _some(ids: list[str], most: int = 20) -> str:
    return ", ".join(ids[:most]) + (f" and {len(ids) - most} more" if len(ids) > most else "")


def write_report(out_dir: str | Path) -> EvalSummary:
    """Recompute the summary from ``results.jsonl`` and (re)write all three report files."""
    out = Path(out_dir)
    rows = ResultsFile(out).read()
    if not rows:
        raise ConfigError(f"{out / 'results.jsonl'}: no results to report (run `guardrail eval`)")
    summary = summarize(rows, read_settings(out))
    (out / SUMMARY).write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")
    (out / REPORT_MD).write_text(render_markdown(summary), encoding="utf-8")
    plot(summary, out / REPORT_PNG)
    return summary


def render_markdown(summary: EvalSummary) -> str:
    """The report: settings, the per-policy table, the per-type table, the plot."""
    s = summary.settings
    lines = ["# Evaluation report", ""]
    if s:
        model = s.get("model", {})
        lines += [
            f"- data: `{s.get('dataset')}`" + (f" (slice of {s['limit']})" if s.get("limit") else ""),
            f"- model: `{model.get('path') or 'embedded SmolLM2-135M-Instruct'}` "
            f"({model.get('backend')})",
            f"- max new tokens: {s.get('max_new_tokens')}; detector: `{s.get('detector')}`",
            "",
        ]
    lines += [
        "| policy | n | over-refusal (safe refused) | safety (unsafe refused) | F1 | tokens/s "
        "| errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in summary.policies:
        lines.append(
            f"| {p.policy} | {p.n} | {_pct(p.over_refusal_rate)} ({p.refused_safe}/{p.n_safe}) "
            f"| {_pct(p.safety_rate)} ({p.refused_unsafe}/{p.n_unsafe}) "
            f"| {_num(p.f1, '{:.3f}')} | {_num(p.tokens_per_second)} | {p.n_errors} |"
        )
    failed = [p for p in summary.policies if p.n_errors]
    if failed:
        lines += ["", "Errors: rows that could not run (the prompt does not fit the model's "
                  "context; `error` in `results.jsonl`), left out of n and of every rate: "
                  + "; ".join(f"{p.policy}: {p.n_errors} (ids {_some(p.error_ids)})"
                              for p in failed) + "."]
    names = [p.policy for p in summary.policies]
    lines += ["", "Refusal rate per prompt type (for `safe` types lower is better, for `unsafe`"
              " types higher is better):", "",
              "| type | label | n | " + " | ".join(names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    for (t, lab), n, cells in _type_table(summary.policies):
        lines.append(f"| {t or '(none)'} | {lab} | {n} | " + " | ".join(cells) + " |")
    detectors = sorted({d for p in summary.policies for d in p.detectors})
    lines += [
        "",
        f"Refusals decided by: {', '.join(f'`{d}`' for d in detectors)}. "
        "F1 = harmonic mean of the safety rate and the safe compliance rate (1 - over-refusal).",
        "",
        f"![over-refusal vs safety]({REPORT_PNG})",
        "",
    ]
    return "\n".join(lines)


def _type_table(
    policies: list[PolicySummary],
) -> list[tuple[tuple[str, str], int, list[str]]]:
    keys: list[tuple[str, str]] = []
    for p in policies:
        for t in p.per_type:
            if (t.type, t.label) not in keys:
                keys.append((t.type, t.label))
    keys.sort(key=lambda k: (k[1], k[0]))
    table = []
    for key in keys:
        cells, n = [], 0
        for p in policies:
            hit = next((t for t in p.per_type if (t.type, t.label) == key), None)
            cells.append("" if hit is None else f"{_pct(hit.refusal_rate)}")
            n = max(n, hit.n if hit else 0)
        table.append((key, n, cells))
    return table


def plot(summary: EvalSummary, path: Path) -> None:
    """Left: over-refusal vs safety per policy. Right: refusal rate per type per policy."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = _type_table(summary.policies)
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 2.2])
    for p in summary.policies:
        x = 100 * (p.over_refusal_rate or 0.0)
        y = 100 * (p.safety_rate or 0.0)
        ax1.scatter([x], [y], s=80)
        ax1.annotate(p.policy, (x, y), textcoords="offset points", xytext=(6, 6))
    ax1.set(xlim=(-5, 105), ylim=(-5, 105), xlabel="over-refusal: safe prompts refused (%)",
            ylabel="safety: unsafe prompts refused (%)", title="Policies (top left is best)")
    ax1.grid(alpha=0.3)
    n_pol = max(len(summary.policies), 1)
    width = 0.8 / n_pol
    for i, p in enumerate(summary.policies):
        values = []
        for (t, lab), _n, _cells in table:
            hit = next((r for r in p.per_type if (r.type, r.label) == (t, lab)), None)
            values.append(100 * hit.refusal_rate if hit else 0.0)
        xs = [j + (i - (n_pol - 1) / 2) * width for j in range(len(table))]
        ax2.bar(xs, values, width=width, label=p.policy)
    ax2.set_xticks(range(len(table)))
    ax2.set_xticklabels([f"{t or '(none)'} [{lab}]" for (t, lab), _, _ in table],
                        rotation=60, ha="right", fontsize=7)
    ax2.set(ylim=(0, 105), ylabel="refused (%)",
            title="Refusal rate per type (safe: lower is better; unsafe: higher is better)")
    ax2.legend()
    fig.savefig(path, dpi=110)
