"""brainSPADE's two stages together: BrainSpadeGenerator, streaming to a dataset, sampling speed."""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from segsynth.data.case import Case, DatasetInfo
from segsynth.data.partial_volume import pv_to_labels
from segsynth.errors import ConfigError, DataError
from segsynth.generators.brainspade.helpers import (
    draw_seeds,
    sampling_precision,
)
from segsynth.generators.brainspade.images import ImageGenerator
from segsynth.generators.brainspade.labels import LabelGenerator
from segsynth.generators.fit_loop import progress_bar
from segsynth.utils.files import write_json
from segsynth.utils.seed import derive_seed

log = logging.getLogger(__name__)


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route flat options to the label and the image generator (shared names go to both)."""
    label_names = set(inspect.signature(LabelGenerator.__init__).parameters) - {"self"}
    image_names = set(inspect.signature(ImageGenerator.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - label_names - image_names)
    if unknown:
        raise ConfigError(f"unknown brainSPADE generator options: {unknown}")
    label = {k: v for k, v in options.items() if k in label_names}
    image = {k: v for k, v in options.items() if k in image_names}
    return label, image


class BrainSpadeGenerator:
    """Label generator + image generator: fully synthetic (image, label) pairs.

    Options are those of ``LabelGenerator`` and ``ImageGenerator`` (flat; shared names such as
    ``spatial_dims``, ``num_classes``, ``pv_sigma`` go to both).
    """

    name: ClassVar[str] = "brainspade"

    def __init__(self, **options: Any):
        label_opts, image_opts = _split_options(options)
        self.options = dict(options)
        self.labels = LabelGenerator(**label_opts)
        self.images = ImageGenerator(**image_opts)

    @classmethod
    def from_parts(cls, labels: LabelGenerator, images: ImageGenerator) -> BrainSpadeGenerator:
        obj = cls.__new__(cls)
        obj.options = {}
        obj.labels, obj.images = labels, images
        return obj

    def fit(self, train: list[Case], *, val: list[Case] | None = None, unlabelled: list[Case] | None = None,
            device: torch.device | str = "cpu", seed: int = 0, checkpoint_dir: str | Path | None = None,
            checkpoint_every: int = 100) -> dict[str, Any]:
        """Fit the label generator, then the image generator (both resumable with ``checkpoint_dir``)."""
        stats_l = self.labels.fit(train, val=val, unlabelled=unlabelled, device=device, seed=derive_seed(seed, "L"),
                                  checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)
        stats_i = self.images.fit(train, val=val, unlabelled=unlabelled, device=device, seed=derive_seed(seed, "I"),
                                  checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every)
        return {"labels": stats_l, "images": stats_i}

    def sample_from_seeds(self, seeds: Sequence[int], *, masks: Sequence[Any] | None = None,
                          mask_ids: Sequence[str] | None = None, conditions: Any = None,
                          styles: dict[str, Any] | None = None, style_domain: str | None = None,
                          sampler: str | None = None, steps: int | None = None,
                          precision: str = "fp32") -> list[Case]:
        """One pair per seed: labels from the label generator (or ``masks``), image painted by SPADE.

        ``precision``: fp32, bf16 or auto (``helpers.sampling_precision``)."""
        seeds = [int(s) for s in seeds]
        with sampling_precision(self.images.device, precision):
            if masks is not None:
                pv = torch.stack([self.images.as_pv(m) for m in masks])
                label_recs = [{"source_mask": mid} for mid in (mask_ids or ["given"] * len(seeds))]
            else:
                pv, label_recs = self.labels.sample_pv(seeds, conditions=conditions, sampler=sampler, steps=steps)
                label_recs = [{"source_mask": "label-generator", **r} for r in label_recs]
            images, style_recs = self.images.generate(pv, seeds, styles=styles, style_domain=style_domain)
        labels = pv_to_labels(pv)
        out = []
        for i, s in enumerate(seeds):
            meta = {"method": self.name, **label_recs[i], **style_recs[i], "seed": s}
            out.append(Case(f"brainspade_{s}", images[i].numpy().astype(np.float32),
                            labels[i].numpy().astype(np.int64), meta))
        return out

    def sample(self, n: int, *, generator: torch.Generator, masks: list[Any] | None = None,
               styles: Sequence[Case] | None = None, style_domain: str | None = None,
               sampler: str | None = None, steps: int | None = None, precision: str = "fp32") -> list[Case]:
        style_bank = self.images.style_codes_of(styles) if styles else None
        if masks is not None:
            return self.sample_from_seeds(draw_seeds(len(masks), generator), masks=masks,
                                          mask_ids=[f"given:{i}" for i in range(len(masks))], styles=style_bank,
                                          style_domain=style_domain, precision=precision)
        seeds = draw_seeds(n, generator)
        bs = int(self.labels.config["sample_batch_size"])
        out: list[Case] = []
        for start in range(0, n, bs):
            out.extend(self.sample_from_seeds(seeds[start:start + bs], styles=style_bank, style_domain=style_domain,
                                              sampler=sampler, steps=steps, precision=precision))
        return out

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.labels.save(directory / "labels")
        self.images.save(directory / "images")
        write_json(directory / "brainspade.json", {"class": "BrainSpadeGenerator", "options": self.options})

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> BrainSpadeGenerator:
        directory = Path(directory)
        if not (directory / "brainspade.json").exists():
            raise DataError("not a saved brainSPADE generator (no brainspade.json)", directory)
        obj = cls.from_parts(LabelGenerator.load(directory / "labels", device),
                             ImageGenerator.load(directory / "images", device))
        import json

        obj.options = json.loads((directory / "brainspade.json").read_text()).get("options", {})
        return obj


# ============================================================================================ streaming to disk


class SpadePairs:
    """Pair ``i`` of a brainSPADE / SPADE synthesis: named ``syn{i:06d}``, made from ``derive_seed(seed,
    "sample", i)`` (and ``masks[i % len(masks)]`` when masks are given), in batches of ``batch_size``."""

    def __init__(self, generator: BrainSpadeGenerator | ImageGenerator, seed: int, batch_size: int = 16, *,
                 masks: Sequence[Any] | None = None, mask_ids: Sequence[str] | None = None,
                 style_bank: Any = None, style_domain: str | None = None, sampler: str | None = None,
                 steps: int | None = None, model: str | None = None, progress: bool = True,
                 precision: str = "fp32"):
        self.generator, self.seed, self.batch_size = generator, seed, batch_size
        self.precision = precision
        self.masks, self.mask_ids, self.style_bank, self.style_domain = masks, mask_ids, style_bank, style_domain
        self.sampler, self.steps, self.model, self.progress = sampler, steps, model, progress
        self.kind = "brainspade" if isinstance(generator, BrainSpadeGenerator) else "spade"

    def case_id(self, i: int) -> str:
        return f"syn{i:06d}"

    def __call__(self, indices: Sequence[int]) -> Iterator[Case]:
        generator, masks, mask_ids = self.generator, self.masks, self.mask_ids
        todo = list(indices)
        bar = progress_bar(len(todo), f"sampling {self.kind}", self.progress)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            seeds = [derive_seed(self.seed, "sample", i) for i in chunk]
            chunk_masks = None if masks is None else [masks[i % len(masks)] for i in chunk]
            chunk_ids = None if masks is None else [
                (mask_ids[i % len(masks)] if mask_ids is not None else f"given:{i % len(masks)}") for i in chunk]
            if isinstance(generator, BrainSpadeGenerator):
                cases = generator.sample_from_seeds(seeds, masks=chunk_masks, mask_ids=chunk_ids,
                                                    styles=self.style_bank, style_domain=self.style_domain,
                                                    sampler=self.sampler, steps=self.steps, precision=self.precision)
            else:
                pv = None if chunk_masks is None else torch.stack([generator.as_pv(m) for m in chunk_masks])
                cases = generator.sample_from_seeds(seeds, pv=pv, source_masks=chunk_ids, styles=self.style_bank,
                                                    style_domain=self.style_domain, precision=self.precision)
            for i, case in zip(chunk, cases):
                case.case_id = self.case_id(i)
                case.meta.update(index=i, model=self.model)
                yield case
            bar.update(len(chunk))
        bar.close()


def write_synthetic_dataset(generator: BrainSpadeGenerator | ImageGenerator, out_dir: str | Path, n: int, *,
                            info: DatasetInfo, seed: int = 0, batch_size: int = 16,
                            masks: Sequence[Any] | None = None, mask_ids: Sequence[str] | None = None,
                            styles: Sequence[Case] | None = None, style_domain: str | None = None,
                            sampler: str | None = None, steps: int | None = None, model: str | None = None,
                            fmt: str = "auto", overwrite: bool = False, progress: bool = True,
                            precision: str = "fp32", shards: int = 1, executor: str = "local",
                            **executor_options: Any) -> Path:
    """Stream ``n`` synthetic pairs into a dataset folder; a killed run resumes where it stopped.

    Sample ``i`` is named ``syn{i:06d}`` and made from seed ``derive_seed(seed, "sample", i)``, so the
    resumed samples are the ones an uninterrupted run would have written. Only one batch is in memory.
    With ``masks``, sample ``i`` uses ``masks[i % len(masks)]``. Each case's provenance (seed, model, style
    source, sampler, source mask) lands in ``provenance.jsonl`` and the dataset's own ``dataset.json``.
    ``precision``: fp32, bf16 or auto (bf16 where the device runs it fast; ``helpers.sampling_precision``).
    ``shards``/``executor``/``executor_options``: see ``segsynth.experiments.shards.write_pairs``.
    """
    from segsynth.experiments.shards import write_pairs

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        if (out_dir / "dataset.json").exists():
            log.info("%s is complete already", out_dir)
            return out_dir
    style_bank = None
    if styles:
        img_gen = generator.images if isinstance(generator, BrainSpadeGenerator) else generator
        style_bank = img_gen.style_codes_of(styles)
    maker = SpadePairs(generator, seed, batch_size, masks=masks, mask_ids=mask_ids, style_bank=style_bank,
                       style_domain=style_domain, sampler=sampler, steps=steps, model=model,
                       progress=progress and executor == "local", precision=precision)
    provenance = {"method": maker.kind, "model": model, "seed": seed, "n": n, "sampler": sampler, "steps": steps,
                  "precision": precision, "style_domain": style_domain,
                  "style_images": [s.case_id for s in styles] if styles else None,
                  "masks": len(masks) if masks is not None else None}
    return write_pairs(out_dir, info, n, maker, fmt=fmt, provenance=provenance,
                       name=f"{info.name} synthetic ({maker.kind})", overwrite=overwrite, shards=shards,
                       executor=executor, **executor_options)


def sampling_speed(gen: BrainSpadeGenerator, n: int, *, sampler: str, steps: int | None = None,
                   batch_size: int = 16, seed: int = 0, precision: str = "fp32") -> dict[str, Any]:
    """Pairs per second of ``gen`` with one sampler setting (label diffusion + decode + SPADE)."""
    t0 = time.perf_counter()
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        gen.sample_from_seeds([derive_seed(seed, "speed", done + j) for j in range(b)], sampler=sampler, steps=steps,
                              precision=precision)
        done += b
    sec = time.perf_counter() - t0
    return {"sampler": sampler, "precision": precision, "steps": len(gen.labels._scheduler(sampler, steps).timesteps),
            "n": n, "seconds": sec, "pairs_per_s": n / sec if sec > 0 else math.inf}
