"""Small datasets shipped inside the package, so the demo and the tests run on a fresh clone.

See ATTRIBUTION.md in this folder for sources, licences and citations.
"""

from __future__ import annotations

from pathlib import Path

from segsynth.errors import DataError

SAMPLE_DIR = Path(__file__).resolve().parent
SAMPLES = ("hippocampus_small",)


def sample_path(name: str = "hippocampus_small") -> Path:
    """The folder of a shipped sample dataset (an MSD layout that ``load_dataset`` reads).

    Raises:
        DataError: unknown sample name, or the sample files are missing from this installation.
    """
    if name not in SAMPLES:
        raise DataError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}")
    path = SAMPLE_DIR / name
    if not (path / "dataset.json").is_file():
        raise DataError("sample data missing from this installation (reinstall segsynth)", path)
    return path
