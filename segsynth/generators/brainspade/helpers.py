"""brainSPADE helpers: seeded global-RNG scopes, per-sample seeds, domains and volumes, shapes, augmentation."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from segsynth.data.case import Case
from segsynth.data.transforms import RandomSpatial
from segsynth.errors import ConfigError, DataError
from segsynth.generators.fit_checkpoint import fingerprint
from segsynth.utils.config import load_module_state
from segsynth.utils.precision import autocast, resolve_precision
from segsynth.utils.seed import seeded_scope

CONDITIONS = (None, "slice_position", "class_presence")
SAMPLERS = ("ddim", "ddpm", "dpm")  # dpm: DPM-Solver++(2M), few steps (samplers.py)
DPM_DEFAULT_STEPS = 15  # "dpm" without explicit steps (sampling_steps is the DDIM setting)


# ============================================================================================ helpers


@contextlib.contextmanager
def rng_scope(seed: int) -> Iterator[None]:
    """Run code that draws from torch's global generators with a fixed seed, restoring them afterwards."""
    with seeded_scope(int(seed) % (2**63 - 1)):
        yield


@contextlib.contextmanager
def sampling_layout(device: torch.device | str, spatial_dims: int, *modules: torch.nn.Module) -> Iterator[bool]:
    """Channels-last weights while sampling 2D on the CPU; yields whether it is on (then give inputs the same
    layout). oneDNN's convolutions and nearest up-sampling are faster that way: measured at 64², batch 64, 2
    AVX2 cores: the label autoencoder's decoder 729 -> 451 ms, the SPADE generator 248 -> 206 ms, a diffusion
    UNet evaluation 106 -> 98 ms (benchmarks/sampling_speed.py). Training stays contiguous (channels-last made
    a U-Net training step slower here), so the weights are put back afterwards. Outputs equal those of the
    contiguous layout up to float rounding (tests/generators/brainspade/test_sampling_layout.py)."""
    on = torch.device(device).type == "cpu" and int(spatial_dims) == 2
    if on:
        for m in modules:
            m.to(memory_format=torch.channels_last)
    try:
        yield on
    finally:
        if on:
            for m in modules:
                m.to(memory_format=torch.contiguous_format)


def sampling_precision(device: torch.device | str, precision: str = "fp32") -> contextlib.AbstractContextManager[None]:
    """Autocast for sampling (``segsynth.utils.precision``: fp32, bf16, or auto = bf16 where the device runs it
    fast). The networks' convolutions run in bf16; the solver's arithmetic, the softmax of the label maps and
    the returned pairs stay fp32 (model outputs are cast up where they meet the fp32 latents)."""
    return autocast(device, resolve_precision(precision, device))


