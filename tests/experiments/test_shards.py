"""Sharded synthesis (local executor): K shards give the pairs of one writer, resumable, one dataset.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segsynth.data.case import DatasetInfo
from segsynth.errors import ConfigError
from segsynth.experiments.shards import shard_blocks, write_pairs
from tests.conftest import make_blob_case

INFO = DatasetInfo("blobs", {0: "bg", 1: "blob"}, "mri", 2, 1)


class BlobPairs:
    """Pair i: a blob case drawn from seed i (a stand-in for a generator)."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at

    def case_id(self, i: int) -> str:
        return f"blob_{i:03d}"

    def __call__(self, indices):
        for i in indices:
            if i == self.fail_at:
                raise KeyboardInterrupt  # a kill in the middle of a shard
            c = make_blob_case(self.case_id(i), (16, 16), seed=i)
            c.meta["index"] = i
            yield c


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shard_blocks_cover_range_once():
    assert shard_blocks(7, 3) == [[0, 1], [2, 3], [4, 5, 6]]
    assert sum(shard_blocks(2000, 2), []) == list(range(2000))


def test_sharded_equals_one_writer_and_resumes(tmp_path):
    one = tree(write_pairs(tmp_path / "k1", INFO, 7, BlobPairs()))
    three = tree(write_pairs(tmp_path / "k3", INFO, 7, BlobPairs(), shards=3))
    assert one.keys() == three.keys() and len([k for k in one if k.startswith("images/")]) == 7
    assert all(one[k] == three[k] for k in one if k != "dataset.json")  # the same pairs, same order
    assert json.loads(three["dataset.json"])["synthetic"]["shards"] == 3
    assert not list(tmp_path.glob(".*"))  # no shard or partial folders left
    # killed inside shard 2 (after shard 0 and 1 finished): the rerun completes, the result is the same
    with pytest.raises(KeyboardInterrupt):
        write_pairs(tmp_path / "again", INFO, 7, BlobPairs(fail_at=5), shards=3)
    assert (tmp_path / ".again.shards" / "s000" / "dataset.json").exists()
    assert tree(write_pairs(tmp_path / "again", INFO, 7, BlobPairs(), shards=3)) == three
    with pytest.raises(ConfigError, match="--shards"):
        write_pairs(tmp_path / "bad", INFO, 2, BlobPairs(), shards=3)
