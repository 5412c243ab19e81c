"""Synthesis stacked with augmentation: real and synthetic pairs in one batch, each stream augmented alike.

Every generator method builds its segmenter's training source here, from its *raw* synthetic stream (a list
of generated ``Case`` objects, or a ``PairSource`` that renders pairs on the fly):

* the real pairs and the synthetic pairs go through the same classical augmentation
  (``segsynth.data.transforms.classical_augmentation``, what ``augment`` trains with): by default the
  synthetic stream is augmented exactly when the real one is (``augment_synthetic`` follows ``augment_real``);
* ``real_fraction`` of each batch is real, in expectation (``MixedSource`` draws every sample's stream);
* with ``min_fidelity``, synthetic pairs whose label fidelity (``segsynth.evaluate.fidelity``: the Dice of
  the ``augment`` reference segmenter's prediction on the image against the pair's mask) is below the
  threshold are dropped: filtered once for a list of cases, rejected and redrawn for an on-the-fly stream;
* with ``synthetic_until`` (a fraction of the run's steps), synthetic pairs are in the batches only up to
  that step and the rest of the run trains on the real pairs alone: pretraining on real + synthetic, then
  fine-tuning on the real pairs, in one run of the one loop (``PhasedSource``).

All randomness comes from the ``torch.Generator`` the training loop passes to ``draw`` (and checkpoints), so
a run is deterministic per seed and resumes exactly; the sources keep no state between draws.

Options: ``MixOptions`` (one shared parser, ``parse_mix_options``; each method passes its own defaults).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from segsynth.data.case import Case
from segsynth.errors import ConfigError, DataError
from segsynth.segment.sources import CaseSource, MixedSource, PairSource, PhasedSource, collate, prefetchable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MixOptions:
    """How a generator method mixes its synthetic pairs with the real ones (the module docstring says how).

    Mixing options, shared by every generator method (each passes its own defaults):
    ``real_fraction`` (0..1, the real share of each batch), ``augment_real`` (classical augmentation of the
    real pairs), ``augment_synthetic`` (None = as ``augment_real``), ``min_fidelity`` (None, or 0..1: drop
    synthetic pairs less faithful than this), ``aug_kind`` (the ``augment`` kind, default "combined"),
    ``aug_flip``, ``fidelity_tries`` (redraws per sample of an on-the-fly stream before the best-scoring draw
    is kept), ``synthetic_until`` (None = the whole run, or a fraction in (0, 1] of its steps: real pairs
    only after it).
    """

    real_fraction: float = 0.5
    augment_real: bool = False
    augment_synthetic: bool | None = None
    min_fidelity: float | None = None
    aug_kind: str = "combined"
    aug_flip: bool = False
    fidelity_tries: int = 8
    synthetic_until: float | None = None

    def __post_init__(self) -> None:
        rf = float(self.real_fraction)
        if not (math.isfinite(rf) and 0.0 <= rf <= 1.0):
            raise ConfigError(f"real_fraction must be in [0, 1], got {self.real_fraction!r}")
        if self.min_fidelity is not None and not 0.0 <= float(self.min_fidelity) <= 1.0:
            raise ConfigError(f"min_fidelity must be in [0, 1] or null, got {self.min_fidelity!r}")
        if self.synthetic_until is not None and not (math.isfinite(float(self.synthetic_until))
                                                     and 0.0 < float(self.synthetic_until) <= 1.0):
            raise ConfigError(f"synthetic_until must be in (0, 1] (a fraction of the run's steps) or null, "
                              f"got {self.synthetic_until!r}")
        if int(self.fidelity_tries) < 1:
            raise ConfigError(f"fidelity_tries must be >= 1, got {self.fidelity_tries!r}")
        from segsynth.data.transforms import AUGMENTATIONS

        if self.aug_kind not in AUGMENTATIONS:
            raise ConfigError(f"aug_kind {self.aug_kind!r} is not one of {', '.join(AUGMENTATIONS)}")

    @property
    def synthetic_augmented(self) -> bool:
        return self.augment_real if self.augment_synthetic is None else bool(self.augment_synthetic)

    def switch_step(self, steps: int) -> int | None:
        """The step from which a run of ``steps`` trains on the real pairs alone (the steps before it have
        synthetic pairs; at least 1), or None when every step has them."""
        if self.synthetic_until is None:
            return None
        switch = max(1, round(float(self.synthetic_until) * int(steps)))
        return switch if switch < int(steps) else None


MIX_OPTION_NAMES: frozenset[str] = frozenset(f.name for f in dataclasses.fields(MixOptions))


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"option {name} must be true or false, got {value!r}")


def parse_mix_options(options: Mapping[str, Any], defaults: MixOptions | None = None,
                      aliases: Mapping[str, str] | None = None) -> tuple[MixOptions, dict[str, Any]]:
    """Split a method's options into ``MixOptions`` (validated) and the rest (the method's own).

    Args:
        options: the method's options as given (``--method-opt genseg.real_fraction=0.3``).
        defaults: the method's defaults (e.g. ``MixOptions(augment_real=True)`` for ``domain_rand``).
        aliases: older option names of the method mapped to the shared ones (e.g.
            ``{"real_weight": "real_fraction"}``); giving both is an error.
    """
    base = defaults or MixOptions()
    aliases = dict(aliases or {})
    values: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in options.items():
        name = aliases.get(key, key)
        if name in MIX_OPTION_NAMES:
            if name in values:
                raise ConfigError(f"options {key!r} and {name!r} say the same thing: give one")
            values[name] = value
        else:
            rest[key] = value
    for name in ("augment_real", "aug_flip"):
        if name in values:
            values[name] = _bool(name, values[name])
    if values.get("augment_synthetic") is not None:
        values["augment_synthetic"] = _bool("augment_synthetic", values["augment_synthetic"])
    for name in ("real_fraction", "min_fidelity", "synthetic_until"):
        if values.get(name) is not None:
            try:
                values[name] = float(values[name])
            except (TypeError, ValueError) as e:
                raise ConfigError(f"option {name} must be a number, got {values[name]!r}") from e
    return dataclasses.replace(base, **values), rest


# ------------------------------------------------------------------------------------------- sources


class AugmentedSource:
    """PairSource: each sample of ``source`` goes through ``transform`` (``draw``/``apply``, as in CaseSource)."""

    def __init__(self, source: PairSource, transform: Any, num_classes: int):
        self.source = source
        self.transform = transform
        self.num_classes = int(num_classes)
        self.prefetchable = prefetchable(source)  # drawn ahead only when the wrapped stream may be

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.source.draw(batch_size, generator)
        xs, ys = [], []
        for xi, yi in zip(x, y):
            params = self.transform.draw(xi.shape[1:], generator)
            xi, yi = self.transform.apply(xi, yi, params, self.num_classes)
            xs.append(xi)
            ys.append(yi)
        return collate(xs, ys)


class FidelityFilter:
    """PairSource: samples of ``source`` whose label fidelity under ``reference`` is below ``threshold`` are
    redrawn (up to ``tries`` draws per sample; then the best-scoring draw is kept and counted in ``short``).
    ``statistics()`` (recorded in the training result as ``source_statistics``) says how often that happened."""

    stats_name = "min_fidelity"

    def __init__(self, source: PairSource, reference: torch.nn.Module, threshold: float, *, num_classes: int,
                 device: torch.device | str, patch_size: Sequence[int] | None = None, tries: int = 8):
        self.source = source
        self.reference = reference
        self.threshold = float(threshold)
        self.num_classes = int(num_classes)
        self.device = device
        self.patch_size = patch_size
        self.tries = int(tries)
        self.drawn = self.kept = self.short = 0  # statistics only; draws never depend on them

    def statistics(self) -> dict[str, Any]:
        """Samples asked for, how many reached the threshold, and draws per sample (batches a prefetch thread
        drew ahead of the last step are counted too)."""
        asked = self.kept + self.short
        return {"threshold": self.threshold, "samples": asked, "reached": self.kept, "short": self.short,
                "reached_fraction": self.kept / asked if asked else None,
                "draws_per_sample": self.drawn / asked if asked else None}

    def _scores(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        from segsynth.evaluate.fidelity import label_fidelity

        cases = [Case(f"s{i}", xi.numpy(), yi.numpy()) for i, (xi, yi) in enumerate(zip(x, y))]
        return label_fidelity(self.reference, cases, num_classes=self.num_classes, device=self.device,
                              patch_size=self.patch_size)

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        best: list[tuple[float, torch.Tensor, torch.Tensor] | None] = [None] * batch_size
        todo = list(range(batch_size))
        for _ in range(self.tries):
            if not todo:
                break
            x, y = self.source.draw(len(todo), generator)
            self.drawn += len(todo)
            left = []
            for slot, xi, yi, s in zip(todo, x, y, self._scores(x, y)):
                if best[slot] is None or s > best[slot][0]:
                    best[slot] = (s, xi, yi)
                if s < self.threshold:
                    left.append(slot)
            todo = left
        self.short += len(todo)
        self.kept += batch_size - len(todo)
        return collate([b[1] for b in best], [b[2] for b in best])  # type: ignore[index]


# ------------------------------------------------------------------------------------------- building


def filter_cases(cases: Sequence[Case], reference: torch.nn.Module, threshold: float, *, num_classes: int,
                 device: torch.device | str, patch_size: Sequence[int] | None = None
                 ) -> tuple[list[Case], list[float]]:
    """The cases whose label fidelity is >= ``threshold`` (in order), and every case's score."""
    from segsynth.evaluate.fidelity import label_fidelity

    scores = label_fidelity(reference, cases, num_classes=num_classes, device=device, patch_size=patch_size)
    return [c for c, s in zip(cases, scores) if s >= threshold], scores


