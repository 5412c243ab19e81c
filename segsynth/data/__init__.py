"""Data: reading real formats, validating, preprocessing, splitting, classical augmentation, writing."""

from segsynth.data.case import Case, DatasetInfo, LoadedDataset
from segsynth.data.check import check_dataset
from segsynth.data.dataset import load_dataset, load_unlabelled
from segsynth.data.preprocess import PreprocessSpec
from segsynth.data.splits import Split, split_cases
from segsynth.data.writer import DatasetWriter

__all__ = ["Case", "DatasetInfo", "DatasetWriter", "LoadedDataset", "PreprocessSpec", "Split", "check_dataset",
           "load_dataset", "load_unlabelled", "split_cases"]
