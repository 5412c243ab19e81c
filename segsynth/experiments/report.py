"""The sweep's HTML report (one self-contained file) and its plain-text Dice table.

Input: the records of ``results.jsonl`` (see ``segsynth.evaluate.stats``). Output: ``report.html`` with
the learning curves (PNG files beside it, also embedded as base64), per-N tables of mean ± sd over seeds
and 95% CIs, paired tests of every method against every other (test cases, each averaged over seeds, on the mean
foreground Dice; plus a seed-level t-test), per-class Dice, run time and peak memory, failed runs, and sample predictions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from segsynth.evaluate.stats import (
    GroupKey,
    compare_methods,
    group_key,
    mean_sd,
    ok_records,
    summarise_runs,
)
from segsynth.experiments.formatting import escape, fmt, fmt_p, fmt_pm, img_tag
from segsynth.experiments.plots import learning_curve
from segsynth.utils.device import compute_label
from segsynth.utils.files import atomic_path


def is_baseline(method: str) -> bool:
    """True for ``none`` and the classical augmentation baselines (``augment``, ``augment-rotate``, ...)."""
    return method == "none" or method.startswith("augment")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "x"


# ------------------------------------------------------------------------------------------- helpers


def _groups(records: Sequence[Mapping[str, Any]]) -> dict[GroupKey, list[Mapping[str, Any]]]:
    out: dict[GroupKey, list[Mapping[str, Any]]] = {}
    for r in records:
        out.setdefault(group_key(r), []).append(r)
    return out


def _class_names(records: Iterable[Mapping[str, Any]]) -> list[str]:
    labels: dict[int, str] = {}
    for r in records:
        for k, v in (r.get("labels") or {}).items():
            if int(k) != 0:
                labels.setdefault(int(k), str(v))
    if labels:
        return [labels[k] for k in sorted(labels)]
    for r in records:  # fall back to the per-case keys
        for c in r.get("per_case") or []:
            return list(c.get("dice", {}))
    return []


def _hd95_unit(records: Iterable[Mapping[str, Any]]) -> str:
    """ "mm" when every test case was measured with a physical spacing, "voxels" when none was."""
    units = {c.get("hd95_unit", "voxel") for r in records for c in r.get("per_case") or []}
    if units == {"mm"}:
        return "mm"
    return "voxels" if units <= {"voxel"} else "mm or voxels, mixed"


def _run_class_dice(record: Mapping[str, Any], name: str) -> float | None:
    """A run's Dice for one class: the mean over its test cases."""
    m, _ = mean_sd((c.get("dice") or {}).get(name) for c in record.get("per_case") or [])
    return m if math.isfinite(m) else None


def _external(gk: GroupKey) -> bool:
    """Whether the test set is another dataset (out of domain) rather than held-out cases of the same."""
    dataset, test_set, _ = gk
    return bool(test_set) and test_set not in (dataset, "in-domain", "held-out", "test")


def _group_title(gk: GroupKey) -> str:
    dataset, test_set, segmenter = gk
    parts = [dataset or "dataset"]
    parts.append(f"tested on {test_set} (out of domain)" if _external(gk) else "held-out test cases")
    if segmenter:
        parts.append(f"segmenter {segmenter}")
    return " · ".join(parts)


def _best(rows: Sequence[Mapping[str, Any]], methods: Iterable[str]) -> Mapping[str, Any] | None:
    allowed = set(methods)
    cands = [r for r in rows if r["method"] in allowed and math.isfinite(r["mean"])]
    return max(cands, key=lambda r: r["mean"]) if cands else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _sentence_at(
    gk: GroupKey,
    records: Sequence[Mapping[str, Any]],
    at_n: Sequence[Mapping[str, Any]],
    n: int,
    baseline: str,
) -> str:
    """One sentence: the best method at N against the baseline (or the runner-up when it is the baseline)."""
    best = max(at_n, key=lambda r: r["mean"])
    head = (
        f"with N={n}, <b>{escape(best['method'])}</b> reached a mean foreground Dice of "
        f"<b>{fmt_pm(best['mean'], best['sd'])}</b>"
    )
    others = [r for r in at_n if r["method"] != best["method"]]
    if not others:
        return head + f" (over {_plural(best['n_runs'], 'seed')}; no other method to compare with)"
    ref = next((r for r in others if r["method"] == baseline), None) or max(others, key=lambda r: r["mean"])
    cmp = compare_methods(records, best["method"], ref["method"], n, group=gk)
    return (
        head + f" vs {fmt_pm(ref['mean'], ref['sd'])} for <b>{escape(ref['method'])}</b> "
        f"(case level, these trained models, not the methods: Wilcoxon p{_p_text(cmp['wilcoxon_p'])}, t-test "
        f"p{_p_text(cmp['ttest_p'])}; {_plural(cmp['n'], 'test case')} over {_plural(cmp['n_seeds'], 'split')}; "
        "the verdict judges the methods)"
    )


