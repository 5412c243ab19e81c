"""Find the (image, mask) pairs in a dataset folder, whatever its layout.

Supported layouts, detected in this order:

``msd``
    Medical Segmentation Decathlon / nnU-Net: ``dataset.json`` with ``labels`` and either a ``training``
    list of ``{"image", "label"}`` (MSD, nnU-Net v1) or no list and files in ``imagesTr/`` + ``labelsTr/``
    (nnU-Net v2, channels as ``<case>_0000``, ``<case>_0001``, ... stacked into C). ``labels`` may map
    id -> name (MSD) or name -> id (nnU-Net v2).
``pairs``
    ``dataset.json`` with ``pairs`` = ``[{"image", "mask"}]`` and ``mask_values`` = raw value -> class name
    (``{"0": "background", "255": "lung"}``: raw 255 becomes class 1). This is what ``DatasetWriter`` writes.
    ``image`` may be a list of channel files; an optional ``"volume_id"`` (or ``"subject"``) per pair marks
    2D slices of one subject, which splits then keep together.
``folders``
    ``images/`` + ``masks/`` (or ``labels/``; or ``imagesTr/`` + ``labelsTr/``) matched by file stem. Without
    a label map the mask values are detected by reading every mask and mapped to contiguous ids sorted by
    value (``values_detected`` is then True, and the values are reported).
``images_only``
    An image folder (``images/``, ``imagesTr/`` or the folder itself) without masks: unlabelled images,
    accepted only with ``unlabelled_ok=True``.

A ``dataset.json`` that has neither ``training`` nor ``pairs`` still gives ``name``, ``modality``,
``labels`` / ``mask_values`` to a ``folders`` layout.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PureWindowsPath
from typing import Any

from segsynth.data.io import file_format, file_stem, is_image_file, open_pil, read_mask
from segsynth.errors import DataError
from segsynth.utils.files import read_json_object

MODALITIES = ("mri", "ct", "xray", "photo", "other")

_MODALITY_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("xray", (r"x-?rays?", r"radiograph\w*", r"cxr", r"mammogra\w*", r"dxa")),
    ("mri", (r"mri", r"mr", r"t1\w*", r"t2\w*", r"flair", r"dwi", r"adc", r"pd", r"bold", r"swi",
             r"magnetic resonance", r"ce-?t1\w*", r"hbv", r"t1ce", r"t1gd")),
    ("ct", (r"ct", r"cta", r"computed tomography", r"ncct", r"cect")),
    ("photo", (r"dermoscop\w*", r"colonoscop\w*", r"endoscop\w*", r"rgb", r"photo\w*", r"fundus",
               r"histolog\w*", r"histopatholog\w*", r"microscop\w*", r"[rgb]", r"dermatolog\w*", r"camera")),
    ("other", (r"ultrasound", r"sonograph\w*", r"pet", r"spect", r"oct")),
)

_MASK_SUFFIXES = ("_mask", "_masks", "_seg", "_segmentation", "_label", "_labels", "_gt", "_lesion", "-mask",
                  "_Segmentation")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass
class PairRecord:
    """One case on disk: its image file(s) (one per channel, or one file holding all) and its mask."""

    case_id: str
    images: tuple[Path, ...]
    mask: Path | None = None
    volume_id: str | None = None  # cases sharing it (slices of one subject) are split together


@dataclass
class Layout:
    """What ``find_layout`` found in a dataset folder.

    Attributes:
        kind: "msd", "pairs", "folders" or "images_only".
        root: the dataset folder.
        name: dataset name (dataset.json ``name`` or the folder name).
        pairs: the cases, sorted by case id.
        value_map: raw mask value -> contiguous class id (empty for images_only).
        labels: contiguous class id -> class name (0 first).
        modality: one of ``MODALITIES``.
        modality_text: the words the modality was guessed from.
        values_detected: True when the mask values were read from the masks rather than a label map.
        info: other dataset.json fields worth keeping (licence, citation, source, reference, ...).
    """

    kind: str
    root: Path
    name: str
    pairs: list[PairRecord]
    value_map: dict[int, int]
    labels: dict[int, str]
    modality: str
    modality_text: str = ""
    values_detected: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return any(p.mask is not None for p in self.pairs)

    @property
    def file_format(self) -> str:
        """Format of the first image ("nifti", "png", "jpg"); masks of PNG/JPEG data are PNG."""
        for p in self.pairs:
            fmt = file_format(p.images[0])
            return "png" if fmt == "other" else fmt
        return "png"

    def describe(self) -> str:
        n_lab = sum(p.mask is not None for p in self.pairs)
        vals = ", ".join(f"{raw}->{cid}" for raw, cid in sorted(self.value_map.items()))
        how = "detected from the masks" if self.values_detected else "from dataset.json"
        return (f"{self.name}: layout {self.kind}, {len(self.pairs)} cases ({n_lab} labelled), modality "
                f"{self.modality}, classes {self.labels}, mask values {vals or 'none'} ({how})")


# -------------------------------------------------------------------------------------------- modality


def guess_modality(text: str | dict | list | None) -> str:
    """Map a free-text modality ("T1 MRI", "chest X-ray", "dermoscopy", {"0": "CT"}) to ``MODALITIES``.

    Returns "" when nothing is recognised (the caller then decides a default).
    """
    if text is None:
        return ""
    if isinstance(text, dict):
        text = " ".join(str(v) for v in text.values())
    elif isinstance(text, list | tuple):
        text = " ".join(str(v) for v in text)
    low = str(text).lower().strip()
    if low in MODALITIES:
        return low
    best, best_pos = "", len(low) + 1
    for modality, words in _MODALITY_WORDS:
        for w in words:
            m = re.search(rf"(?<![a-z0-9]){w}(?![a-z0-9])", low)
            if m and m.start() < best_pos:
                best, best_pos = modality, m.start()
    return best


def _default_modality(pairs: list[PairRecord]) -> str:
    """No modality text: RGB PNG/JPEG -> photo, anything else -> other."""
    for p in pairs[:1]:
        if file_format(p.images[0]) in ("png", "jpg", "other"):
            try:
                with open_pil(p.images[0], load=False) as im:
                    if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                        return "photo"
            except DataError:  # reading the case reports it
                return "other"
    return "other"


# -------------------------------------------------------------------------------------------- helpers


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, "dataset.json")


def _resolve(root: Path, rel: Any, jpath: Path, entry: str) -> Path:
    """A path listed in dataset.json, relative to the dataset folder and inside it (else a DataError naming
    the entry): a dataset folder is self-contained, so copying or exporting it copies everything it uses."""
    if not isinstance(rel, str) or not rel.strip():
        raise DataError(f"{entry}: expected a file path relative to the dataset folder, got {rel!r}", jpath)
    if Path(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or rel.startswith("~"):
        raise DataError(f"{entry}: {rel!r} is an absolute path; paths must be relative to the dataset folder "
                        "and stay inside it", jpath)
    if os.path.normpath(rel).replace("\\", "/").split("/")[0] == "..":
        raise DataError(f"{entry}: {rel!r} leaves the dataset folder; paths must stay inside it", jpath)
    return root / rel


def _with_channels(path: Path) -> tuple[Path, ...]:
    """A listed image that does not exist may be stored as nnU-Net channel files ``<stem>_0000<suffix>``."""
    if path.exists():
        return (path,)
    stem = file_stem(path)
    suffix = path.name[len(stem):]
    found: list[Path] = []
    for ch in range(1000):
        cand = path.with_name(f"{stem}_{ch:04d}{suffix}")
        if not cand.exists():
            break
        found.append(cand)
    return tuple(found) if found else (path,)


def _int_key(k: Any, path: Path, what: str) -> int:
    try:
        v = int(str(k).strip())
    except ValueError as e:
        raise DataError(f"{what}: {k!r} is not an integer mask value", path) from e
    if v < 0:
        raise DataError(f"{what}: negative mask value {v}", path)
    return v


def _labels_from_json(labels: Any, path: Path) -> dict[int, str]:
    """raw value -> name from MSD ``{"0": "background"}`` or nnU-Net v2 ``{"background": 0}``."""
    if not isinstance(labels, dict) or not labels:
        raise DataError("'labels' must be a non-empty object", path)
    keys_numeric = all(re.fullmatch(r"\s*\d+\s*", str(k)) for k in labels)
    if keys_numeric:
        return {_int_key(k, path, "labels"): str(v) for k, v in labels.items()}
    out: dict[int, str] = {}
    for name, v in labels.items():
        if isinstance(v, list | tuple):
            raise DataError(f"region-based label {name!r}: {v} is not supported (give one value per class)", path)
        out[_int_key(v, path, "labels")] = str(name)
    return out


def value_map_from_raw(raw_names: dict[int, str]) -> tuple[dict[int, int], dict[int, str]]:
    """raw value -> contiguous id (sorted by raw value), and id -> name. Value 0 is added as background."""
    raw_names = dict(raw_names)
    if 0 not in raw_names:
        raw_names[0] = "background"
    values = sorted(raw_names)
    vmap = {v: i for i, v in enumerate(values)}
    labels = {i: raw_names[v] for i, v in enumerate(values)}
    return vmap, labels


def detect_mask_values(mask_paths: list[Path], max_values: int = 64) -> list[int]:
    """The sorted union of raw values over all masks (reads every mask).

    Raises:
        DataError: a mask cannot be read, or more than ``max_values`` distinct values appear (a lossy
            JPEG mask or an image in the mask folder).
    """
    import numpy as np

    seen: set[int] = set()
    for p in mask_paths:
        arr, _ = read_mask(p)
        seen.update(int(v) for v in np.unique(arr))
        if len(seen) > max_values:
            raise DataError(f"masks hold more than {max_values} distinct values (first seen in this file); "
                            "are they lossy JPEGs or images? Give a dataset.json with 'mask_values'", p)
    return sorted(seen)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _group_channels(paths: list[Path]) -> dict[str, tuple[Path, ...]]:
    """stem -> files; when every stem ends in ``_dddd`` the files are channels of one case (nnU-Net v2)."""
    stems = [file_stem(p) for p in paths]
    matches = [_CHANNEL_RE.match(s) for s in stems]
    if paths and all(matches):
        groups: dict[str, list[tuple[int, Path]]] = {}
        for m, p in zip(matches, paths):
            assert m is not None
            groups.setdefault(m.group("case"), []).append((int(m.group("ch")), p))
        # Only a channel layout when the numbering starts at 0000 in every case.
        if all(min(c for c, _ in v) == 0 for v in groups.values()):
            return {k: tuple(p for _, p in sorted(v)) for k, v in groups.items()}
    return {s: (p,) for s, p in zip(stems, paths)}


def _mask_key(stem: str, image_keys: set[str]) -> str:
    if stem in image_keys:
        return stem
    for suf in _MASK_SUFFIXES:
        if stem.lower().endswith(suf.lower()) and stem[: -len(suf)] in image_keys:
            return stem[: -len(suf)]
    return stem


_FOLDER_PAIRS = (("imagesTr", "labelsTr"), ("images", "masks"), ("images", "labels"), ("imgs", "masks"),
                 ("image", "mask"), ("images", "segmentations"))


def _find_folders(root: Path) -> tuple[Path | None, Path | None]:
    for img, msk in _FOLDER_PAIRS:
        if (root / img).is_dir() and (root / msk).is_dir():
            return root / img, root / msk
    for img in ("imagesTr", "images", "imgs", "image"):
        if (root / img).is_dir():
            return root / img, None
    return None, None


# -------------------------------------------------------------------------------------------- layouts


def _msd_pairs(root: Path, meta: dict[str, Any], jpath: Path) -> list[PairRecord]:
    training = meta["training"]
    if not isinstance(training, list):
        raise DataError("'training' must be a list of {image, label}", jpath)
    pairs = []
    for i, entry in enumerate(training):
        if isinstance(entry, str):
            entry = {"image": entry}
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataError(f"training entry {i} has no 'image'", jpath)
        img = _resolve(root, entry["image"], jpath, f"training entry {i} image")
        label = entry.get("label", entry.get("mask"))
        pairs.append(PairRecord(file_stem(img), _with_channels(img),
                                None if label is None else _resolve(root, label, jpath, f"training entry {i} label")))
    return pairs


def _pairs_pairs(root: Path, meta: dict[str, Any], jpath: Path) -> list[PairRecord]:
    entries = meta["pairs"]
    if not isinstance(entries, list):
        raise DataError("'pairs' must be a list of {image, mask}", jpath)
    pairs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataError(f"pairs entry {i} has no 'image'", jpath)
        imgs = entry["image"]
        imgs = [imgs] if isinstance(imgs, str) else list(imgs)
        images = tuple(_resolve(root, s, jpath, f"pairs entry {i} image") for s in imgs)
        if not images:
            raise DataError(f"pairs entry {i} has an empty 'image' list", jpath)
        mask = entry.get("mask", entry.get("label"))
        case_id = str(entry.get("case_id") or file_stem(images[0]))
        group = entry.get("volume_id", entry.get("subject"))
        pairs.append(PairRecord(case_id, images,
                                None if mask is None else _resolve(root, mask, jpath, f"pairs entry {i} mask"),
                                None if group is None else str(group)))
    return pairs


def _folder_pairs(img_dir: Path, mask_dir: Path | None, unlabelled_ok: bool) -> list[PairRecord]:
    images = _group_channels(_list_images(img_dir))
    if mask_dir is None:
        return [PairRecord(k, v, None) for k, v in images.items()]
    masks: dict[str, Path] = {}
    for p in _list_images(mask_dir):
        key = _mask_key(file_stem(p), set(images))
        if key in masks:
            raise DataError(f"two masks match image {key!r}: {masks[key].name} and {p.name}", mask_dir)
        masks[key] = p
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DataError(f"{len(orphans)} mask(s) have no image with the same name in {img_dir.name}/: "
                        f"{', '.join(masks[k].name for k in orphans[:5])}{' ...' if len(orphans) > 5 else ''}",
                        mask_dir)
    missing = sorted(set(images) - set(masks))
    if missing and not unlabelled_ok:
        raise DataError(f"{len(missing)} image(s) have no mask with the same name in {mask_dir.name}/: "
                        f"{', '.join(images[k][0].name for k in missing[:5])}{' ...' if len(missing) > 5 else ''}",
                        img_dir)
    return [PairRecord(k, v, masks.get(k)) for k, v in images.items()]


def _flat_pairs(root: Path) -> list[PairRecord]:
    """Image files directly in the folder; ``<case><mask suffix>`` files (``a_seg.nii.gz`` beside ``a.nii.gz``)
    are the masks of their case, not more images."""
    files = _list_images(root)
    stems = {file_stem(p) for p in files}
    masks: dict[str, Path] = {}
    for p in files:
        key = _mask_key(file_stem(p), stems - {file_stem(p)})
        if key != file_stem(p):
            masks[key] = p
    mask_files = set(masks.values())
    images = _group_channels([p for p in files if p not in mask_files])
    return [PairRecord(k, v, masks.get(k)) for k, v in images.items()]


_BIDS_SUBJECT = re.compile(r"^(sub-[A-Za-z0-9]+)_")


def group_bids_subjects(pairs: list[PairRecord]) -> list[PairRecord]:
    """Files named the BIDS way (``sub-0001_ax086.png``) are slices of one subject: group them.

    Applies only to records with no explicit group and only when some subject has several files, so that
    a split never puts slices of one subject on both sides.
    """
    subjects = [(_BIDS_SUBJECT.match(p.case_id) if p.volume_id is None else None) for p in pairs]
    names = [m.group(1) for m in subjects if m]
    if len(names) == len(set(names)):
        return pairs
    return [replace(p, volume_id=m.group(1)) if m else p for p, m in zip(pairs, subjects)]


def find_layout(root: str | Path, *, unlabelled_ok: bool = False, scan_values: bool = True) -> Layout:
    """Detect the layout of a dataset folder and list its cases.

    Args:
        root: the dataset folder.
        unlabelled_ok: accept images without masks (an images-only folder, or unmatched images).
        scan_values: for layouts without a label map, read every mask to find its values. With False,
            ``value_map`` stays empty for such layouts (quick listing).

    Raises:
        DataError: missing folder, unreadable dataset.json, no cases, or unmatched files.
    """
    root = Path(root)
    if not root.exists():
        raise DataError("dataset folder not found", root)
    if not root.is_dir():
        raise DataError("not a folder (give the dataset folder, not a file)", root)
    jpath = root / "dataset.json"
    meta = _read_json(jpath) if jpath.is_file() else {}

    name = str(meta.get("name") or root.name)
    modality_src = meta.get("modality", meta.get("channel_names", meta.get("modalities")))
    raw_names: dict[int, str] | None = None
    if "mask_values" in meta:
        mv = meta["mask_values"]
        if not isinstance(mv, dict) or not mv:
            raise DataError("'mask_values' must be a non-empty object (raw value -> class name)", jpath)
        raw_names = {_int_key(k, jpath, "mask_values"): str(v) for k, v in mv.items()}
    elif "labels" in meta:
        raw_names = _labels_from_json(meta["labels"], jpath)

    if "training" in meta and isinstance(meta.get("training"), list) and meta["training"]:
        kind, pairs = "msd", _msd_pairs(root, meta, jpath)
    elif "pairs" in meta:
        kind, pairs = "pairs", _pairs_pairs(root, meta, jpath)
    else:
        img_dir, mask_dir = _find_folders(root)
        if img_dir is None:
            direct = _list_images(root)
            if not direct:
                raise DataError("no dataset found: expected dataset.json, images/ + masks/ (or labels/), "
                                "imagesTr/ + labelsTr/, or image files", root)
            img_dir = root
        kind = "folders" if mask_dir is not None else "images_only"
        if kind == "folders" and "labels" in meta and img_dir.name == "imagesTr":
            kind = "msd"  # nnU-Net v2: dataset.json without a training list
        if img_dir == root:
            pairs = _flat_pairs(root)
            kind = "folders" if any(p.mask is not None for p in pairs) else kind
        else:
            pairs = _folder_pairs(img_dir, mask_dir, unlabelled_ok)

    if not pairs:
        raise DataError("dataset is empty: no image/mask pairs found", root)
    pairs.sort(key=lambda p: p.case_id)
    ids = [p.case_id for p in pairs]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"case ids are not unique: {', '.join(dup[:5])}", root)
    n_lab = sum(p.mask is not None for p in pairs)
    if n_lab == 0:
        if not unlabelled_ok:
            raise DataError("no masks found (unlabelled images only); this needs labelled pairs", root)
        kind = "images_only"
    elif n_lab < len(pairs) and not unlabelled_ok:
        missing = [p.case_id for p in pairs if p.mask is None]
        raise DataError(f"{len(missing)} case(s) have no mask: {', '.join(missing[:5])}", root)

    values_detected = False
    if raw_names is None and n_lab and scan_values:
        values = detect_mask_values([p.mask for p in pairs if p.mask is not None])
        raw_names = {v: ("background" if v == 0 else f"class_{v}") for v in values}
        values_detected = True
    vmap, labels = value_map_from_raw(raw_names) if raw_names is not None and n_lab else ({}, {0: "background"})

    modality = guess_modality(modality_src)
    if not modality:
        modality = guess_modality(meta.get("description")) or _default_modality(pairs)
    modality_text = modality_src if isinstance(modality_src, str) else (json.dumps(modality_src) if modality_src
                                                                        else "")
    keep = ("licence", "license", "citation", "reference", "source", "description", "release", "extra",
            "synthetic", "segsynth", "tensorImageSize", "spatial_dims")
    info = {k: meta[k] for k in keep if k in meta}
    pairs = group_bids_subjects(pairs)
    return Layout(kind=kind, root=root, name=name, pairs=pairs, value_map=vmap, labels=labels,
                  modality=modality, modality_text=modality_text, values_detected=values_detected, info=info)
