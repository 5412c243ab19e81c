"""Domain randomisation (SynthSeg's recipe): label maps -> images with random appearance.

From a label map, a training image is made by (``DomainRandomizer``):

1. a random spatial transform of the labels (affine + elastic; labels warped one-hot + argmax);
2. the background split into a few random smooth regions (``background_classes``) so that it has texture
   (SynthSeg's label maps have every structure of the head; ours have only the target classes);
3. per label (and background region) a Gaussian intensity with a random mean and a random deviation, drawn
   independently per channel;
4. blur, a smooth multiplicative bias field, a random gamma, a random lower resolution (down-sampled and
   up-sampled again) and Gaussian noise;
5. intensities normalised like the target data ("zscore" or "unit").

Every random choice is drawn first (``draw`` returns a JSON-serialisable dict) and applied after
(``apply``), so any image can be made again from its record.

Uses: the ``domain_rand`` sweep method (DR images mixed with the real pairs, or DR only with
``real_weight=0``), ``DomainRandSource`` as a PairSource for pretraining (see ``transfer.py``), and
``DomainRandomization`` as a SyntheticGenerator that writes datasets to disk.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from safetensors.torch import load_file, save_file

from segsynth.data.case import Case
from segsynth.data.transforms import RandomSpatial, warp_labels
from segsynth.errors import ConfigError, DataError
from segsynth.generators.base import Method, MethodContext
from segsynth.utils.files import atomic_path, write_json
from segsynth.utils.labels import class_argmax
from segsynth.utils.seed import derive_seed, torch_generator


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g).item())


def _seed(g: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (), generator=g))


def _smooth_field(shape: Sequence[int], channels: int, points: int, seed: int) -> torch.Tensor:
    """(channels, *shape) smooth random field: N(0, 1) on a coarse grid, up-sampled."""
    nd = len(shape)
    coarse = torch.randn((1, channels) + (points,) * nd, generator=torch_generator(seed))
    mode = "bicubic" if nd == 2 else "trilinear"
    return F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)[0]


@dataclass
class DomainRandomizer:
    """SynthSeg-style generative model of images given labels (all ranges are uniform unless said).

    Args:
        channels: image channels to make (each channel draws its own intensities).
        mean_range: range of the per-label mean intensity (before normalisation).
        std_range: range of the per-label intensity deviation.
        background_classes: random smooth regions the background is split into (1 = plain background).
        rotate_deg, scale, translate, elastic_alpha: random spatial transform of the labels (see
            ``segsynth.data.transforms.RandomSpatial``; elastic in normalised units).
        blur_sigma: range of the Gaussian blur sigma, in voxels.
        bias_std: deviation of the log bias field (multiplicative, smooth); 0 = off.
        bias_points: control points per axis of the bias field.
        gamma_std: deviation of log(gamma) for a random gamma on [0, 1]-scaled intensities.
        resolution: range of the down-sampling factor that simulates a lower acquisition resolution.
        noise_std: range of the additive Gaussian noise deviation (on the [0, 1] scale).
        normalise: "zscore" or "unit": match how the real images were normalised.
    """

    channels: int = 1
    mean_range: tuple[float, float] = (0.0, 1.0)
    std_range: tuple[float, float] = (0.0, 0.1)
    background_classes: int = 3
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.05
    elastic_alpha: float = 0.03
    blur_sigma: tuple[float, float] = (0.0, 1.0)
    bias_std: float = 0.3
    bias_points: int = 4
    gamma_std: float = 0.25
    resolution: tuple[float, float] = (1.0, 2.0)
    noise_std: tuple[float, float] = (0.0, 0.05)
    normalise: str = "zscore"

    def __post_init__(self) -> None:
        if self.normalise not in ("zscore", "unit"):
            raise ConfigError(f"domain randomisation normalise must be 'zscore' or 'unit', got {self.normalise!r}")
        if self.background_classes < 1 or self.channels < 1:
            raise ConfigError("background_classes and channels must be >= 1")
        if self.resolution[0] < 1.0:
            raise ConfigError(f"resolution factors must be >= 1 (down-sampling), got {self.resolution}")

    def spatial(self) -> RandomSpatial:
        return RandomSpatial(rotate_deg=self.rotate_deg, scale=tuple(self.scale), translate=self.translate,
                             elastic_alpha=self.elastic_alpha)

    def draw(self, spatial_shape: Sequence[int], num_classes: int, generator: torch.Generator) -> dict[str, Any]:
        """All random choices for one image of labels with ``num_classes`` classes."""
        n_int = num_classes - 1 + self.background_classes  # foreground labels + background regions
        g = generator
        return {
            "spatial": self.spatial().draw(spatial_shape, g),
            "region_seed": _seed(g),
            "means": [[_u(g, *self.mean_range) for _ in range(n_int)] for _ in range(self.channels)],
            "stds": [[_u(g, *self.std_range) for _ in range(n_int)] for _ in range(self.channels)],
            "texture_seed": _seed(g),
            "blur_sigma": _u(g, *self.blur_sigma),
            "bias_seed": _seed(g),
            "gamma": [math.exp(self.gamma_std * float(torch.randn((), generator=g))) for _ in range(self.channels)],
            "resolution": _u(g, *self.resolution),
            "noise_std": _u(g, *self.noise_std),
            "noise_seed": _seed(g),
        }

    def apply(self, mask: torch.Tensor, params: dict[str, Any], num_classes: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (C, *S) float, deformed mask (*S) long) from a label map (*S) and drawn ``params``."""
        shape = tuple(mask.shape)
        nd = len(shape)
        grid = self.spatial().grid(params["spatial"], shape, mask.device)
        y = mask.long() if grid is None else warp_labels(mask.long(), grid, num_classes)
        # intensity labels: foreground k -> k-1, background region r -> K-1+r
        if self.background_classes > 1:
            regions = class_argmax(_smooth_field(shape, self.background_classes, 4, params["region_seed"]), 0)
        else:
            regions = torch.zeros(shape, dtype=torch.long)
        lab = torch.where(y > 0, y - 1, num_classes - 1 + regions.to(y.device))
        means = torch.tensor(params["means"], dtype=torch.float32)          # (C, n_int)
        stds = torch.tensor(params["stds"], dtype=torch.float32)
        noise = torch.randn((self.channels, *shape), generator=torch_generator(params["texture_seed"]))
        lab_c = lab.cpu()
        x = means[:, lab_c] + stds[:, lab_c] * noise                          # (C, *S)
        if params["blur_sigma"] > 0.05:
            x = GaussianFilter(nd, params["blur_sigma"])(x[None])[0]
        if self.bias_std > 0:
            bias = _smooth_field(shape, self.channels, self.bias_points, params["bias_seed"]) * self.bias_std
            x = x * torch.exp(bias)
        lo = x.flatten(1).amin(1).view(-1, *([1] * nd))
        hi = x.flatten(1).amax(1).view(-1, *([1] * nd))
        x = (x - lo) / (hi - lo).clamp_min(1e-6)
        x = x.clamp(0, 1) ** torch.tensor(params["gamma"]).view(-1, *([1] * nd))
        f = float(params["resolution"])
        if f > 1.05:
            low = tuple(max(2, int(round(s / f))) for s in shape)
            mode = "bilinear" if nd == 2 else "trilinear"
            x = F.interpolate(F.interpolate(x[None], size=low, mode=mode, align_corners=False, antialias=nd == 2),
                              size=shape, mode=mode, align_corners=False)[0]
        if params["noise_std"] > 0:
            x = x + params["noise_std"] * torch.randn(x.shape, generator=torch_generator(params["noise_seed"]))
        x = self._normalise(x)
        return x.to(mask.device).float(), y

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        nd = x.ndim - 1
        if self.normalise == "unit":
            lo = x.flatten(1).amin(1).view(-1, *([1] * nd))
            hi = x.flatten(1).amax(1).view(-1, *([1] * nd))
            return (x - lo) / (hi - lo).clamp_min(1e-6)
        flat = x.flatten(1)
        q = torch.quantile(flat, torch.tensor([0.005, 0.995]), dim=1)  # (2, C), like the data's z-score clip
        x = torch.maximum(torch.minimum(x, q[1].view(-1, *([1] * nd))), q[0].view(-1, *([1] * nd)))
        mean = x.flatten(1).mean(1).view(-1, *([1] * nd))
        std = x.flatten(1).std(1).view(-1, *([1] * nd)).clamp_min(1e-6)
        return (x - mean) / std

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> DomainRandomizer:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown domain randomisation options {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


def normalisation_for(info: Any) -> str:
    """"zscore" or "unit": how the dataset's images were normalised (``info.extra['normalise']``)."""
    norm = str((getattr(info, "extra", None) or {}).get("normalise") or "")
    if norm in ("unit", "percentile"):
        return "unit"
    if norm == "zscore":
        return "zscore"
    return "zscore" if getattr(info, "modality", "") in ("mri", "ct") else "unit"


class DomainRandSource:
    """PairSource: label maps from ``masks`` turned into randomised images, one draw per sample."""

    def __init__(self, masks: Sequence[np.ndarray | torch.Tensor], randomizer: DomainRandomizer, num_classes: int,
                 patch_size: Sequence[int] | None = None):
        if not masks:
            raise DataError("domain randomisation needs at least one label map")
        self.masks = [torch.as_tensor(np.asarray(m), dtype=torch.long) for m in masks]
        self.r = randomizer
        self.num_classes = num_classes
        self.patch_size = tuple(patch_size) if patch_size else None

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from segsynth.segment.sources import collate, random_patch

        xs, ys = [], []
        for _ in range(batch_size):
            m = self.masks[int(torch.randint(len(self.masks), (), generator=generator))]
            x, y = self.r.apply(m, self.r.draw(m.shape, self.num_classes, generator), self.num_classes)
            if self.patch_size is not None:
                x, y = random_patch(x, y, self.patch_size, generator)
            xs.append(x)
            ys.append(y)
        return collate(xs, ys)


class DomainRandomization:
    """SyntheticGenerator: ``fit`` keeps the labelled cases' label maps; ``sample`` makes randomised images.

    Args:
        num_classes: label classes (including background).
        randomizer: the appearance model (default ``DomainRandomizer()``).
    """

    def __init__(self, num_classes: int, randomizer: DomainRandomizer | None = None):
        self.num_classes = num_classes
        self.randomizer = randomizer or DomainRandomizer()
        self.masks: list[torch.Tensor] = []
        self.mask_ids: list[str] = []

    def fit(self, train: list[Case], *, val: list[Case] | None = None, unlabelled: list[Case] | None = None,
            device: torch.device | str = "cpu", seed: int = 0) -> dict[str, Any]:
        labelled = [c for c in train if c.mask is not None]
        if not labelled:
            raise DataError("domain randomisation needs labelled cases (label maps)")
        self.masks = [torch.as_tensor(np.asarray(c.mask), dtype=torch.long) for c in labelled]
        self.mask_ids = [c.case_id for c in labelled]
        return {"n_masks": len(self.masks), "seconds": 0.0}

    def iter_samples(self, n: int, *, generator: torch.Generator, masks: list[Any] | None = None,
                     prefix: str = "dr") -> Iterator[Case]:
        pool = [torch.as_tensor(np.asarray(m), dtype=torch.long) for m in masks] if masks is not None else self.masks
        ids = [f"mask{i}" for i in range(len(pool))] if masks is not None else self.mask_ids
        if not pool:
            raise ConfigError("no label maps: call fit() or pass masks")
        for k in range(n):
            i = k if masks is not None else int(torch.randint(len(pool), (), generator=generator))
            params = self.randomizer.draw(pool[i].shape, self.num_classes, generator)
            x, y = self.randomizer.apply(pool[i], params, self.num_classes)
            yield Case(f"{prefix}_{k:05d}", x.numpy().astype(np.float32), y.numpy().astype(np.int64),
                       {"method": "domain_rand", "source_mask": ids[i], "params": params,
                        "model": "domain_randomization"})

    def sample(self, n: int, *, generator: torch.Generator, masks: list[Any] | None = None) -> list[Case]:
        """``n`` pairs (or one per given mask when ``masks`` is given: then ``n`` must equal ``len(masks)``)."""
        if masks is not None and n != len(masks):
            raise ConfigError(f"sample(n={n}, masks=...) needs n == len(masks) ({len(masks)})")
        return list(self.iter_samples(n, generator=generator, masks=masks))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "masks.safetensors") as tmp:
            save_file({f"m{i}": m.contiguous() for i, m in enumerate(self.masks)}, str(tmp))
        write_json(directory / "domain_rand.json", {"num_classes": self.num_classes, "mask_ids": self.mask_ids,
                                                     "randomizer": self.randomizer.to_json()})

    @classmethod
    def load(cls, directory: str | Path, device: torch.device | str = "cpu") -> DomainRandomization:
        import json

        directory = Path(directory)
        cfg_path, m_path = directory / "domain_rand.json", directory / "masks.safetensors"
        for p in (cfg_path, m_path):
            if not p.exists():
                raise DataError("missing file (was a domain randomisation model saved here?)", p)
        cfg = json.loads(cfg_path.read_text())
        gen = cls(cfg["num_classes"], DomainRandomizer.from_options(cfg["randomizer"]))
        try:
            tensors = load_file(str(m_path))
        except Exception as e:
            raise DataError(f"cannot read label maps: {e}", m_path) from e
        gen.masks = [tensors[f"m{i}"] for i in range(len(tensors))]
        gen.mask_ids = list(cfg.get("mask_ids", []))
        return gen


