"""The one in-memory record every stage exchanges: a Case (image + mask + provenance).

Conventions (all stages rely on them):
- ``image`` is float32, channel-first: (C, H, W) in 2D, (C, D, H, W) in 3D, already normalised
  (MRI: z-score or percentile-scaled; photos and X-ray: [0, 1]).
- ``mask`` is int64 of the spatial shape with *contiguous class ids* 0..K-1 (0 = background),
  or None for an unlabelled image.
- ``meta`` is JSON-serialisable provenance: source files, affine/spacing for NIfTI, original size,
  and for synthetic cases how they were made (method, seed, model, style source, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Case:
    case_id: str
    image: np.ndarray
    mask: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_dims(self) -> int:
        return self.image.ndim - 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    @property
    def in_channels(self) -> int:
        return int(self.image.shape[0])

    @property
    def labelled(self) -> bool:
        return self.mask is not None


@dataclass
class DatasetInfo:
    """What a dataset is: its classes, modality and dimensionality.

    ``labels`` maps contiguous class id -> name, always including 0.
    ``modality`` is one of "mri", "ct", "xray", "photo", "other" and picks the intensity normalisation.
    """

    name: str
    labels: dict[int, str]
    modality: str
    spatial_dims: int
    in_channels: int
    root: str | None = None
    file_format: str = "png"  # "png", "jpg" or "nifti": the format predictions are written in
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": {str(k): v for k, v in self.labels.items()},
            "modality": self.modality,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "root": self.root,
            "file_format": self.file_format,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DatasetInfo:
        d = dict(d)
        d["labels"] = {int(k): v for k, v in d["labels"].items()}
        return cls(**d)


@dataclass
class LoadedDataset:
    info: DatasetInfo
    cases: list[Case]

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def root(self) -> Path | None:
        return Path(self.info.root) if self.info.root else None
