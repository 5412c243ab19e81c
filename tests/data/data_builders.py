"""Tiny dataset folders in every supported layout, written into a test's tmp_path."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image


def blob_mask(shape: tuple[int, ...], values: tuple[int, ...], seed: int) -> np.ndarray:
    """A mask with one box per non-background value (values[0] is the background)."""
    rng = np.random.default_rng(seed)
    mask = np.full(shape, values[0], dtype=np.int64)
    for k, v in enumerate(values[1:]):
        lo = [int(rng.integers(0, max(1, s // 2))) for s in shape]
        sl = tuple(slice(lo_i + k, lo_i + k + max(2, s // 3)) for lo_i, s in zip(lo, shape))
        mask[sl] = v
    return mask


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_msd(root: Path, n: int = 4, shape: tuple[int, int, int] = (8, 8, 6), *, modality: object = None,
             labels: dict | None = None, nnunet_v2: bool = False, channels: int = 1,
             empty_slices: bool = False) -> Path:
    """An MSD folder (dataset.json + training list), or nnU-Net v2 (name->id labels, _0000 files, no list)."""
    labels = labels or {"0": "background", "1": "anterior", "2": "posterior"}
    training = []
    aff = np.diag([0.8, 0.9, 1.5, 1.0])
    aff[:3, 3] = [10.0, -5.0, 3.0]
    for i in range(n):
        cid = f"vol_{i:03d}"
        rng = np.random.default_rng(i)
        mask = blob_mask(shape, (0, 1, 2), seed=i).astype(np.uint8)
        if empty_slices:
            mask[..., shape[2] // 2:] = 0
            mask[2:4, 2:4, 0:2] = 1
        for c in range(channels):
            img = (100 + 50 * mask + 10 * c + 5 * rng.standard_normal(shape)).astype(np.float32)
            name = f"{cid}_{c:04d}.nii.gz" if (nnunet_v2 or channels > 1) else f"{cid}.nii.gz"
            save_nifti(root / "imagesTr" / name, img, aff)
        save_nifti(root / "labelsTr" / f"{cid}.nii.gz", mask, aff)
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    meta: dict = {"name": "tiny_msd"}
    if nnunet_v2:
        meta["labels"] = {v: int(k) for k, v in labels.items()}
        meta["channel_names"] = modality if modality is not None else {"0": "T1"}
        meta["file_ending"] = ".nii.gz"
        meta["numTraining"] = n
    else:
        meta["labels"] = labels
        meta["modality"] = modality if modality is not None else {"0": "MRI"}
        meta["training"] = training
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_pairs(root: Path, n: int = 5, shape: tuple[int, int] = (20, 24), *, rgb: bool = False,
               mask_values: dict | None = None, modality: str = "chest X-ray") -> Path:
    """dataset.json "pairs" + "mask_values" with 0/255 masks (the JSRT/ISIC/Kvasir layout)."""
    mask_values = mask_values or {"0": "background", "255": "lung"}
    raw = tuple(sorted(int(k) for k in mask_values))
    pairs = []
    for i in range(n):
        rng = np.random.default_rng(i)
        mask = blob_mask(shape, raw, seed=i).astype(np.uint8)
        grey = np.clip(60 + 0.5 * mask + 20 * rng.standard_normal(shape), 0, 255).astype(np.uint8)
        img = np.stack([grey, grey // 2, 255 - grey], -1) if rgb else grey
        save_png(root / "images" / f"img{i:02d}.png", img)
        save_png(root / "masks" / f"img{i:02d}.png", mask)
        pairs.append({"image": f"images/img{i:02d}.png", "mask": f"masks/img{i:02d}.png"})
    meta = {"name": "tiny_pairs", "modality": modality, "mask_values": mask_values, "pairs": pairs}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_folders(root: Path, n: int = 4, shape: tuple[int, int] = (16, 16), *, values: tuple[int, ...] = (0, 128, 255),
                 mask_dir: str = "masks", mask_suffix: str = "", rgb: bool = True) -> Path:
    """Plain images/ + masks/ matched by stem, no dataset.json."""
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        mask = blob_mask(shape, values, seed=i).astype(np.uint8)
        grey = np.clip(80 + 0.3 * mask + 10 * rng.standard_normal(shape), 0, 255).astype(np.uint8)
        img = np.stack([grey, grey, grey // 2], -1) if rgb else grey
        save_png(root / "images" / f"case{i}.png", img)
        save_png(root / mask_dir / f"case{i}{mask_suffix}.png", mask)
    return root


def png_bomb(path: Path, side: int = 100_000) -> Path:
    """A valid 150-byte PNG whose header claims side x side grey pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path
