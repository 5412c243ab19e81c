"""DatasetWriter: round trip through load_dataset, resume after a crash, nothing at out_dir on error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segsynth.data.case import Case, DatasetInfo
from segsynth.data.dataset import load_dataset
from segsynth.data.preprocess import PreprocessSpec
from segsynth.data.writer import DatasetWriter
from segsynth.errors import DataError
from segsynth.utils.files import read_jsonl
from tests.conftest import make_blob_case


def _photo_cases(n: int) -> list[Case]:
    out = []
    for i in range(n):
        c = make_blob_case(f"syn{i:03d}", (16, 16), channels=3, num_classes=3, seed=i)
        c.image = np.clip(c.image, 0, 1)
        c.meta = {"method": "test", "seed": i, "source_mask": f"real{i}"}
        out.append(c)
    return out


PHOTO = DatasetInfo("blobs", {0: "background", 1: "a", 2: "b"}, "photo", 2, 3)


def test_round_trip_png(tmp_path):
    cases = _photo_cases(4)
    out = tmp_path / "syn"
    with DatasetWriter(out, PHOTO, provenance={"method": "test", "n": 4}) as w:
        for c in cases:
            assert w.add(c)
        assert not w.add(cases[0])  # already written
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["mask_values"] == {"0": "background", "1": "a", "2": "b"} and meta["synthetic"]["n"] == 4
    assert len(read_jsonl(out / "provenance.jsonl")) == 4
    assert not (out.parent / ".syn.partial").exists() and not (out / "writer_state.json").exists()
    ds = load_dataset(out, PreprocessSpec(size=None), progress=False)
    assert ds.info.labels == PHOTO.labels and ds.info.modality == "photo" and ds.info.in_channels == 3
    for a, b in zip(cases, ds.cases):
        assert a.case_id == b.case_id
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.image, b.image, atol=0.5 / 255 + 1e-6)


def test_round_trip_nifti_keeps_normalised_values(tmp_path, blob_cases_3d):
    info = DatasetInfo("vols", {0: "background", 1: "blob"}, "mri", 3, 1)
    with DatasetWriter(tmp_path / "v", info) as w:
        for c in blob_cases_3d:
            w.add(c)
    ds = load_dataset(tmp_path / "v", progress=False)
    assert ds.info.file_format == "nifti" and ds.info.spatial_dims == 3
    for a, b in zip(blob_cases_3d, ds.cases):
        np.testing.assert_array_equal(a.image, b.image)  # written exactly, not renormalised on load
        np.testing.assert_array_equal(a.mask, b.mask)


def test_resume_after_crash(tmp_path):
    cases = _photo_cases(5)
    out = tmp_path / "syn"
    with pytest.raises(RuntimeError), DatasetWriter(out, PHOTO) as w:
        for c in cases[:3]:
            w.add(c)
        raise RuntimeError("killed")
    assert not out.exists()
    partial = tmp_path / ".syn.partial"
    with open(partial / "provenance.jsonl", "a") as f:
        f.write('{"case_id": "syn003", "ima')  # a kill in the middle of the next record
    w = DatasetWriter(out, PHOTO)
    assert len(w) == 3 and w.has("syn002") and not w.has("syn003")
    written = [c.case_id for c in cases if not w.has(c.case_id) and w.add(c)]
    assert written == ["syn003", "syn004"]
    w.close()
    assert [r["case_id"] for r in read_jsonl(out / "provenance.jsonl")] == [c.case_id for c in cases]
    assert len(load_dataset(out, progress=False)) == 5


def test_nothing_at_out_dir_after_exception_and_resume_false_starts_afresh(tmp_path):
    out = tmp_path / "syn"
    with pytest.raises(ValueError), DatasetWriter(out, PHOTO) as w:
        w.add(_photo_cases(1)[0])
        raise ValueError("boom")
    assert not out.exists()
    w = DatasetWriter(out, PHOTO, resume=False)
    assert len(w) == 0
    w.discard()
    assert not (tmp_path / ".syn.partial").exists()


def test_refuses_bad_cases_and_existing_output(tmp_path):
    w = DatasetWriter(tmp_path / "syn", PHOTO)
    bad = _photo_cases(1)[0]
    bad.mask = bad.mask + 5
    with pytest.raises(DataError, match="not classes"):
        w.add(bad)
    z = _photo_cases(1)[0]
    z.image = z.image * 10 - 5
    with pytest.raises(DataError, match="fmt='nifti'"):
        w.add(z)
    with pytest.raises(DataError, match="no cases"):
        w.close()
    (tmp_path / "exists").mkdir()
    with pytest.raises(DataError, match="exists"):
        DatasetWriter(tmp_path / "exists", PHOTO)


def test_written_slices_keep_their_volume_grouping(tmp_path):
    info = DatasetInfo("sl", {0: "background", 1: "blob"}, "mri", 2, 1)
    with DatasetWriter(tmp_path / "s", info) as w:
        for i in range(4):
            c = make_blob_case(f"v{i // 2}_s{i:03d}", (16, 16), seed=i)
            c.meta["volume_id"] = f"v{i // 2}"
            w.add(c)
    ds = load_dataset(tmp_path / "s", PreprocessSpec(size=None), progress=False)
    assert ds.info.file_format == "nifti"
    assert [c.meta["volume_id"] for c in ds.cases] == ["v0", "v0", "v1", "v1"]


def test_masks_keep_the_source_raw_values(tmp_path):
    """0/255 masks in give 0/255 masks out (the source's value map travels in info.extra)."""
    from PIL import Image

    from tests.data.data_builders import make_pairs

    src = load_dataset(make_pairs(tmp_path / "src", n=3), PreprocessSpec(size=None), progress=False)
    assert src.info.extra["value_map"] == {"0": 0, "255": 1}
    with DatasetWriter(tmp_path / "syn", src.info) as w:
        for c in src.cases:
            w.add(c)
    meta = json.loads((tmp_path / "syn" / "dataset.json").read_text())
    assert meta["mask_values"] == {"0": "background", "255": "lung"}
    assert set(np.unique(np.asarray(Image.open(tmp_path / "syn" / "masks" / "img00.png")))) == {0, 255}
    back = load_dataset(tmp_path / "syn", PreprocessSpec(size=None), progress=False)
    assert back.info.extra["value_map"] == {"0": 0, "255": 1}
    for a, b in zip(src.cases, back.cases):
        np.testing.assert_array_equal(a.mask, b.mask)


def test_memory_does_not_grow_with_the_records(tmp_path):
    """A long synthesis run keeps only the written ids in memory, not each case's provenance record
    (20,000 pairs of brainSPADE grew resident memory by ~80 MB when it did; issue 12)."""
    import tracemalloc

    big_meta = {"note": "x" * 20_000}  # 20 kB of provenance per case
    cases = _photo_cases(40)
    for c in cases:
        c.meta = {**c.meta, **big_meta}
    with DatasetWriter(tmp_path / "syn", PHOTO) as w:
        w.add(cases[0])
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for c in cases[1:]:
            w.add(c)
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    assert grown < 39 * 20_000 / 4, f"the writer kept {grown} bytes for 39 cases"
    meta = json.loads((tmp_path / "syn" / "dataset.json").read_text())
    assert meta["numPairs"] == 40 and [p["image"] for p in meta["pairs"]] == [f"images/syn{i:03d}.png" for i in
                                                                              range(40)]
