"""Writing learned-transform pairs to a dataset."""

from __future__ import annotations

from segsynth.data.case import DatasetInfo
from segsynth.generators.learned_transforms import (
    RandAug,
    write_synthetic,
)


def test_write_synthetic_makes_a_loadable_dataset(tmp_path, fitted_2d):
    from segsynth.data.dataset import load_dataset
    from segsynth.data.preprocess import PreprocessSpec

    t, _, _ = fitted_2d
    info = DatasetInfo("blobs", {0: "bg", 1: "a", 2: "b"}, "mri", 2, 1, file_format="nifti")
    rec = write_synthetic(t, 4, tmp_path / "syn", info, seed=0, rand_aug=RandAug())
    assert rec.n == 4
    lines = (tmp_path / "syn" / "provenance.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "spatial_source" in lines[0]
    data = load_dataset(tmp_path / "syn", PreprocessSpec(size=None, normalise="none"), progress=False)
    assert len(data.cases) == 4 and data.info.num_classes == 3


def test_write_synthetic_in_shards_writes_the_same_pairs(tmp_path, fitted_2d):
    """Pair i comes from its own seed: 3 shards write the bytes of one writer (dataset.json aside)."""
    from tests.experiments.test_shards import tree

    t, _, _ = fitted_2d
    info = DatasetInfo("blobs", {0: "bg", 1: "a", 2: "b"}, "mri", 2, 1, file_format="nifti")
    one = tree(write_synthetic(t, 5, tmp_path / "k1", info, seed=3).out_dir)
    three = tree(write_synthetic(t, 5, tmp_path / "k3", info, seed=3, shards=3).out_dir)
    assert one.keys() == three.keys() and all(one[k] == three[k] for k in one if k != "dataset.json")