def _summary_sentence(
    gk: GroupKey, records: Sequence[Mapping[str, Any]], dice_rows: Sequence[Mapping[str, Any]], baseline: str
) -> str:
    """ "On <dataset>, with N=…, <method> reached … vs … (p=…)", for the largest N at which at least two
    methods finished and, when different, the smallest (where extra data matters most)."""
    dataset = f"<b>{escape(gk[0] or 'this dataset')}</b>"
    if _external(gk):
        dataset += f" tested on <b>{escape(gk[1])}</b>"
    finished = [r for r in dice_rows if math.isfinite(r["mean"])]
    ns = sorted({r["n_train"] for r in finished})
    if not ns:
        return f"On {dataset}, no run finished."
    multi = [n for n in ns if sum(1 for r in finished if r["n_train"] == n) > 1] or [max(ns)]
    picks = [max(multi)] + ([min(multi)] if min(multi) != max(multi) else [])
    parts = [
        _sentence_at(gk, records, [r for r in finished if r["n_train"] == n], n, baseline) for n in picks
    ]
    text = f"On {dataset}, {parts[0]}."
    if len(parts) > 1:
        text += f" With the fewest labels, {parts[1]}."
    return text


def _p_text(p: float | None) -> str:
    """ "=0.012" or "&lt;0.001" (HTML) to follow a "p"."""
    s = fmt_p(p)
    return "&lt;0.001" if s == "<0.001" else f"={s}"


def _p_cell(res: Mapping[str, Any], key: str) -> str:
    p = res.get(key, math.nan)
    cls = ' class="sig"' if p is not None and math.isfinite(p) and p < 0.05 else ""
    title = f' title="{escape(res["reason"])}"' if res.get("reason") else ""
    return f"<td{cls}{title}>{escape(fmt_p(p))}</td>"


def _cmp_cells(res: Mapping[str, Any] | None) -> str:
    if res is None:
        return '<td class="muted center" colspan="3">–</td>'
    delta = f"{res['mean_diff']:+.3f}" if math.isfinite(res["mean_diff"]) else "–"
    return f"<td>{delta}</td>{_p_cell(res, 'wilcoxon_p')}{_p_cell(res, 'ttest_p')}"


# --------------------------------------------------------------------------------------- the report

_CSS = """
:root { --fg:#1d2329; --muted:#66707a; --line:#d9dee3; --head:#f3f5f7; --accent:#0b5fa5; --sig:#0a7a3d; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg);
       max-width: 1240px; margin: 2rem auto; padding: 0 1.25rem; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 .6rem; padding-bottom: .25rem; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; }
.meta, .muted, .note { color: var(--muted); }
.meta { font-size: .9rem; margin-bottom: 1rem; }
.summary { background: #eef5fb; border-left: 4px solid var(--accent); padding: .7rem 1rem; margin: 1rem 0; }
.summary p { margin: .2rem 0; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: .88rem; }
th, td { border-bottom: 1px solid var(--line); padding: .3rem .5rem; text-align: right; white-space: nowrap; }
th.left, td.left { text-align: left; }
th.center, td.center { text-align: center; }
.wide { overflow-x: auto; max-width: 100%; }
th { background: var(--head); font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.best { font-weight: 700; }
td.sig { color: var(--sig); font-weight: 600; }
td.failed, .failed { color: #b3261e; }
td.err { text-align: left; white-space: normal; max-width: 40rem; font-family: ui-monospace, monospace; font-size: .8rem; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
.plots figure { flex: 1 1 420px; max-width: 540px; }
.plots figure, .samples figure { margin: 0; }
.plots img { width: 100%; border: 1px solid var(--line); }
.samples { display: flex; flex-wrap: wrap; gap: 1rem; }
.samples img { max-width: 460px; width: 100%; border: 1px solid var(--line); }
figcaption { font-size: .85rem; color: var(--muted); }
.note { font-size: .85rem; max-width: 60rem; }
"""


