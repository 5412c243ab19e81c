"""The report's label-fidelity section: per generator, how faithful its pairs are next to the real ones.

Input: sweep records carrying a ``label_fidelity`` field (``segsynth.evaluate.fidelity.sweep_fidelity``).
Output: HTML with a table (mean over seeds of the synthetic and real-validation fidelity and their ratio), a
box plot per N of the per-pair scores of each generator beside the real validation pairs' (PNG beside the
report, embedded), and the montages of the least faithful pairs (image, mask, reference prediction).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from segsynth.evaluate.stats import mean_sd, ok_records

REAL = "real validation pairs"


def fidelity_runs(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, int], dict[int, Mapping[str, Any]]]:
    """{(dataset, method, N): {seed: label_fidelity}} for the finished runs that carry one (the field is the
    same for every test set of a run, so each run counts once)."""
    out: dict[tuple[str, str, int], dict[int, Mapping[str, Any]]] = {}
    for r in ok_records(list(records)):
        f = r.get("label_fidelity")
        if not isinstance(f, Mapping) or "synthetic_mean" not in f:
            continue
        key = (str(r.get("dataset", "")), str(r.get("method")), int(r.get("n_train", -1)))
        out.setdefault(key, {})[int(r.get("seed", 0))] = f
    return out


def _fmt(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _box_plot(runs: Mapping[tuple[str, str, int], Mapping[int, Mapping[str, Any]]], dataset: str,
              path: Path) -> Path | None:
    from matplotlib.figure import Figure

    from segsynth.experiments.plots import save_figure

    ns = sorted({n for d, _, n in runs if d == dataset})
    if not ns:
        return None
    fig = Figure(figsize=(max(4.0, 3.2 * len(ns)), 3.4))
    axes = fig.subplots(1, len(ns), squeeze=False)[0]
    for ax, n in zip(axes, ns):
        methods = [m for d, m, k in runs if d == dataset and k == n]
        real: dict[int, list[float]] = {}
        data, labels = [], []
        for m in methods:
            by_seed = runs[(dataset, m, n)]
            data.append([s for f in by_seed.values() for s in f.get("scores") or []])
            labels.append(m)
            for seed, f in by_seed.items():
                real.setdefault(seed, list(f.get("real_val_scores") or []))
        data.insert(0, [s for v in real.values() for s in v])
        labels.insert(0, "real val")
        keep = [(d, lab) for d, lab in zip(data, labels) if d]
        if keep:
            ax.boxplot([d for d, _ in keep], tick_labels=[lab for _, lab in keep], showmeans=True)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"N = {n}", fontsize=9)
        ax.set_ylabel("label fidelity (Dice of the augment model)", fontsize=8)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(f"{dataset}: label fidelity of synthetic pairs vs {REAL}", fontsize=9)
    return save_figure(fig, path)


def block_edges(fields: Sequence[Mapping[str, Any]]) -> str:
    """"1.42× at 8 px": the grid period whose synthetic / real ``grid_energy`` (mean over seeds) is furthest from
    1 (either way: blocks step across their edges, or a convolution after a nearest ×2 up-sampling steps inside
    its 2-pixel cells more than across them)."""
    ratios: dict[int, list[float]] = {}
    for f in fields:
        g = f.get("grid_energy") or {}
        for p, syn, real in zip(g.get("periods", []), g.get("synthetic", []), g.get("real", [])):
            if real and math.isfinite(syn) and math.isfinite(real):
                ratios.setdefault(int(p), []).append(syn / real)
    if not ratios:
        return "—"
    p, r = max(((p, sum(v) / len(v)) for p, v in ratios.items()), key=lambda t: abs(math.log(max(t[1], 1e-9))))
    return f"{r:.2f}× at {p} px"


def fidelity_section(records: Iterable[Mapping[str, Any]], out_dir: str | Path,
                     img_tag: Any = None) -> str:
    """The HTML section ("" when no record has a ``label_fidelity`` field); ``img_tag(path, alt)`` embeds a PNG."""
    runs = fidelity_runs(records)
    if not runs:
        return ""
    if img_tag is None:
        from segsynth.experiments.formatting import img_tag
    e = html.escape
    out = ['<h2>Label fidelity of the synthetic pairs</h2><p class="note">Each synthetic pair (image, mask) is '
           "segmented by the <code>augment</code> model of the same split (N real pairs); its label fidelity is "
           "the mean foreground Dice of that prediction against the mask the image was generated from. The same "
           f"number on the {REAL} (which also chose that model's weights) is the ceiling. Ratio = synthetic / "
           "real; pairs a generator draws wrongly teach a wrong image → label mapping. Block edges: how much "
           "more the synthetic images step across the lines of a P-pixel grid than the real training images "
           "(<code>grid_energy</code>, the P of 2-16 furthest from 1; about 1 = no blocks; above 1 = a decoder's "
           "coarse maps show through as blocks, below 1 = its cells step inside more than across).</p>"]
    out.append('<div class="wide"><table><thead><tr><th>dataset</th><th>method</th><th>N</th><th>seeds</th>'
               "<th>synthetic mean ± sd</th><th>synthetic median</th><th>real val mean</th><th>ratio</th>"
               "<th>pairs per run</th><th>block edges</th></tr></thead><tbody>")
    for (dataset, method, n), by_seed in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        fs = list(by_seed.values())

        def ms(key: str, fs: Sequence[Mapping[str, Any]] = fs) -> tuple[float, float]:
            return mean_sd(f.get(key) for f in fs)

        syn, syn_sd = ms("synthetic_mean")
        cell = _fmt(syn) + (f" ± {syn_sd:.3f}" if math.isfinite(syn_sd) else "")
        out.append(f"<tr><td>{e(dataset)}</td><td>{e(method)}</td><td>{n}</td><td>{len(fs)}</td><td>{cell}</td>"
                   f"<td>{_fmt(ms('synthetic_median')[0])}</td><td>{_fmt(ms('real_val_mean')[0])}</td>"
                   f"<td>{_fmt(ms('ratio')[0])}</td><td>{int(ms('n_synthetic')[0])}</td>"
                   f"<td>{e(block_edges(fs))}</td></tr>")
    out.append("</tbody></table></div>")
    out_dir = Path(out_dir)
    figs = []
    for dataset in sorted({d for d, _, _ in runs}):
        png = _box_plot(runs, dataset, out_dir / f"fidelity_{''.join(ch if ch.isalnum() else '_' for ch in dataset) or 'data'}.png")
        if png is not None:
            figs.append(f"<figure>{img_tag(png, 'label fidelity box plot')}<figcaption>{e(png.name)}: per-pair "
                        "label fidelity, all seeds (box: quartiles; line: median; triangle: mean)</figcaption></figure>")
    if figs:
        out.append(f'<div class="plots">{"".join(figs)}</div>')
    montages = [(m, n, seed, Path(f["montage"])) for (_, m, n), by_seed in runs.items() for seed, f in by_seed.items()
                if f.get("montage") and Path(f["montage"]).is_file()]
    if montages:
        out.append('<h3>Least faithful synthetic pairs</h3><div class="samples">')
        for m, n, seed, p in sorted(montages, key=lambda t: (t[0], t[1], t[2])):
            out.append(f"<figure>{img_tag(p, f'{m} least faithful pairs')}<figcaption>{e(m)}, N={n}, seed {seed}: "
                       "image, the mask it was generated from, the augment model's prediction</figcaption></figure>")
        out.append("</div>")
    return "".join(out)


__all__ = ["fidelity_runs", "fidelity_section"]
