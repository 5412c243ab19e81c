"""Shared fixtures: tiny synthetic cases and the real data in ../shared (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ.get("SEGSYNTH_TEST_THREADS", "1")))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the project root; tests that need it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def make_blob_case(case_id: str = "c0", shape=(32, 32), channels: int = 1, num_classes: int = 2, seed: int = 0):
    """A tiny image with 1..num_classes-1 blobs whose intensity depends on the class (learnable)."""
    from segsynth.data.case import Case

    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    mask = np.zeros(shape, dtype=np.int64)
    for k in range(1, num_classes):
        centre = [rng.uniform(0.25 * s, 0.75 * s) for s in shape]
        radius = rng.uniform(0.15, 0.3) * min(shape)
        d2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
        mask[d2 < radius**2] = k
    image = (mask.astype(np.float32) / max(1, num_classes - 1))[None].repeat(channels, 0)
    image = image + 0.1 * rng.standard_normal(image.shape).astype(np.float32)
    return Case(case_id, image.astype(np.float32), mask, {"source": "synthetic-test"})


@pytest.fixture
def blob_cases_2d():
    return [make_blob_case(f"c{i}", (32, 32), seed=i) for i in range(6)]


@pytest.fixture
def blob_cases_3d():
    return [make_blob_case(f"v{i}", (16, 16, 16), seed=i) for i in range(4)]


def write_png_dataset(root: Path, n: int = 8, size=(32, 32), seed: int = 0, contrast: float = 1.0,
                      prefix: str = "case") -> Path:
    """A tiny images/ + masks/ (0/255) PNG dataset of blobs; ``contrast`` changes the image domain.

    Files are ``{prefix}{i:03d}.png``: give an external test set another prefix (same ids = same scans)."""
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = make_blob_case(f"{prefix}{i:03d}", size, seed=seed * 1000 + i)
        img = np.clip(0.2 + 0.6 * c.image[0] * contrast, 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / "images" / f"{prefix}{i:03d}.png")
        Image.fromarray((c.mask * 255).astype(np.uint8)).save(root / "masks" / f"{prefix}{i:03d}.png")
    return root


@pytest.fixture
def png_dataset(tmp_path) -> Path:
    return write_png_dataset(tmp_path / "blobs", n=10)


def conv_output_dtypes(*modules: torch.nn.Module) -> list[torch.dtype]:
    """A list that fills with the output dtype of every convolution of ``modules`` as they run (forward hooks):
    tells whether they ran under autocast."""
    seen: list[torch.dtype] = []
    kinds = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    for module in modules:
        for m in module.modules():
            if isinstance(m, kinds):
                m.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    return seen
