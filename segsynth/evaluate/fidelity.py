"""Label fidelity of synthetic pairs: does the image show what its mask says?

A synthetic pair (image, mask) is segmented by a *reference* segmenter trained on the N real pairs (the
``augment`` model of the same split), and the mean foreground Dice of that prediction against the mask the
image was generated from is the pair's label fidelity. The same number on the real validation pairs is
the yardstick: a generator whose pairs score far below the real ones teaches a wrong image -> label mapping.
(The validation pairs also chose the reference's best weights, so their number is slightly optimistic; it
is the ceiling a faithful generator should approach.)

* ``label_fidelity(model, cases, num_classes=, device=)`` -> per-case Dice (``predict_many`` + ``case_metrics``).
* ``fidelity_summary(synthetic, real_val)`` -> means, median, ratio.
* ``reference_segmenter(ctx, directory, reuse=...)``: the ``augment`` model of a run's split, loaded from a
  saved folder when one exists, else trained once into ``directory`` (resumable) and saved there.
* ``draw_pairs(source, n, seed)``: synthetic pairs drawn from any ``PairSource`` as ``Case`` objects.
* ``method_fidelity(method, ctx, reference)``: the sweep's record field for a generator method.
* ``save_montage``: the least faithful pairs (image, mask, prediction) as one PNG.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segsynth.data.case import Case, DatasetInfo
from segsynth.evaluate.metrics import case_metrics
from segsynth.evaluate.quality import grid_report
from segsynth.segment.inference import predict, predict_many
from segsynth.utils.files import dir_lock
from segsynth.utils.seed import derive_seed, torch_generator

log = logging.getLogger(__name__)

REFERENCE_METHOD = "augment"


def _labels(num_classes: int) -> dict[int, str]:
    return {k: str(k) for k in range(int(num_classes))}


def label_fidelity(model: torch.nn.Module, cases: Sequence[Case], *, num_classes: int,
                   device: torch.device | str, patch_size: Sequence[int] | None = None) -> list[float]:
    """Per case, the mean foreground Dice of ``model``'s prediction on ``case.image`` against ``case.mask``.

    Args:
        model: the reference segmenter (trained on real pairs only).
        cases: labelled pairs, synthetic or real (each needs a mask).
        num_classes: classes including background.
        device: where the model runs.
        patch_size: sliding-window size for 3D (as in training), or None for whole images.

    Returns:
        One float in [0, 1] per case, in order (both masks empty for a class: Dice 1, see
        ``segsynth.evaluate.metrics``).
    """
    labels = _labels(num_classes)
    for c in cases:
        if c.mask is None:
            raise ValueError(f"case {c.case_id!r} has no mask: label fidelity needs (image, mask) pairs")
    preds = predict_many(model, [c.image for c in cases], patch_size=patch_size, device=device)
    return [float(case_metrics(pred, c.mask, labels)["dice_mean"]) for c, pred in zip(cases, preds)]


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], dtype=np.float64)


def fidelity_summary(synthetic_scores: Sequence[float], real_val_scores: Sequence[float]) -> dict[str, Any]:
    """``{"synthetic_mean", "synthetic_median", "real_val_mean", "ratio", "n_synthetic", "n_real"}``.

    ``ratio`` is synthetic_mean / real_val_mean (1 = the synthetic pairs are as faithful as real ones); NaN
    where a mean is undefined (no scores) or the real mean is 0.
    """
    s, r = _finite(synthetic_scores), _finite(real_val_scores)
    s_mean = float(s.mean()) if s.size else math.nan
    r_mean = float(r.mean()) if r.size else math.nan
    ratio = s_mean / r_mean if math.isfinite(s_mean) and math.isfinite(r_mean) and r_mean > 0 else math.nan
    return {"synthetic_mean": s_mean, "synthetic_median": float(np.median(s)) if s.size else math.nan,
            "real_val_mean": r_mean, "ratio": ratio, "n_synthetic": int(s.size), "n_real": int(r.size)}


# ------------------------------------------------------------------------------------- pairs from sources


def draw_pairs(source: Any, n: int, *, seed: int, batch_size: int = 8, prefix: str = "syn") -> list[Case]:
    """``n`` pairs drawn from a ``PairSource`` (deterministic in ``seed``) as ``Case`` objects."""
    g = torch_generator(derive_seed(seed, "fidelity-draw"))
    out: list[Case] = []
    while len(out) < n:
        x, y = source.draw(min(batch_size, n - len(out)), g)
        for xi, yi in zip(x, y):
            out.append(Case(f"{prefix}_{len(out):05d}", xi.float().numpy(), yi.long().numpy(),
                            {"fidelity_draw": len(out)}))
    return out


# ------------------------------------------------------------------------------------- reference segmenter


def load_reference(directory: str | Path, device: torch.device | str) -> torch.nn.Module | None:
    """A segmenter saved with ``save_segmenter`` in ``directory``, or None when none is there."""
    from segsynth.segment.model_io import load_segmenter

    directory = Path(directory)
    if not (directory / "model.json").exists() or not (directory / "model.safetensors").exists():
        return None
    model, _ = load_segmenter(directory, device)
    return model


def reference_dir(ctx: Any, options: dict[str, Any] | None = None) -> Path | None:
    """Where the reference of ``ctx``'s split is kept: ``<workdir's parent>/_fidelity_reference/<key>``.

    The key hashes what decides the reference (training and validation ids, seed, training config,
    segmenter, ``augment`` options), so every run of one sweep cell (all methods of one N and seed) shares
    one reference, and a different split never reuses it. None without ``ctx.workdir``.
    """
    if ctx.workdir is None:
        return None
    cfg = ctx.train_config
    key = derive_seed([c.case_id for c in ctx.train], [c.case_id for c in ctx.val], ctx.seed,
                      cfg.fingerprint() if cfg is not None else "", ctx.segmenter, sorted(ctx.segmenter_kwargs.items()),
                      sorted((options or {}).items()))
    return Path(ctx.workdir).parent / "_fidelity_reference" / f"{key:08x}"


def reference_segmenter(ctx: Any, directory: str | Path | None, *, reuse: Sequence[str | Path] = (),
                        options: dict[str, Any] | None = None) -> torch.nn.Module:
    """The ``augment`` segmenter of ``ctx``'s split (its N real pairs, its validation cases, its seed).

    The first of ``reuse`` (then ``directory/model``) that holds a saved model is loaded; otherwise an
    ``augment`` run is trained with ``ctx``'s training config into ``directory`` (checkpointed there, so a
    killed run resumes; a file lock keeps parallel runs from training it twice), saved to
    ``directory/model`` and its checkpoint removed. ``directory=None``: trained and kept in memory only.

    Args:
        ctx: a ``MethodContext`` (info, train, val, segmenter, train_config, seed, device).
        directory: where the reference is trained and kept.
        reuse: folders of already saved ``augment`` models of the same split (e.g. the sweep's own run).
        options: ``augment`` options (as the sweep's ``augment`` method gets them).
    """
    from segsynth.generators import get_method

    directory = Path(directory) if directory is not None else None
    for d in reuse:
        model = load_reference(d, ctx.device)
        if model is not None:
            log.info("label fidelity: reference segmenter from %s", d)
            return model
    opts = dict(options or {})
    if directory is None:
        log.info("label fidelity: training the reference %s segmenter", REFERENCE_METHOD)
        return get_method(REFERENCE_METHOD, **opts).run(dataclasses.replace(ctx, workdir=None, options=opts,
                                                                            hooks=[])).model
    with dir_lock(directory):  # parallel runs of one sweep cell (Ray) train it once
        model = load_reference(directory / "model", ctx.device)
        if model is not None:
            log.info("label fidelity: reference segmenter from %s", directory / "model")
            return model
        log.info("label fidelity: training the reference %s segmenter in %s", REFERENCE_METHOD, directory)
        result = get_method(REFERENCE_METHOD, **opts).run(dataclasses.replace(ctx, workdir=directory, options=opts,
                                                                              hooks=[]))
        save_reference(result, ctx, directory)
    return result.model


def save_reference(result: Any, ctx: Any, directory: str | Path) -> Path:
    """Save a trained ``augment`` run's segmenter as the reference in ``directory/model``."""
    from segsynth.segment.model_io import save_segmenter

    directory = Path(directory)
    save_segmenter(result.model, directory / "model", ctx.info, segmenter_kwargs=dict(ctx.segmenter_kwargs),
                   extra={"method": REFERENCE_METHOD, "val_dice": result.best_val_dice,
                          "train_ids": [c.case_id for c in ctx.train]})
    shutil.rmtree(directory / "checkpoint", ignore_errors=True)
    return directory / "model"


# ------------------------------------------------------------------------------------------- for the sweep


def makes_synthetic_pairs(method: Any) -> bool:
    """Whether a method offers a synthetic stream (``Method.makes_synthetic_pairs``; False for other objects)."""
    fn = getattr(method, "makes_synthetic_pairs", None)
    return bool(fn()) if callable(fn) else False


def synthetic_source_of(method: Any, ctx: Any) -> Any | None:
    """The method's stream of synthetic pairs (``Method.synthetic_source``), or None for methods without one."""
    fn = getattr(method, "synthetic_source", None)
    return fn(ctx) if callable(fn) else None


def grid_field(real: Sequence[Case], synthetic: Sequence[Case]) -> dict[str, Any]:
    """``{"grid_energy": ...}``: block artefacts of the synthetic images (``segsynth.evaluate.quality.grid_report``)
    against the real images of the same shape; ``{}`` when the synthetic images differ in shape or no real one
    matches them."""
    if not synthetic or any(c.image.shape != synthetic[0].image.shape for c in synthetic):
        return {}
    same = [c for c in real if c.image.shape == synthetic[0].image.shape]
    return {"grid_energy": grid_report(same, synthetic)} if same else {}


def method_fidelity(method: Any, ctx: Any, reference: torch.nn.Module, *, n_pairs: int = 100,
                    montage: str | Path | None = None, keep_scores: bool = True,
                    source: Any = None) -> dict[str, Any] | None:
    """The ``label_fidelity`` field of a sweep record, or None when ``method`` makes no synthetic pairs.

    ``n_pairs`` pairs are drawn from the method's synthetic stream as it trained on it (whole images, no
    patches; seeded by the run's seed), scored with ``reference`` and compared with ``ctx.val``. ``source``:
    that stream when the caller already has it.
    """
    t0 = time.perf_counter()
    cfg = ctx.train_config
    whole = dataclasses.replace(ctx, train_config=dataclasses.replace(cfg, patch_size=None)) if cfg else ctx
    source = source if source is not None else synthetic_source_of(method, whole)
    if source is None:
        return None
    patch = cfg.patch_size if cfg else None
    k = ctx.info.num_classes
    pairs = draw_pairs(source, n_pairs, seed=ctx.seed, prefix=f"{getattr(method, 'name', 'syn')}")
    syn = label_fidelity(reference, pairs, num_classes=k, device=ctx.device, patch_size=patch)
    real = label_fidelity(reference, ctx.val, num_classes=k, device=ctx.device, patch_size=patch) if ctx.val else []
    out: dict[str, Any] = {**fidelity_summary(syn, real), "reference": REFERENCE_METHOD}
    out.update(grid_field(ctx.train or [], pairs))
    if keep_scores:
        out["scores"] = [round(s, 4) for s in syn]
        out["real_val_scores"] = [round(s, 4) for s in real]
    if montage is not None and pairs:
        out["montage"] = str(save_montage(reference, pairs, syn, montage, num_classes=k, device=ctx.device,
                                          patch_size=patch, title=f"{getattr(method, 'name', '')}: least faithful "
                                                                  "synthetic pairs"))
    out["seconds"] = time.perf_counter() - t0
    return out


def sweep_fidelity(method: Any, ctx: Any, result: Any, *, out: str | Path, augment_options: dict[str, Any],
                   n_pairs: int = 100, montage_name: str | None = None) -> dict[str, Any] | None:
    """The sweep's label-fidelity step after a run (``segsynth.experiments.sweep``, ``--fidelity``).

    * The ``augment`` run of a cell *is* the reference of that cell: its model is saved to
      ``reference_dir(ctx)`` (no extra training when ``augment`` runs before the generators, as in
      ``--methods none,augment,genseg``).
    * A generator method (``synthetic_source`` not None) gets the ``label_fidelity`` field: its pairs scored
      by that reference, loaded, or trained once per (N, seed) into ``<out>/runs/_fidelity_reference/``
      when the sweep has no finished ``augment`` run of the cell. With ``montage_name`` a montage of its
      least faithful pairs is written to ``<out>/fidelity/<montage_name>.png``.
    Other methods: None. ``seconds`` in the field counts the reference training when it happened here.
    """
    t0 = time.perf_counter()
    ref_ctx = dataclasses.replace(ctx, options=dict(augment_options))
    directory = reference_dir(ref_ctx, augment_options)
    if getattr(method, "name", None) == REFERENCE_METHOD:
        if directory is not None and not (directory / "model" / "model.json").exists():
            with dir_lock(directory):
                save_reference(result, ctx, directory)
        return None
    whole = ctx
    if ctx.train_config is not None:
        whole = dataclasses.replace(ctx, train_config=dataclasses.replace(ctx.train_config, patch_size=None))
    source = synthetic_source_of(method, whole)
    if source is None:
        return None
    reference = reference_segmenter(ref_ctx, directory, options=augment_options)
    png = Path(out) / "fidelity" / f"{montage_name}.png" if montage_name else None
    field = method_fidelity(method, ctx, reference, n_pairs=n_pairs, montage=png, source=source)
    if field is not None:
        field["seconds"] = time.perf_counter() - t0
    return field


# ------------------------------------------------------------------------------------------------ montage


def _display(image: np.ndarray) -> np.ndarray:
    img = np.moveaxis(image, 0, -1) if image.shape[0] in (1, 3) else image
    if img.shape[-1] == 1:
        img = img[..., 0]
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def save_montage(model: torch.nn.Module, cases: Sequence[Case], scores: Sequence[float], path: str | Path, *,
                 num_classes: int, device: torch.device | str, patch_size: Sequence[int] | None = None,
                 k: int = 6, title: str = "") -> Path:
    """PNG with one row per least faithful pair (lowest ``scores``): image, its mask, the reference's prediction."""
    from matplotlib.figure import Figure

    from segsynth.experiments.overlays import middle_slice
    from segsynth.experiments.plots import save_figure

    order = sorted(range(len(cases)), key=lambda i: scores[i])[:k]
    fig = Figure(figsize=(6.0, 2.0 * max(1, len(order))))
    axes = fig.subplots(max(1, len(order)), 3, squeeze=False)
    for row, i in enumerate(order):
        c = cases[i]
        pred = predict(model, c.image, num_classes, patch_size=patch_size, device=device)
        image, mask, pred = middle_slice(np.asarray(c.image), np.asarray(c.mask), pred)
        img = _display(image)
        for col, (arr, name) in enumerate(((img, "image"), (mask, "mask (generated from)"),
                                           (pred, f"prediction, Dice {scores[i]:.2f}"))):
            ax = axes[row][col]
            if col == 0:
                ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None)
            else:
                ax.imshow(arr, cmap="viridis", vmin=0, vmax=max(1, num_classes - 1), interpolation="nearest")
            ax.set_title(f"{c.case_id}: {name}" if col == 0 else name, fontsize=7)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=80)


