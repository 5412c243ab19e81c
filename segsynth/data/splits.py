"""Deterministic train / validation / test splits by seed, grouped by volume.

Cases are grouped by ``meta["volume_id"]`` when present (2D slices of one 3D volume) and otherwise by
``case_id``; every count (``n_train``, ``n_val``, ``n_test``) counts *groups*, so "N = 2" on slices means
two labelled volumes, and a volume's slices all land in the same split.

How a split is drawn: the labelled groups, sorted by id, are permuted with a seed derived from ``seed``.
Validation takes the first ``n_val`` groups, training the next ``n_train``; the test set is the last
``n_test`` groups (or, with ``n_test=None``, every group after the training ones). Consequences:

* for one seed, the training set for N = 1 is a subset of the one for N = 2, 4, ... (learning curves) and
  the validation set does not depend on N;
* with a fixed ``n_test`` the test set does not depend on N either;
* ``pool`` holds the labelled cases used by none of the three sets, plus any unlabelled cases: methods
  may use them as unlabelled images, never as labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from segsynth.data.case import Case
from segsynth.errors import DataError
from segsynth.utils.seed import derive_seed, numpy_rng


@dataclass
class Split:
    train: list[Case]
    val: list[Case]
    test: list[Case]
    pool: list[Case] = field(default_factory=list)
    seed: int = 0

    def group_ids(self, part: str) -> list[str]:
        """The volume ids (or case ids) of one part: "train", "val", "test" or "pool"."""
        seen: dict[str, None] = {}
        for c in getattr(self, part):
            seen.setdefault(group_of(c), None)
        return list(seen)

    def to_json(self) -> dict[str, Any]:
        """Ids per part, for logging a run's split next to its results."""
        return {"seed": self.seed, **{p: self.group_ids(p) for p in ("train", "val", "test", "pool")}}


def group_of(case: Case) -> str:
    """The splitting unit of a case: its volume id for slices, else its case id."""
    return str(case.meta.get("volume_id", case.case_id))


def _groups(cases: Sequence[Case]) -> tuple[dict[str, list[Case]], list[Case]]:
    """Labelled cases by group (insertion order), and the unlabelled cases."""
    groups: dict[str, list[Case]] = {}
    unlabelled: list[Case] = []
    for c in cases:
        if c.mask is None:
            unlabelled.append(c)
        else:
            groups.setdefault(group_of(c), []).append(c)
    return groups, unlabelled


def _dataset_root(cases: Sequence[Case], root: str | None) -> str | None:
    if root is not None:
        return str(root)
    for c in cases:
        r = c.meta.get("dataset_root")
        if r:
            return str(r)
    return None


def _permuted_keys(groups: dict[str, list[Case]], seed: int) -> list[str]:
    keys = sorted(groups)
    order = numpy_rng(derive_seed(seed, "split")).permutation(len(keys))
    return [keys[i] for i in order]


def split_cases(cases: Sequence[Case], n_train: int, n_val: int, seed: int, n_test: int | None = None, *,
                root: str | None = None) -> Split:
    """Split labelled cases (by volume) into train / val / test, plus the unused pool.

    Args:
        cases: the loaded cases (slices carry ``meta["volume_id"]``).
        n_train: labelled training groups (volumes or cases).
        n_val: validation groups (may be 0).
        seed: the split seed; the same seed gives the same split.
        n_test: test groups; None = every group not used for training or validation.
        root: the dataset folder for error messages (default: ``meta["dataset_root"]`` of the cases).

    Raises:
        DataError: more groups asked for than exist (naming the folder and the counts), or no test case
            left when ``n_test`` is None.
    """
    if n_train < 0 or n_val < 0 or (n_test is not None and n_test < 0):
        raise DataError(f"split sizes must be >= 0 (n_train={n_train}, n_val={n_val}, n_test={n_test})",
                        _dataset_root(cases, root))
    groups, unlabelled = _groups(cases)
    unit = "volumes" if any("volume_id" in c.meta for c in cases) else "cases"
    total = len(groups)
    need = n_train + n_val + (n_test or 0)
    if need > total or (n_test is None and n_train + n_val >= total):
        asked = f"{n_train} training + {n_val} validation"
        asked += f" + {n_test} test" if n_test is not None else " + at least 1 test"
        raise DataError(f"asked for {asked} labelled {unit} but the dataset has only {total} labelled {unit}",
                        _dataset_root(cases, root))
    keys = _permuted_keys(groups, seed)
    val_keys = keys[:n_val]
    train_keys = keys[n_val:n_val + n_train]
    test_start = n_val + n_train if n_test is None else total - n_test
    test_keys = keys[test_start:]
    pool_keys = keys[n_val + n_train:test_start]

    def take(ks: list[str]) -> list[Case]:
        return [c for k in ks for c in groups[k]]

    return Split(train=take(train_keys), val=take(val_keys), test=take(test_keys),
                 pool=take(pool_keys) + unlabelled, seed=seed)


def subset_nested(cases: Sequence[Case], sizes: Sequence[int], seed: int, *, exclude: Sequence[Case] = (),
                  root: str | None = None) -> dict[int, list[Case]]:
    """Nested labelled subsets: for one seed, the subset of size N is contained in every larger one.

    Args:
        cases: the candidate cases (typically a split's training pool: ``split.train + split.pool``).
        sizes: the subset sizes in groups (volumes or cases), e.g. (1, 2, 4, 8).
        seed: the subset seed.
        exclude: cases that must never be chosen (e.g. the validation and test cases).
        root: the dataset folder for error messages.

    Raises:
        DataError: a size larger than the number of available groups.
    """
    banned = {group_of(c) for c in exclude}
    groups, _ = _groups([c for c in cases if group_of(c) not in banned])
    keys = _permuted_keys(groups, seed)
    out: dict[int, list[Case]] = {}
    for n in sorted(set(int(s) for s in sizes)):
        if n < 0 or n > len(keys):
            unit = "volumes" if any("volume_id" in c.meta for c in cases) else "cases"
            raise DataError(f"asked for {n} labelled {unit} but only {len(keys)} are available",
                            _dataset_root(cases, root))
        out[n] = [c for k in keys[:n] for c in groups[k]]
    return out