class DomainRandMethod(Method):
    """SynthSeg-style domain randomisation of the N label maps, mixed with the real pairs.

    Options: ``real_weight`` / ``real_fraction`` (fraction of each batch from the real pairs; 0 =
    domain-randomised images only, as SynthSeg; default 0.5), ``augment_real`` (classical augmentation, default
    True; the randomised pairs get it too unless ``augment_synthetic=false``), ``min_fidelity`` and the other
    options of ``segsynth.segment.synthetic_mix``, and any
    ``DomainRandomizer`` field (e.g. ``background_classes=3``, ``mean_range=[0, 1]``). ``normalise`` defaults
    to the dataset's own.
    """

    name: ClassVar[str] = "domain_rand"
    description: ClassVar[str] = "SynthSeg-style domain randomisation of the label maps (+ real pairs)"

    def __init__(self, **options: Any):
        super().__init__(**options)
        from segsynth.segment.synthetic_mix import MixOptions, parse_mix_options

        # shared mixing options (segsynth.segment.synthetic_mix): real_fraction (alias real_weight), augment_real,
        # augment_synthetic (default: as augment_real), min_fidelity, ...
        self.mix, self.randomizer_options = parse_mix_options(
            options, defaults=MixOptions(real_fraction=0.5, augment_real=True), aliases={"real_weight": "real_fraction"})
        DomainRandomizer.from_options(dict(self.randomizer_options))  # fail early on unknown options

    def option_values(self) -> dict[str, Any]:
        """Mixing options, then the ``DomainRandomizer`` fields (``normalise`` and ``channels`` None: the
        dataset's own)."""
        randomizer = {**asdict(DomainRandomizer()), "normalise": None, "channels": None}
        return {**asdict(self.mix), **randomizer, **self.randomizer_options}

    def option_docs(self) -> list[str]:
        from segsynth.segment.synthetic_mix import MixOptions

        return [*super().option_docs(), inspect.getdoc(MixOptions) or "", inspect.getdoc(DomainRandomizer) or ""]

    def randomizer(self, ctx: MethodContext) -> DomainRandomizer:
        rest = dict(self.randomizer_options)
        rest.setdefault("normalise", normalisation_for(ctx.info))
        rest.setdefault("channels", ctx.info.in_channels)
        return DomainRandomizer.from_options(rest)

    def synthetic_source(self, ctx: MethodContext) -> Any:
        patch = ctx.train_config.patch_size if ctx.train_config else None
        return DomainRandSource([c.mask for c in ctx.train if c.mask is not None], self.randomizer(ctx),
                                ctx.info.num_classes, patch_size=patch)

    def training_source(self, ctx: MethodContext) -> Any:
        from segsynth.segment.synthetic_mix import mixed_training_source

        return mixed_training_source(ctx, self.synthetic_source(ctx), self.mix)


def domain_rand_cases(cases: Sequence[Case], n: int, num_classes: int, *, seed: int = 0,
                      randomizer: DomainRandomizer | None = None) -> list[Case]:
    """``n`` domain-randomised pairs from the label maps of ``cases`` (for pretraining or writing to disk)."""
    gen = DomainRandomization(num_classes, randomizer)
    gen.fit(list(cases))
    return gen.sample(n, generator=torch_generator(derive_seed(seed, "domain-rand")))


__all__ = ["DomainRandMethod", "DomainRandSource", "DomainRandomization", "DomainRandomizer", "domain_rand_cases",
           "normalisation_for"]