# ------------------------------------------------------------------------------------------------- audit


def audit_fidelity(synthetic: Sequence[Case], real: Sequence[Case], info: DatasetInfo, *, out: str | Path,
                   model_dir: str | Path | None = None, device: torch.device | str = "cpu", seed: int = 0,
                   n_val: int = 2, train_config: Any = None, segmenter: str = "unet",
                   patch_size: Sequence[int] | None = None) -> dict[str, Any]:
    """Label fidelity of a synthetic dataset: per pair and summarised, written to ``out/fidelity.json``.

    With ``model_dir`` (a saved segmenter, e.g. ``segsynth train --method augment``) that model is the
    reference and every labelled case of ``real`` is a real yardstick; without it an ``augment`` segmenter is
    trained on ``real`` minus ``n_val`` cases (kept in ``out/reference``) and those ``n_val`` are the yardstick.
    """
    from segsynth.data.splits import split_cases
    from segsynth.errors import DataError
    from segsynth.generators.base import MethodContext
    from segsynth.segment.train import TrainConfig
    from segsynth.utils.device import resolve_device
    from segsynth.utils.files import write_json

    out = Path(out)
    dev = resolve_device(device)
    labelled = [c for c in real if c.mask is not None]
    syn = [c for c in synthetic if c.mask is not None]
    if not syn:
        raise DataError("the synthetic dataset has no labelled pairs")
    if not labelled:
        raise DataError("the real dataset has no labelled cases")
    k = info.num_classes
    if model_dir is not None:
        reference = load_reference(model_dir, dev)
        if reference is None:
            raise DataError("no saved segmenter here (model.json + model.safetensors)", model_dir)
        yardstick = labelled
    else:
        units = len({str(c.meta.get("volume_id", c.case_id)) for c in labelled})
        if units <= n_val:
            raise DataError(f"{units} labelled real cases (or volumes): need more than --n-val {n_val} to train "
                            "a reference segmenter")
        split = split_cases(labelled, n_train=units - n_val, n_val=n_val, seed=seed, n_test=0)
        cfg = train_config or TrainConfig(seed=seed, patch_size=tuple(patch_size) if patch_size else None)
        ctx = MethodContext(info=info, train=split.train, val=split.val, segmenter=segmenter, train_config=cfg,
                            seed=seed, device=dev)
        reference = reference_segmenter(ctx, out / "reference")
        yardstick = split.val
    syn_scores = label_fidelity(reference, syn, num_classes=k, device=dev, patch_size=patch_size)
    real_scores = label_fidelity(reference, yardstick, num_classes=k, device=dev, patch_size=patch_size)
    summary = fidelity_summary(syn_scores, real_scores)
    montage = save_montage(reference, syn, syn_scores, out / "fidelity_least_faithful.png", num_classes=k,
                           device=dev, patch_size=patch_size, title="least faithful synthetic pairs")
    result = {**summary, "reference": str(model_dir) if model_dir else str(out / "reference" / "model"),
              "montage": str(montage), **grid_field(labelled, syn),
              "pairs": [{"case_id": c.case_id, "dice": s} for c, s in zip(syn, syn_scores)],
              "real": [{"case_id": c.case_id, "dice": s} for c, s in zip(yardstick, real_scores)]}
    write_json(out / "fidelity.json", result)
    return result


