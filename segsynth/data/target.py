"""Unlabelled images of the deployment site (``--target-unlabelled DIR``), and the check that nothing tested was seen.

The usual situation this serves: a few labelled scans from site A, many unlabelled scans from site B, where the
model will be used. Methods whose name contains ``target`` (``segsynth methods``) take site B's images from
``MethodContext.target``; the labelled test folder may be a labelled part of site B (``--test-data``).

Leak check (``check_no_leak``): an image of a tested folder (``--test-data``, and ``--data``, whose unused cases
are the in-domain test set) that also appears in the target folder is refused, because a method has trained on
it. "Appears" means either

* the same id: ``meta["volume_id"]`` when present (slices of one volume), else the case id (the file stem), for
  the folders of the deployment site (``--test-data``); not for ``--data``, another site, whose scans may be
  named like the target's (``case_001``) without being the same scans; or
* the same content: the SHA-1 of the **decoded pixel array as read from the file** (``segsynth.data.io.read_image``:
  float32, channels first, before any resizing or normalisation; shape included), over all channel files of a
  case. Decoded pixels, not file bytes, so that a renamed copy, or a copy written again with another PNG
  compression or NIfTI gzip level, is still found; a resized or JPEG-recompressed copy is not. Constant images
  (blank slices, empty files) have no content to compare and are left out of the content check.

The check stops at the first shared image with one ``DataError`` line naming both files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segsynth.data.case import Case, DatasetInfo
from segsynth.errors import DataError

#: ``meta["domain"]`` of target images (brainSPADE's style codes and modality loss tell domains apart by it)
TARGET_DOMAIN = "target"


def image_files(case: Case) -> list[str]:
    """The image file(s) a loaded case was read from (several for channel files)."""
    p = case.meta.get("image_path")
    if p is None:
        return []
    return [str(x) for x in p] if isinstance(p, (list, tuple)) else [str(p)]


def id_key(case: Case) -> str:
    return str(case.meta.get("volume_id", case.case_id))


def pixel_hash(files: Sequence[str | Path]) -> str | None:
    """SHA-1 of the decoded pixel arrays of ``files`` (shape and float32 values), or None for a constant image."""
    from segsynth.data.io import read_image

    h = hashlib.sha1()
    constant = True
    for f in files:
        arr, _ = read_image(f)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.size and float(arr.max()) != float(arr.min()):
            constant = False
        h.update(repr(tuple(arr.shape)).encode())
        h.update(arr.tobytes())
    return None if constant or not files else h.hexdigest()


def _by_file(cases: Sequence[Case]) -> dict[tuple[str, ...], Case]:
    """One case per distinct image file set (2D slices of one volume share their file)."""
    out: dict[tuple[str, ...], Case] = {}
    for c in cases:
        files = tuple(image_files(c))
        if files:
            out.setdefault(files, c)
    return out


def _where(case: Case) -> str:
    files = image_files(case)
    return files[0] if files else case.case_id


def check_no_leak(target: Sequence[Case], target_root: str | Path, tested: Sequence[tuple]) -> None:
    """Refuse any tested image whose id or decoded pixels appear among the target images.

    Args:
        target: the target images (``load_target``).
        target_root: their folder (named in the message).
        tested: (folder, cases) of each labelled folder whose cases may be tested, or (folder, cases, False) for
            one whose ids are not compared (another site: only its pixels are).

    Raises:
        DataError: one line naming the tested file and the target file.
    """
    if not target:
        return
    ids = {id_key(t): t for t in reversed(target)}  # the first target case of an id is the one named
    for root, cases, *compare_ids in tested:
        if compare_ids and not compare_ids[0]:
            continue
        for c in cases:
            t = ids.get(id_key(c))
            if t is not None:
                raise DataError(f"test image {_where(c)} has the id {id_key(c)!r} of target image {_where(t)} "
                                f"(--target-unlabelled {target_root}): nothing tested may have been seen in training; "
                                "split the site's folder into disjoint parts (segsynth split-folder)", root)
    hashes: dict[str, Case] = {}
    for files, t in _by_file(target).items():
        h = pixel_hash(files)
        if h is not None:
            hashes.setdefault(h, t)
    for root, cases, *_ in tested:
        for files, c in _by_file(cases).items():
            h = pixel_hash(files)
            t = hashes.get(h) if h is not None else None
            if t is not None:
                raise DataError(f"test image {_where(c)} has the same pixels as target image {_where(t)} "
                                f"(--target-unlabelled {target_root}): nothing tested may have been seen in training; "
                                "split the site's folder into disjoint parts (segsynth split-folder)", root)


def load_target(root: str | Path, spec, info: DatasetInfo, *, progress: bool = True) -> list[Case]:
    """The target site's images (masks ignored), preprocessed like the labelled data and tagged
    ``meta["domain"] = "target"``; grey images become RGB when the labelled data are RGB.

    Raises:
        DataError: no images, or images of another dimensionality or channel count than the labelled data.
    """
    from segsynth.data.dataset import load_unlabelled

    cases = load_unlabelled(root, spec, progress=progress)
    out = []
    for c in cases:
        image = c.image
        if c.spatial_dims != info.spatial_dims:
            raise DataError(f"target images are {c.spatial_dims}D but the labelled data are {info.spatial_dims}D",
                            root)
        if image.shape[0] != info.in_channels:
            if image.shape[0] == 1 and info.in_channels == 3:
                image = np.repeat(image, 3, axis=0)
            else:
                raise DataError(f"target images have {image.shape[0]} channel(s), the labelled data "
                                f"{info.in_channels}", root)
        out.append(Case(c.case_id, image, None, {**c.meta, "domain": TARGET_DOMAIN}))
    return out


__all__ = ["TARGET_DOMAIN", "check_no_leak", "id_key", "image_files", "load_target", "pixel_hash"]
