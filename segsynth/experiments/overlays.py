"""Sample-prediction pictures: image with ground truth and prediction contours, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segsynth.utils.files import atomic_path


def middle_slice(image: np.ndarray, mask: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For 3D, the slice (last axis) with the most ground-truth foreground; 2D passes through."""
    if mask.ndim == 2:
        return image, mask, pred
    k = int(np.argmax((mask > 0).reshape(-1, mask.shape[-1]).sum(0)))
    return image[..., k], mask[..., k], pred[..., k]


def save_overlay(image: np.ndarray, mask: np.ndarray, pred: np.ndarray, path: str | Path, title: str = "",
                 labels: dict[int, str] | None = None) -> Path:
    """Write a PNG: the image, ground truth (left) and prediction (right) as coloured outlines, with a legend
    naming the class of each colour (``labels``: class id -> name; default "class k")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, mask, pred = middle_slice(image, mask, pred)
    img = np.moveaxis(image, 0, -1) if image.shape[0] in (1, 3) else image
    if img.shape[-1] == 1:
        img = img[..., 0]
    lo, hi = np.percentile(img, [1, 99])
    img = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(5, 3.0), dpi=90)
    k = int(max(mask.max(), pred.max(), max(labels or {0: ""}), 1))
    colours = [plt.get_cmap("autumn")(i / max(1, k - 1)) for i in range(k)]  # class c -> colours[c - 1]
    for ax, lab, name in ((axes[0], mask, "ground truth"), (axes[1], pred, "prediction")):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        for c in range(1, k + 1):  # one outline per class (a 0 -> 2 edge would otherwise draw both colours)
            if (lab == c).any():
                ax.contour((lab == c).astype(np.float32), levels=[0.5], colors=[colours[c - 1]], linewidths=1.0)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    names = labels or {}
    handles = [Line2D([], [], color=colours[c - 1], lw=2, label=str(names.get(c, f"class {c}"))) for c in range(1, k + 1)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
