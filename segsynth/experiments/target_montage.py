"""The montage of a target-domain run (methods with ``montage_cases``, e.g. ``spade_target``): what the sweep shows.

Columns are examples; rows, top to bottom:

* source (labelled) pairs: image, mask;
* target images (the deployment site's, unlabelled); for a generator, each is the style source of the
  synthetic pair below it;
* synthetic pairs painted in that target image's style: image, mask (generator methods);
* the trained segmenter's prediction on the target image above (methods that return a model: FixMatch on the
  target images, and its combinations).

3D cases show the slice with the most foreground (the middle slice for target images).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segsynth.data.case import Case


def _slice(a: np.ndarray, mask: np.ndarray | None, spatial_dims: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A 2D view: the image (C, H, W) and mask (H, W) of the slice with most foreground (3D), else themselves."""
    if spatial_dims == 2:
        return a, mask
    k = int(np.argmax((mask > 0).reshape(-1, mask.shape[-1]).sum(0))) if mask is not None else a.shape[-1] // 2
    return a[..., k], (mask[..., k] if mask is not None else None)


def _pick(synthetic: Sequence[Case], target: Sequence[Case], k: int) -> tuple[list[Case], list[Case]]:
    """Up to k synthetic pairs with distinct style sources among the target images (fullest masks first), and
    those target images in the same order; without synthetic pairs, the first k target images."""
    by_id = {t.case_id: t for t in target}
    chosen: list[Case] = []
    styles: list[Case] = []
    for c in sorted(synthetic, key=lambda c: -int((np.asarray(c.mask) > 0).sum())):
        t = by_id.get(str(c.meta.get("style_source")))
        if t is not None and all(t.case_id != s.case_id for s in styles):
            chosen.append(c)
            styles.append(t)
        if len(chosen) == k:
            break
    if not chosen:
        styles = list(target[:k])
    return chosen, styles


def save_target_montage(parts: dict[str, Any], path: str | Path, *, spatial_dims: int, title: str = "", k: int = 6,
                        device: Any = "cpu", patch_size: Sequence[int] | None = None) -> Path:
    """Draw ``parts`` (``montage_cases`` of a target method: ``source``, ``target``, ``synthetic``, ``model``)
    as one PNG at ``path``."""
    from matplotlib.figure import Figure

    from segsynth.evaluate.fidelity import _display
    from segsynth.experiments.plots import save_figure

    source = sorted(parts.get("source") or [], key=lambda c: -int((np.asarray(c.mask) > 0).sum()))[:k]
    synthetic, target = _pick(parts.get("synthetic") or [], parts.get("target") or [], k)
    model = parts.get("model")
    preds: list[np.ndarray] = []
    if model is not None and target:
        from segsynth.segment.inference import predict_many

        preds = predict_many(model, [t.image for t in target], patch_size=patch_size, device=device)
    rows: list[tuple[str, list[tuple[np.ndarray, str]]]] = []

    def images_and_masks(cases: Sequence[Case], who: str) -> None:
        views = [_slice(np.asarray(c.image), np.asarray(c.mask), spatial_dims) for c in cases]
        rows.append((f"{who} image", [(_display(v[0]), "image") for v in views]))
        rows.append((f"{who} mask", [(v[1], "mask") for v in views]))

    if source:
        images_and_masks(source, "source")
    if target:
        rows.append(("target (style)", [(_display(_slice(np.asarray(t.image), None, spatial_dims)[0]), "image")
                                      for t in target]))
    if synthetic:
        images_and_masks(synthetic, "synthetic")
    if preds:
        rows.append(("prediction on it", [(p if spatial_dims == 2 else p[..., p.shape[-1] // 2], "mask") for p in preds]))
    masks = [a for _, row in rows for a, kind in row if kind == "mask"]
    kmax = max(1, max((int(np.max(m)) for m in masks), default=1))
    cols = max(1, max(len(row) for _, row in rows)) if rows else 1
    fig = Figure(figsize=(1.5 * cols, 1.5 * max(1, len(rows)) + 0.4))
    axes = fig.subplots(max(1, len(rows)), cols, squeeze=False)
    for r, (label, row) in enumerate(rows):
        for j in range(cols):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row):
                ax.axis("off")
                continue
            a, kind = row[j]
            if kind == "image":
                ax.imshow(a, cmap="gray" if a.ndim == 2 else None)
            else:
                ax.imshow(a, cmap="viridis", vmin=0, vmax=kmax, interpolation="nearest")
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    said = ["source pairs"] * bool(source) + ["target images"] * bool(target)
    said += ["synthetic pairs in the style of the target image above"] * bool(synthetic)
    said += ["the segmenter's prediction on the target image"] * bool(preds)
    fig.suptitle((title or "target images, pairs painted in their style, source pairs")
                 + f"\nrows: {'; '.join(said)}", fontsize=8)
    return save_figure(fig, path, dpi=90)


__all__ = ["save_target_montage"]
