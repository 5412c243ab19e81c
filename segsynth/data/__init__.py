"""Data: reading real formats, validating, preprocessing, splitting, classical augmentation."""

from segsynth.data.case import Case, DatasetInfo, LoadedDataset

__all__ = ["Case", "DatasetInfo", "LoadedDataset"]
