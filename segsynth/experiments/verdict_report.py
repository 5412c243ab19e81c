"""The verdict section of the HTML report: the sentences, a table of the split-level evidence and a plot of the
per-split differences (``segsynth.experiments.verdict`` computes them)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from segsynth.evaluate.split_evidence import points
from segsynth.experiments.formatting import escape, fmt_p, img_tag
from segsynth.experiments.plots import split_differences
from segsynth.experiments.verdict import VERDICT_RULE, verdict_sentences, verdicts

_CLASS = {"helped": "sig", "hurt": "failed"}


def _row(v: Mapping[str, Any]) -> str:
    s = v["split"]
    ci = f"[{points(s['ci_low'])}, {points(s['ci_high'])}]" if math.isfinite(s["ci_low"]) else "–"
    pw = f"{100 * s['p_worse']:.0f} %" if math.isfinite(s["p_worse"]) else "–"
    det = f"±{100 * s['detectable']:.1f}" if math.isfinite(s["detectable"]) else "–"
    need = s["splits_needed"] if s["splits_needed"] is not None else ("–" if s["k"] < 2 else "&gt;10000")
    where = escape(v.get("test_set") or "")
    cls = _CLASS.get(v["word"], "")
    return (f"<tr><td class=\"left\">{escape(v.get('dataset') or '')}</td><td class=\"left\">{where}</td>"
            f"<td>{v['n_train']}</td><td class=\"left\">{escape(v['method_a'])} vs {escape(v['method_b'])}</td>"
            f"<td class=\"left {cls}\">{escape(v['word'])}</td><td>{points(s['mean'])}</td><td>{ci}</td>"
            f"<td class=\"left\">{escape(', '.join(points(d) for d in s['split_diffs']))}</td><td>{pw}</td>"
            f"<td>{det}</td><td>{need}</td><td>{escape(fmt_p(v['wilcoxon_p']))}</td></tr>")


def verdict_section(records: Iterable[Mapping[str, Any]], out_dir: str | Path) -> str:
    """The report's verdict block ("" when there is nothing to compare); writes ``verdict_splits.png`` into
    ``out_dir`` (the per-split differences of every comparison)."""
    records = list(records)
    vs = verdicts(records)
    sentences = verdict_sentences(records, computed=vs)
    if not sentences:
        return ""
    items = "".join(f"<li>{escape(t)}</li>" for t in sentences)
    html = [f'<div class="summary verdict"><b>Verdict</b> (computed; {escape(VERDICT_RULE)})<ul>{items}</ul></div>']
    if vs:
        png = split_differences(vs, Path(out_dir) / "verdict_splits.png", title="method vs baseline, split by split")
        html.append(
            "<details open><summary>The split-level evidence behind the verdict</summary>"
            '<div class="wide"><table><thead><tr><th>dataset</th><th>test set</th><th>N</th><th>comparison</th>'
            "<th>verdict</th><th>mean Δ Dice</th><th>95 % interval</th><th>per split</th><th>P(worse, new split)"
            "</th><th>detectable (80 %)</th><th>splits for ±2</th><th>case-level Wilcoxon p</th></tr></thead>"
            f"<tbody>{''.join(_row(v) for v in vs)}</tbody></table></div>"
            f'<div class="plots"><figure>{img_tag(png, "per-split differences")}<figcaption>{escape(png.name)}: '
            "each split's mean Dice difference (dots), their mean and 95 % interval (bar), in Dice points"
            "</figcaption></figure></div>"
            '<p class="note">A split is the labelled cases and the seed of one run. The interval is a t interval '
            "on the per-split mean differences (k − 1 degrees of freedom; a random-intercept model of the split). "
            "P(worse) is the chance that the method scores below the baseline on a new split (predictive t). "
            "“Detectable” is the effect these splits find with 80 % power at α 0.05, from their spread; "
            "“splits for ±2” how many would find ±2 Dice. The case-level Wilcoxon test compares these trained "
            "models on their test cases, not the methods.</p></details>")
    return "".join(html)


__all__ = ["verdict_section"]