def as_layout(x: torch.Tensor, on: bool) -> torch.Tensor:
    """``x`` in channels-last layout when ``on`` (see ``sampling_layout``) and 4D, else unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if on and x.dim() == 4 else x


def draw_seeds(n: int, generator: torch.Generator) -> list[int]:
    """``n`` per-sample seeds from a generator."""
    return [int(s) for s in torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()]


def domain_of(case: Case, default: str) -> str:
    """Which dataset (domain) an image comes from: ``meta["domain"]``, else its dataset folder, else default."""
    for key in ("domain", "dataset_root", "dataset"):
        v = case.meta.get(key)
        if v:
            return str(v)
    return default


def volume_of(case: Case) -> str:
    return str(case.meta.get("volume_id", case.case_id))


def style_partners(cases: Sequence[Case]) -> list[list[int]]:
    """Per case, the indices of the other slices of its volume (itself when there are none): its style sources."""
    groups: dict[str, list[int]] = {}
    for i, x in enumerate(cases):
        groups.setdefault(volume_of(x), []).append(i)
    return [[j for j in groups[volume_of(x)] if j != i] or [i] for i, x in enumerate(cases)]


def domains_and_targets(labelled: Sequence[Case], unlabelled: Sequence[Case]) -> tuple[list[str], list[Case]]:
    """The domains (the labelled cases' first, then the unlabelled ones' in order) and the other-domain cases."""
    source = domain_of(labelled[0], "train")
    domains = [source]
    for x in unlabelled:
        d = domain_of(x, "target")
        if d not in domains:
            domains.append(d)
    return domains, [x for x in unlabelled if domain_of(x, "target") != source]


def assign_volumes(cases: Sequence[Case], pattern: str) -> list[Case]:
    """Group 2D slices stored as separate files into volumes by a regular expression on the case id.

    The first group of ``pattern`` is the volume id; an optional second group (digits) the slice index
    (``num_slices`` is then set per volume). Example: ``r"^(sub-\\d+)_ax(\\d+)$"`` for ``sub-0001_ax086``.
    Cases whose id does not match keep their own id as volume. Sets ``meta`` in place and returns the cases.
    """
    import re

    rx = re.compile(pattern)
    groups: dict[str, list[Case]] = {}
    for c in cases:
        m = rx.search(c.case_id)
        vol = m.group(1) if m else c.case_id
        c.meta["volume_id"] = vol
        if m and rx.groups >= 2 and m.group(2) is not None and m.group(2).isdigit():
            c.meta["slice_index"] = int(m.group(2))
        groups.setdefault(vol, []).append(c)
    for members in groups.values():
        idx = [c.meta["slice_index"] for c in members if "slice_index" in c.meta]
        if idx:
            lo, hi = min(idx), max(idx)
            for c in members:
                if "slice_index" in c.meta:
                    c.meta["slice_index"] = c.meta["slice_index"] - lo
                    c.meta["num_slices"] = hi - lo + 1
    return list(cases)


def _spatial_shape_of(cases: Sequence[Case], what: str) -> tuple[int, ...]:
    shapes = {c.spatial_shape for c in cases}
    if len(shapes) != 1:
        raise DataError(f"{what}: all cases must have one spatial shape to train a generator, found "
                        f"{sorted(shapes)[:4]} (set a working size: --size in 2D, --shape-3d in 3D)",
                        cases[0].meta.get("dataset_root"))
    return next(iter(shapes))


def _check_divisible(shape: Sequence[int], factor: int, what: str) -> None:
    if any(s % factor for s in shape):
        raise ConfigError(f"{what} needs every spatial size divisible by {factor}, got {tuple(shape)} "
                          f"(choose a working size that is a multiple of {factor})")


def _augment(batch: torch.Tensor, generator: torch.Generator, spatial: RandomSpatial) -> torch.Tensor:
    """Apply one random spatial transform per sample to (B, C, *S) (images and PV maps warp linearly)."""
    out = []
    for x in batch:
        params = spatial.draw(x.shape[1:], generator)
        out.append(spatial.apply(x, None, params)[0])
    return torch.stack(out)


def _default_spatial_aug(spatial_dims: int) -> RandomSpatial:
    return RandomSpatial(rotate_deg=10.0, scale=(0.9, 1.1), translate=0.05, elastic_alpha=0.01, p=0.7)


def _init_args(fn: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The constructor's own arguments from ``locals()``, JSON-friendly (tuples as lists)."""
    names = [p for p in inspect.signature(fn).parameters if p != "self"]
    out = {}
    for n in names:
        v = values[n]
        out[n] = list(v) if isinstance(v, tuple) else v
    return out


def load_weights(directory: str | Path, *pairs: tuple[torch.nn.Module, dict[str, Any]]) -> None:
    """Load saved state dicts into modules; weights that do not fit the saved configuration: DataError."""
    for module, state in pairs:
        load_module_state(module, state, directory)


def _fit_key(kind: str, config: dict[str, Any], not_fit: set[str], seed: int, *data: Any) -> str:
    """Fingerprint of what a fit's result depends on: the training options, the seed and the data.

    ``precision`` counts only when it is not fp32, so checkpoints written before the option existed resume."""
    skip = set(not_fit) | ({"precision"} if config.get("precision", "fp32") == "fp32" else set())
    return fingerprint(kind, {k: v for k, v in config.items() if k not in skip}, int(seed), *data)

