"""Learned transforms fitted once on tiny 2D blobs for the learned-transforms tests."""

from __future__ import annotations

import pytest

from tests.generators.learned_transforms.helpers import _fitted


@pytest.fixture(scope="package")
def fitted_2d():
    return _fitted()
