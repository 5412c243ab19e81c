"""Which real : synthetic ratio? ``real_fraction`` of the shared mixer, chosen on validation pairs only.

    python benchmarks/real_fraction.py --method domain_rand --fractions 0.25,0.5,0.75,1.0 --seeds 2

One sweep per fraction (JSRT lungs at 64², N labelled, the same splits as benchmarks/genseg_benchmark.py), the
method stacked with classical augmentation (``augment_real=true``: real and synthetic pairs augmented alike).
The choice reads only each run's best validation Dice (``val_dice``, the model-selection number); test Dice is
not read here. Writes ``benchmarks/results/real_fraction_<method>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, UNET_FEATURES, machine, shared  # noqa: E402

from segsynth.data.preprocess import PreprocessSpec  # noqa: E402
from segsynth.experiments.sweep import SweepConfig, run_sweep  # noqa: E402
from segsynth.segment.train import TrainConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="jsrt_lungs")
    p.add_argument("--method", default="domain_rand")
    p.add_argument("--fractions", default="0.25,0.5,0.75,1.0")
    p.add_argument("--n", type=int, default=7)
    p.add_argument("--n-val", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--size", type=int, default=64)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    fractions = [float(f) for f in a.fractions.split(",")]
    rows = []
    t0 = time.perf_counter()
    for f in fractions:
        cfg = SweepConfig(data=shared(a.data), out=RESULTS / f"_real_fraction_{a.method}" / f"rf{f:g}_n{a.n}_steps{a.steps}",
                          methods=[a.method], n_values=[a.n], seeds=list(range(a.seeds)), n_val=a.n_val, n_test=2,
                          segmenter_kwargs={"features": UNET_FEATURES[2]}, spec=PreprocessSpec(size=a.size),
                          train=TrainConfig(steps=a.steps, batch_size=8, val_every=max(1, a.steps // 6),
                                            progress=False),
                          method_options={a.method: {"real_fraction": f, "augment_real": True}}, device="cpu",
                          report=False, fidelity=False, sample_predictions=0)
        recs = [r for r in run_sweep(cfg) if r.get("status") == "ok" and r["test_set"] == "in-domain"]
        val = [r["val_dice"] for r in recs]
        rows.append({"real_fraction": f, "val_dice": val, "val_mean": float(np.mean(val)),
                     "val_sd": float(np.std(val, ddof=1)) if len(val) > 1 else None,
                     "seconds": float(np.mean([r["seconds"] for r in recs]))})
        logging.info("real_fraction %.2f: validation Dice %s", f, [round(v, 4) for v in val])
    best = max(rows, key=lambda r: r["val_mean"])
    out = {"config": vars(a), "machine": machine(), "rows": rows, "chosen_on_validation": best["real_fraction"],
           "seconds": time.perf_counter() - t0}
    path = RESULTS / f"real_fraction_{a.method}.json"
    path.write_text(json.dumps(out, indent=1))
    from matplotlib.figure import Figure

    from segsynth.experiments.plots import save_figure

    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.subplots()
    ax.errorbar([r["real_fraction"] for r in rows], [r["val_mean"] for r in rows],
                yerr=[r["val_sd"] or 0 for r in rows], marker="o", capsize=3)
    ax.set_xlabel("real_fraction (share of real pairs per batch)")
    ax.set_ylabel("best validation Dice (mean ± sd over seeds)")
    ax.set_title(f"{a.method} + augmentation, {a.data} N={a.n}", fontsize=9)
    save_figure(fig, path.with_suffix(".png"))
    print(json.dumps({k: out[k] for k in ("rows", "chosen_on_validation", "seconds")}, indent=1))


if __name__ == "__main__":
    main()