def format_fidelity(summary: dict[str, Any]) -> str:
    """One line for the terminal."""
    return (f"label fidelity: synthetic {summary['synthetic_mean']:.3f} (median {summary['synthetic_median']:.3f}, "
            f"{summary['n_synthetic']} pairs) vs real validation {summary['real_val_mean']:.3f} "
            f"({summary['n_real']} cases): ratio {summary['ratio']:.2f}" + _grid_text(summary))


def _grid_text(summary: dict[str, Any]) -> str:
    g = summary.get("grid_energy")
    if not g or not g.get("periods"):
        return ""
    cells = ", ".join(f"{p} px {s:.2f} ({r:.2f})" for p, s, r in zip(g["periods"], g["synthetic"], g["real"]))
    return f"\n  grid energy, synthetic (real), 1 = no blocks: {cells}"


#: label fidelity ratio (synthetic / real validation) below which generated pairs are called unfaithful; issue 11's
#: target for a generator worth using is 90 % of the real pairs' fidelity
FAITHFUL_RATIO = 0.9


def fidelity_advice(summary: dict[str, Any], method: str | None = None) -> str | None:
    """What the fidelity numbers mean for a user, computed from them: None when the pairs are about as faithful as
    real ones (ratio in [0.9, 1.1]). ``method``: the GenSeg sweep method that made the pairs, for its options."""
    ratio = float(summary["ratio"])
    if ratio < FAITHFUL_RATIO:
        longer = f" (--method-opt {method}.pretrain_steps=N)" if method else ""
        return (f"the generated images show their masks less clearly than real images do (ratio {ratio:.2f} < "
                f"{FAITHFUL_RATIO:.2f}), so they teach a wrong image-to-label mapping and usually hurt: train the "
                f"generator longer{longer} or drop the least faithful pairs (--method-opt "
                f"{method or 'METHOD'}.min_fidelity=0.5 in a sweep)")
    if ratio > 1.0 / FAITHFUL_RATIO:
        return (f"the generated images are easier to segment than real ones (ratio {ratio:.2f}): they may be too "
                f"clean to teach what the real images need")
    return None


__all__ = ["FAITHFUL_RATIO", "audit_fidelity", "draw_pairs", "fidelity_advice", "fidelity_summary", "format_fidelity", "label_fidelity",
           "load_reference", "makes_synthetic_pairs", "method_fidelity", "reference_dir", "reference_segmenter", "save_montage", "save_reference",
           "sweep_fidelity", "synthetic_source_of"]