def mix_reference(ctx: Any, reference: torch.nn.Module | None = None) -> torch.nn.Module:
    """The reference segmenter for ``min_fidelity``: the one given, else the ``augment`` model of the split
    (shared with the sweep's label-fidelity measurement through ``fidelity.reference_dir``)."""
    if reference is not None:
        return reference
    from segsynth.evaluate.fidelity import reference_dir, reference_segmenter

    return reference_segmenter(ctx, reference_dir(ctx))


def mixed_training_source(ctx: Any, synthetic: Sequence[Case] | PairSource, opts: MixOptions, *,
                          reference: torch.nn.Module | None = None) -> PairSource:
    """The training source of a generator method: real pairs + its synthetic pairs, mixed by ``opts``.

    Args:
        ctx: the run's ``MethodContext`` (train cases, info, train_config.patch_size, device, workdir).
        synthetic: generated pairs as a list of cases, or an on-the-fly ``PairSource`` (unaugmented).
        opts: ``MixOptions`` (usually from ``parse_mix_options``).
        reference: the segmenter that scores label fidelity when ``opts.min_fidelity`` is set (default: the
            split's ``augment`` model, trained once per sweep cell).
    """
    from segsynth.data.transforms import classical_augmentation

    k = ctx.info.num_classes
    patch = ctx.train_config.patch_size if ctx.train_config else None
    aug = classical_augmentation(opts.aug_kind, ctx.info.spatial_dims, flip=opts.aug_flip)
    real = CaseSource(ctx.train, transform=aug if opts.augment_real else None, patch_size=patch, num_classes=k)
    if opts.real_fraction >= 1.0:
        return real
    syn_aug = aug if opts.synthetic_augmented else None
    if isinstance(synthetic, Sequence):
        cases = list(synthetic)
        if opts.min_fidelity is not None:
            ref = mix_reference(ctx, reference)
            kept, scores = filter_cases(cases, ref, opts.min_fidelity, num_classes=k, device=ctx.device,
                                        patch_size=patch)
            log.info("min_fidelity %.2f: kept %d of %d synthetic pairs", opts.min_fidelity, len(kept), len(cases))
            if not kept:
                raise DataError(f"min_fidelity {opts.min_fidelity} drops every one of the {len(cases)} synthetic "
                                f"pairs (best label fidelity {max(scores, default=float('nan')):.3f})")
            cases = kept
        syn: PairSource = CaseSource(cases, transform=syn_aug, patch_size=patch, num_classes=k)
    else:
        syn = synthetic
        if opts.min_fidelity is not None:
            syn = FidelityFilter(syn, mix_reference(ctx, reference), opts.min_fidelity, num_classes=k,
                                 device=ctx.device, patch_size=patch, tries=opts.fidelity_tries)
        if syn_aug is not None:
            syn = AugmentedSource(syn, syn_aug, k)
    mixed: PairSource = syn if opts.real_fraction <= 0.0 else MixedSource(
        [(real, opts.real_fraction), (syn, 1.0 - opts.real_fraction)])
    steps = ctx.train_config.steps if ctx.train_config else None
    switch = opts.switch_step(steps) if steps is not None else None
    if switch is None:
        return mixed
    log.info("synthetic pairs in the first %d of %d steps, then the real pairs alone", switch, steps)
    return PhasedSource([(0, mixed), (switch, real)])


__all__ = ["MIX_OPTION_NAMES", "AugmentedSource", "FidelityFilter", "MixOptions", "filter_cases",
           "mix_reference", "mixed_training_source", "parse_mix_options"]