def _runs_table(
    records: Sequence[Mapping[str, Any]],
    gk: GroupKey,
    n: int,
    dice_rows: Sequence[Mapping[str, Any]],
    hd_rows: Sequence[Mapping[str, Any]],
    baseline: str,
    hd_unit: str,
) -> str:
    rows = [r for r in dice_rows if r["n_train"] == n]
    hd = {r["method"]: r for r in hd_rows if r["n_train"] == n}
    best_mean = max((r["mean"] for r in rows if math.isfinite(r["mean"])), default=math.nan)
    best_base = _best(rows, [r["method"] for r in rows if is_baseline(r["method"])])
    have_baseline = any(r["method"] == baseline and r["n_runs"] for r in rows)
    base_name = best_base["method"] if best_base else None
    out = ['<div class="wide"><table><thead><tr>']
    out.append(
        "<th rowspan=2>method</th><th rowspan=2>runs</th><th rowspan=2>Dice<br>mean ± sd</th>"
        f"<th rowspan=2>Dice 95% CI</th><th rowspan=2>HD95 ({escape(hd_unit)})<br>mean ± sd</th>"
        f"<th colspan=3 class=center>vs {escape(baseline)}</th>"
        f"<th colspan=3 class=center>vs best baseline{f' ({escape(base_name)})' if base_name else ''}</th>"
        "<th rowspan=2>train s</th><th rowspan=2>run s</th><th rowspan=2>peak MB</th></tr><tr>"
        + "<th>ΔDice</th><th>Wilcoxon p</th><th>t p</th>" * 2
        + "</tr></thead><tbody>"
    )
    for r in rows:
        m = r["method"]
        runs = f"{r['n_runs']}"
        if r["n_failed"]:
            runs += f' <span class="failed">+{r["n_failed"]} failed</span>'
        if not r["n_runs"]:
            out.append(
                f'<tr><td>{escape(m)}</td><td>{runs}</td><td class="failed" colspan=12>all runs failed</td></tr>'
            )
            continue
        best_cls = ' class="best"' if math.isfinite(r["mean"]) and r["mean"] == best_mean else ""
        h = hd.get(m)
        vs_base = (
            compare_methods(records, m, baseline, n, group=gk) if have_baseline and m != baseline else None
        )
        vs_best = (
            compare_methods(records, m, base_name, n, group=gk) if base_name and m != base_name else None
        )
        out.append(
            f"<tr><td>{escape(m)}</td><td>{runs}</td><td{best_cls}>{fmt_pm(r['mean'], r['sd'])}</td>"
            f"<td>{_dice_ci(r['ci95_low'], r['ci95_high'])}</td>"
            f"<td>{fmt_pm(h['mean'], h['sd'], 2) if h else '–'}</td>"
            f"{_cmp_cells(vs_base)}{_cmp_cells(vs_best)}"
            f"<td>{fmt(r['train_seconds'], 1)}</td><td>{fmt(r['seconds'], 1)}</td>"
            f"<td>{fmt(r['peak_memory_mb'], 0)}</td></tr>"
        )
    out.append("</tbody></table></div>")
    return "".join(out)


