"""Splits: deterministic by seed, disjoint, grouped by volume, nested training subsets."""

from __future__ import annotations

import numpy as np
import pytest

from segsynth.data.case import Case
from segsynth.data.splits import group_of, split_cases, subset_nested
from segsynth.errors import DataError


def _cases(n: int, slices: int = 0) -> list[Case]:
    out = []
    for i in range(n):
        if slices:
            for s in range(slices):
                out.append(Case(f"v{i}_s{s:03d}", np.zeros((1, 2, 2), np.float32), np.zeros((2, 2), np.int64),
                                {"volume_id": f"v{i}", "dataset_root": "/data/hippo"}))
        else:
            out.append(Case(f"c{i}", np.zeros((1, 2, 2), np.float32), np.zeros((2, 2), np.int64),
                            {"dataset_root": "/data/lungs"}))
    return out


def _ids(cases):
    return [c.case_id for c in cases]


def test_deterministic_and_disjoint():
    cases = _cases(20)
    a, b = split_cases(cases, 4, 3, seed=7), split_cases(cases, 4, 3, seed=7)
    assert _ids(a.train) == _ids(b.train) and _ids(a.test) == _ids(b.test)
    assert len(a.train) == 4 and len(a.val) == 3 and len(a.test) == 13 and a.pool == []
    parts = [set(_ids(p)) for p in (a.train, a.val, a.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(_ids(cases))
    assert _ids(split_cases(cases, 4, 3, seed=8).train) != _ids(a.train)


def test_fixed_test_set_and_pool():
    cases = _cases(20)
    s = split_cases(cases, 2, 2, seed=1, n_test=5)
    assert len(s.test) == 5 and len(s.pool) == 11
    assert _ids(split_cases(cases, 8, 2, seed=1, n_test=5).test) == _ids(s.test)  # test does not depend on N


def test_grouped_by_volume():
    cases = _cases(6, slices=4)
    s = split_cases(cases, 2, 1, seed=0)
    assert len(s.train) == 8 and len(s.val) == 4 and len(s.test) == 12
    vols = [{group_of(c) for c in part} for part in (s.train, s.val, s.test)]
    assert len(vols[0]) == 2 and not (vols[0] & vols[2]) and not (vols[1] & vols[2]) and not (vols[0] & vols[1])
    assert s.to_json()["train"] == sorted(vols[0], key=s.group_ids("train").index)


def test_training_sets_are_nested_across_n():
    cases = _cases(30)
    prev: set[str] = set()
    for n in (1, 2, 4, 8):
        s = split_cases(cases, n, 3, seed=5)
        cur = set(_ids(s.train))
        assert prev <= cur and len(cur) == n
        assert _ids(s.val) == _ids(split_cases(cases, 1, 3, seed=5).val)
        prev = cur


def test_subset_nested_excludes_and_nests():
    cases = _cases(12, slices=2)
    s = split_cases(cases, 8, 2, seed=0, n_test=2)
    subsets = subset_nested(s.train + s.pool, (1, 2, 4, 8), seed=3, exclude=s.val + s.test)
    assert set(_ids(subsets[1])) <= set(_ids(subsets[2])) <= set(_ids(subsets[4])) <= set(_ids(subsets[8]))
    assert len({group_of(c) for c in subsets[4]}) == 4
    assert not ({group_of(c) for c in subsets[8]} & {group_of(c) for c in s.test + s.val})
    with pytest.raises(DataError, match="/data/hippo"):
        subset_nested(s.train, (9,), seed=0)


def test_too_many_labelled_cases_names_root_and_counts():
    with pytest.raises(DataError) as e:
        split_cases(_cases(5), 4, 2, seed=0)
    msg = str(e.value)
    assert "/data/lungs" in msg and "4 training" in msg and "only 5" in msg
    with pytest.raises(DataError, match="volumes"):
        split_cases(_cases(3, slices=2), 2, 1, seed=0)  # nothing left to test


def test_unlabelled_cases_go_to_pool():
    cases = _cases(6) + [Case("u0", np.zeros((1, 2, 2), np.float32), None, {})]
    s = split_cases(cases, 2, 1, seed=0)
    assert "u0" in _ids(s.pool) and "u0" not in _ids(s.train + s.val + s.test)