def _pairwise_table(
    records: Sequence[Mapping[str, Any]], gk: GroupKey, n: int, methods: Sequence[str]
) -> str:
    if len(methods) < 2:
        return ""
    out = [
        '<div class="wide"><table><thead><tr><th>method A</th><th class=left>method B</th><th>cases</th><th>mean Dice A</th>'
        "<th>mean Dice B</th><th>Δ (A − B)</th><th>Δ 95% CI</th><th>Wilcoxon p</th><th>t-test p</th>"
        "<th>seed t-test p</th><th>note</th></tr></thead><tbody>"
    ]
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            res = compare_methods(records, a, b, n, group=gk)
            delta = f"{res['mean_diff']:+.3f}" if math.isfinite(res["mean_diff"]) else "–"
            out.append(
                f"<tr><td>{escape(a)}</td><td class=left>{escape(b)}</td><td>{res['n']}</td><td>{fmt(res['mean_a'])}</td>"
                f"<td>{fmt(res['mean_b'])}</td><td>{delta}</td>"
                f"<td>[{fmt(res['ci95_low'])}, {fmt(res['ci95_high'])}]</td>"
                f"{_p_cell(res, 'wilcoxon_p')}{_p_cell(res, 'ttest_p')}{_p_cell(res, 'seed_ttest_p')}"
                f'<td class="muted" style="text-align:left">{escape(res["reason"])}</td></tr>'
            )
    out.append("</tbody></table></div>")
    return "".join(out)


def _class_table(
    group_records: Sequence[Mapping[str, Any]], n: int, methods: Sequence[str], names: Sequence[str]
) -> str:
    if not names:
        return ""
    out = ['<div class="wide"><table><thead><tr><th>method</th>']
    out += [f"<th>{escape(name)}</th>" for name in names]
    out.append("</tr></thead><tbody>")
    for m in methods:
        runs = [
            r for r in ok_records(group_records) if r.get("method") == m and int(r.get("n_train", -1)) == n
        ]
        if not runs:
            continue
        cells = []
        for name in names:
            mean, sd = mean_sd(_run_class_dice(r, name) for r in runs)
            cells.append(f"<td>{fmt_pm(mean, sd)}</td>")
        out.append(f"<tr><td>{escape(m)}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _failed_table(group_records: Sequence[Mapping[str, Any]]) -> str:
    failed = [r for r in group_records if r.get("status", "ok") != "ok"]
    if not failed:
        return ""
    out = [
        '<h3 class="failed">Failed runs</h3><div class="wide"><table><thead><tr><th>method</th><th>N</th><th>seed</th>'
        "<th class=left>error</th></tr></thead><tbody>"
    ]
    for r in sorted(failed, key=lambda r: (str(r.get("method")), r.get("n_train", 0), r.get("seed", 0))):
        out.append(
            f"<tr><td>{escape(r.get('method', '?'))}</td><td>{escape(r.get('n_train', '?'))}</td>"
            f'<td>{escape(r.get("seed", "?"))}</td><td class="err">{escape(r.get("error", "unknown error"))}</td></tr>'
        )
    out.append("</tbody></table></div>")
    return "".join(out)


def _dice_ci(lo: float, hi: float) -> str:
    """A Dice CI clipped to [0, 1]; a clipped end is marked * (explained under "How to read this")."""
    def end(v: float, clipped: float) -> str:
        return f"{fmt(clipped)}*" if v is not None and math.isfinite(v) and v != clipped else fmt(v)
    ok = lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi)
    return f"[{end(lo, max(lo, 0.0))}, {end(hi, min(hi, 1.0))}]" if ok else f"[{fmt(lo)}, {fmt(hi)}]"


def _samples_section(sample_images: Sequence[str | Path] | Mapping[str, str | Path] | None) -> str:
    if not sample_images:
        return ""
    items = (
        [(str(k), Path(v)) for k, v in sample_images.items()]
        if isinstance(sample_images, Mapping)
        else [(Path(p).stem, Path(p)) for p in sample_images]
    )
    out = ['<h2>Sample predictions</h2><div class="samples">']
    for caption, path in items:
        if path.is_file():
            out.append(f"<figure>{img_tag(path, caption)}<figcaption>{escape(caption)}</figcaption></figure>")
        else:
            out.append(f'<figure><p class="failed">missing image: {escape(path)}</p></figure>')
    out.append("</div>")
    return "".join(out)


def _compute_meta(records: Sequence[Mapping[str, Any]]) -> str:
    """Where the runs were computed (``compute_description`` in each record), and a warning when they differ:
    seconds from different machines or thread counts are not comparable, and the kernels torch picks differ
    with both, so each step rounds differently and Dice moves (by points in a small run)."""
    counts = Counter(compute_label(r) or "machine not recorded" for r in ok_records(records))
    if len(counts) <= 1:
        return f"computed on {escape(next(iter(counts), 'no runs'))}"
    parts = ", ".join(f"{escape(k)}: {_plural(v, 'run')}" for k, v in counts.most_common())
    return (f'<span class="failed">computed on {len(counts)} different machines or thread counts ({parts}): '
            "seconds are not comparable between them, and Dice moves with them too (other kernels, other rounding)</span>")


def write_report(
    records: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    title: str,
    baseline: str = "none",
    sample_images: Sequence[str | Path] | Mapping[str, str | Path] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` (self-contained) and its learning-curve PNGs beside it.

    Args:
        records: sweep records (``results.jsonl`` rows); failed runs are listed, never fatal.
        out_dir: folder for ``report.html`` and the PNGs (created if missing).
        title: the page title.
        baseline: the reference method for the "vs baseline" columns and the summary sentence.
        sample_images: PNG/JPEG files to show as sample predictions, a list (captioned by file stem) or
            a ``{caption: path}`` mapping; embedded as base64.

    Returns:
        The path of ``report.html``.
    """
    records = list(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = _groups(records)
    multi = len(groups) > 1

    summaries: list[str] = []
    sections: list[str] = []
    for gk, grecs in groups.items():
        dice_rows = summarise_runs(grecs, "dice_mean")
        hd_rows = summarise_runs(grecs, "hd95_mean")
        methods = list(dict.fromkeys(r["method"] for r in dice_rows))
        # Baselines first (the reference method at the very front), then the rest in sweep order.
        methods.sort(key=lambda m: (m != baseline, not is_baseline(m)))
        summaries.append(f"<p>{_summary_sentence(gk, grecs, dice_rows, baseline)}</p>")
        suffix = f"_{_slug('_'.join(p for p in gk if p))}" if multi else ""
        hd_unit = _hd95_unit(ok_records(grecs))
        dice_png = learning_curve(
            dice_rows,
            out_dir / f"dice_curve{suffix}.png",
            ylabel="mean foreground Dice",
            title=f"Dice vs N — {_group_title(gk)}",
            methods=methods,
        )
        hd_png = learning_curve(
            hd_rows,
            out_dir / f"hd95_curve{suffix}.png",
            ylabel=f"mean foreground HD95 ({hd_unit})",
            title=f"HD95 vs N — {_group_title(gk)}",
            methods=methods,
            higher_is_better=False,
        )
        names = _class_names(grecs)
        sec = [f"<h2>{escape(_group_title(gk))}</h2>" if multi or gk[0] else "<h2>Results</h2>"]
        sec.append(
            '<div class="plots">'
            f"<figure>{img_tag(dice_png, 'Dice learning curve')}<figcaption>{escape(dice_png.name)}: mean "
            "foreground Dice vs N (mean ± sd over seeds; dots = single seeds)</figcaption></figure>"
            f"<figure>{img_tag(hd_png, 'HD95 learning curve')}<figcaption>{escape(hd_png.name)}: mean "
            f"foreground HD95 in {escape(hd_unit)} vs N (lower is better)</figcaption></figure></div>"
        )
        for n in sorted({r["n_train"] for r in dice_rows}):
            sec.append(f"<h3>N = {n} labelled training case{'s' if n != 1 else ''}</h3>")
            sec.append(_runs_table(grecs, gk, n, dice_rows, hd_rows, baseline, hd_unit))
            present = [
                m
                for m in methods
                if any(r["method"] == m and r["n_train"] == n and r["n_runs"] for r in dice_rows)
            ]
            pair_html = _pairwise_table(grecs, gk, n, present)
            if pair_html:
                sec.append(
                    f"<details open><summary>Every method vs every other (N={n})</summary>{pair_html}</details>"
                )
            class_html = _class_table(grecs, n, present, names)
            if class_html:
                sec.append(
                    f"<details{' open' if len(names) > 1 else ''}><summary>Per-class Dice (N={n}; mean ± sd "
                    f"over seeds of each run's mean over test cases)</summary>{class_html}</details>"
                )
        sec.append(_failed_table(grecs))
        sections.append("".join(sec))

    n_ok = len(ok_records(records))
    n_failed = len(records) - n_ok
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = f"{n_ok} finished run{'s' if n_ok != 1 else ''}"
    if n_failed:
        meta += f', <span class="failed">{n_failed} failed</span>'
    meta += f" · baseline: {escape(baseline)} · {_compute_meta(records)} · generated {when}"
    notes = (
        '<h2>How to read this</h2><p class="note">Dice and HD95 are computed per test case over the '
        "foreground classes (MONAI; both masks empty: Dice 1, HD95 0; one empty: Dice 0, HD95 missing and "
        "left out of HD95 means). Each run (method × N × seed) is summarised by its mean over test cases; "
        "tables show the mean ± sd of those run means over seeds and a t-based 95% confidence interval, "
        "clipped to Dice's range [0, 1] (with few seeds the t interval can reach past it; a clipped end is "
        "marked *). "
        "Paired tests compare two methods on the same (seed, test case) pairs using the case's mean "
        "foreground Dice: two-sided Wilcoxon signed-rank (zero differences dropped) and paired t-test (SciPy; column “t p”). "
        "Pairs from one trained model are not independent, so read p-values as a measure of consistency "
        "rather than an exact error rate, and look at the spread over seeds. p &lt; 0.05 is shown in green; "
        "“n/a” means the test cannot be computed (hover for the reason). “Best baseline” is the better of "
        "<code>none</code> and the <code>augment*</code> methods at that N.</p>"
    )
    from segsynth.experiments.fidelity_report import fidelity_section
    from segsynth.experiments.verdict_report import verdict_section

    verdict = verdict_section(records, out_dir)
    doc = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{escape(title)}</h1><div class="meta">{meta}</div>{verdict}'
        f'<div class="summary">{"".join(summaries) or "<p>No runs recorded.</p>"}</div>'
        f"{''.join(sections)}{fidelity_section(records, out_dir, img_tag)}{_samples_section(sample_images)}"
        f"{notes}</body></html>\n"
    )
    path = out_dir / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(doc, encoding="utf-8")
    return path


def format_table(records: Iterable[Mapping[str, Any]], metric: str = "dice_mean") -> str:
    """A plain-text table for the terminal: one line per method, one column per N, cells mean ± sd.

    Each comparison group (dataset, test set, segmenter) gets its own block; failed runs are counted in
    the cell (``[1 failed]``) and a combination with no finished run reads ``failed``.
    """
    records = list(records)
    blocks = []
    for gk, grecs in _groups(records).items():
        rows = summarise_runs(grecs, metric)
        ns = sorted({r["n_train"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        cell: dict[tuple[str, int], str] = {}
        for r in rows:
            if not r["n_runs"]:
                text = "failed"
            else:
                text = fmt_pm(r["mean"], r["sd"])
                if r["n_failed"]:
                    text += f" [{r['n_failed']} failed]"
            cell[(r["method"], r["n_train"])] = text
        header = ["method"] + [f"N={n}" for n in ns]
        body = [[m] + [cell.get((m, n), "-") for n in ns] for m in methods]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

        def line(cols: list[str], widths: list[int] = widths) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))
            )

        label = "mean foreground Dice" if metric == "dice_mean" else metric
        seeds = max((r["n_runs"] + r["n_failed"] for r in rows), default=0)
        title = f"{_group_title(gk)}: {label} (mean ± sd over {seeds} seed{'s' if seeds != 1 else ''})"
        rule = "-" * max(len(title), sum(widths) + 2 * (len(widths) - 1))
        blocks.append("\n".join([title, rule, line(header), *[line(b) for b in body]]))
    return "\n\n".join(blocks) if blocks else "(no runs)"


def report_from_jsonl(results: str | Path, out_dir: str | Path | None = None, **kwargs: Any) -> Path:
    """Convenience: read ``results.jsonl`` and write the report beside it (or into ``out_dir``)."""
    from segsynth.utils.files import read_jsonl

    results = Path(results)
    kwargs.setdefault("title", f"segsynth sweep — {results.parent.name}")
    return write_report(read_jsonl(results), out_dir or results.parent, **kwargs)


__all__ = ["format_table", "is_baseline", "report_from_jsonl", "write_report"]
