"""Read and write the image and mask files segsynth understands: NIfTI (nibabel) and PNG/JPEG (Pillow).

Array conventions
-----------------
* ``read_image`` returns float32, channel-first: ``(C, *S)``.
* ``read_mask`` returns the *raw* integer values of the file, shape ``(*S)``; mapping raw values to
  contiguous class ids is the dataset loader's job (``segsynth.data.dataset``).
* PNG/JPEG: the spatial axes are the array order Pillow gives, ``(rows, columns)`` = ``(H, W)``.
  Grey images have C = 1, RGB images C = 3 (RGBA drops alpha, palette images are expanded).
  16-bit PNGs keep their full range (the original dtype is recorded in ``meta["dtype"]``).
* NIfTI: the spatial axes are nibabel's array order ``(x, y, z)`` (voxel axes of the affine), kept as is,
  never reoriented. A 4D file ``(x, y, z, c)`` is read as ``c`` channels; a 5D file ``(x, y, z, 1, c)``
  (the NIfTI "vector" convention) too. A 2D file ``(x, y)`` is a 2D image; a 4D file whose third axis has
  length 1, ``(x, y, 1, c)``, is read as a 2D image with ``c`` channels (that is how ``write_image`` stores
  multi-channel 2D images in NIfTI). ``meta`` keeps ``affine`` (4x4 list) and ``spacing`` (voxel sizes
  of the spatial axes).

Every failure (missing, empty, unreadable or truncated file, NaN/inf intensities, unsupported pixel
mode) raises ``DataError(problem, path)`` naming the file. Writes are atomic: a file appears whole or
not at all.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io as _io
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from segsynth.errors import DataError
from segsynth.utils.files import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + PIL_SUFFIXES


def file_suffix(path: str | Path) -> str:
    """The format suffix of a file in lower case, treating ``.nii.gz`` as one suffix ('' if unknown)."""
    name = Path(path).name.lower()
    for suf in IMAGE_SUFFIXES:
        if name.endswith(suf):
            return suf
    return ""


def file_stem(path: str | Path) -> str:
    """The file name without its format suffix (``a.nii.gz`` -> ``a``, ``b.png`` -> ``b``)."""
    name = Path(path).name
    suf = file_suffix(path)
    return name[: len(name) - len(suf)] if suf else Path(path).stem


def file_format(path: str | Path) -> str:
    """``"nifti"``, ``"png"``, ``"jpg"`` or ``"other"`` (BMP/TIFF, read through Pillow)."""
    suf = file_suffix(path)
    if suf in NIFTI_SUFFIXES:
        return "nifti"
    if suf == ".png":
        return "png"
    if suf in (".jpg", ".jpeg"):
        return "jpg"
    if suf in PIL_SUFFIXES:
        return "other"
    return ""


def is_image_file(path: str | Path) -> bool:
    p = Path(path)  # a symbolic link is listed even when broken or looping, so that reading it says which
    return (p.is_file() or p.is_symlink()) and not p.name.startswith(".") and file_suffix(p) != ""


# ----------------------------------------------------------------------------------------------- reading


def _check_file(path: Path) -> None:
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError("symbolic link loop (the link leads back to itself); replace it with the file",
                            path) from e
        if path.is_symlink():
            raise DataError(f"broken symbolic link (it points to {os.readlink(path)}, which does not exist)",
                            path) from e
        if e.errno == errno.ENOENT:
            raise DataError("file not found", path) from e
        raise DataError(f"cannot access file ({e.strerror})", path) from e
    if not path.is_file():
        raise DataError("not a file", path)
    if path.stat().st_size == 0:
        raise DataError("file is empty (0 bytes)", path)
    if not file_suffix(path):
        raise DataError(f"unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)})", path)


_NIBABEL_LOGGERS = ("nibabel", "nibabel.global")  # nibabel logs header problems on "nibabel.global"
_nibabel_quiet = threading.Lock()
_nibabel_quiet_depth = 0
_nibabel_levels: list[int] = []


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's own log lines while a file is read (a corrupt header makes it log a WARNING and an
    ERROR, through its handler and again through the root logger, before raising): what is wrong with the file
    reaches the user once, as our ``DataError``. The loggers' levels are restored afterwards; safe when several
    threads read files at once (the first in silences, the last out restores)."""
    global _nibabel_quiet_depth, _nibabel_levels
    loggers = [logging.getLogger(name) for name in _NIBABEL_LOGGERS]
    with _nibabel_quiet:
        if _nibabel_quiet_depth == 0:
            _nibabel_levels = [lg.level for lg in loggers]
            for lg in loggers:
                lg.setLevel(logging.CRITICAL + 1)
        _nibabel_quiet_depth += 1
    try:
        yield
    finally:
        with _nibabel_quiet:
            _nibabel_quiet_depth -= 1
            if _nibabel_quiet_depth == 0:
                for lg, level in zip(loggers, _nibabel_levels):
                    lg.setLevel(level)


def _load_nifti(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The raw voxel array (file dtype, scaling applied only if the header asks for it) and meta."""
    import nibabel as nib

    with _quiet_nibabel():
        try:
            img = nib.load(str(path))
            arr = np.asanyarray(img.dataobj)
        except Exception as e:  # nibabel raises many types: ImageFileError, EOFError, zlib.error, OSError
            raise DataError(f"cannot read NIfTI file ({type(e).__name__}: {e}); is it truncated or corrupt?",
                            path) from e
        arr = np.asarray(arr)
        zooms = [float(z) for z in img.header.get_zooms()]
    meta: dict[str, Any] = {
        "path": str(path),
        "format": "nifti",
        "dtype": str(img.header.get_data_dtype()),
        "affine": np.asarray(img.affine, dtype=float).tolist(),
        "file_shape": list(arr.shape),
    }
    return arr, {**meta, "_zooms": zooms}


def _nifti_to_channel_first(arr: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    """(C, *S) from a NIfTI array (see the module docstring); returns the array and spatial dims."""
    if arr.ndim == 2:
        return arr[None], 2
    if arr.ndim == 3:
        return arr[None], 3
    if arr.ndim == 4:
        if arr.shape[2] == 1:
            return np.moveaxis(arr[:, :, 0, :], -1, 0), 2
        return np.moveaxis(arr, -1, 0), 3
    if arr.ndim == 5 and arr.shape[3] == 1:
        return np.moveaxis(arr[:, :, :, 0, :], -1, 0), 3
    raise DataError(f"unsupported NIfTI shape {tuple(arr.shape)} (expected 2D, 3D, or 4D with channels last)",
                    path)


def open_pil(path: str | Path, load: bool = True) -> Any:
    """Open a PNG/JPEG/BMP/TIFF with Pillow; every failure, a decompression bomb included, is a DataError.

    Pillow refuses images whose header claims more than twice ``Image.MAX_IMAGE_PIXELS`` pixels (a tiny
    file can claim 100000 x 100000 and exhaust memory when decoded); that is reported, never decoded.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        im = Image.open(path)
        if load:
            im.load()
    except Image.DecompressionBombError as e:
        raise DataError(f"image header claims more pixels than the safety limit of {2 * Image.MAX_IMAGE_PIXELS:,} "
                        f"({e.args[0].split(' exceeds')[0].lower() if e.args else 'too many'}); refusing to decode "
                        "it (a decompression bomb or a corrupt header)", path) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, MemoryError) as e:
        raise DataError(f"cannot read image file ({type(e).__name__}: {e}); is it truncated or corrupt?",
                        path) from e
    return im


def _load_pil(path: Path) -> tuple[Any, dict[str, Any]]:
    im = open_pil(path)
    meta = {"path": str(path), "format": file_format(path), "mode": im.mode}
    return im, meta


def _pil_image_array(im: Any, path: Path) -> np.ndarray:
    """(C, H, W) array in the file's own dtype for an image (grey -> 1 channel, colour -> 3)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("1", "LA"):
        im = im.convert("L")
        mode = "L"
    if mode in ("RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
        mode = "RGB"
    arr = np.asarray(im)
    if arr.ndim == 2:
        if mode == "I" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            arr = arr.astype(np.uint16)  # Pillow opens 16-bit PNGs as 32-bit "I" on some versions
        return arr[None]
    if arr.ndim == 3:
        return np.moveaxis(arr, -1, 0)
    raise DataError(f"unsupported image mode {im.mode!r}", path)


def read_image(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image file as float32 ``(C, *S)`` plus meta.

    Meta keys: ``path``, ``format`` ("nifti" / "png" / "jpg" / "other"), ``dtype`` (the file's
    dtype, used to scale photos to [0, 1]), ``spatial_dims``, ``shape`` (spatial), ``spacing``;
    for NIfTI also ``affine``; for Pillow files ``mode``.

    Raises:
        DataError: missing, empty, unreadable or truncated file, unsupported layout, or NaN/inf values.
    """
    path = Path(path)
    _check_file(path)
    if file_format(path) == "nifti":
        raw, meta = _load_nifti(path)
        zooms = meta.pop("_zooms")
        arr, sdims = _nifti_to_channel_first(raw, path)
        meta["spacing"] = [float(z) for z in zooms[:sdims]]
        meta["dtype"] = str(raw.dtype)
    else:
        im, meta = _load_pil(path)
        arr = _pil_image_array(im, path)
        sdims = 2
        meta["dtype"] = str(arr.dtype)
        meta["spacing"] = [1.0, 1.0]
    if arr.size == 0:
        raise DataError("image has no pixels", path)
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"unsupported pixel type {arr.dtype}", path)
    image = arr.astype(np.float32, copy=True)
    if not np.isfinite(image).all():
        n_bad = int((~np.isfinite(image)).sum())
        raise DataError(f"image has {n_bad} NaN/inf intensities", path)
    meta["spatial_dims"] = sdims
    meta["shape"] = list(image.shape[1:])
    return image, meta


def read_mask(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a mask file as its raw integer values ``(*S)`` (int64) plus meta (same keys as ``read_image``).

    Colour masks are accepted only when all channels are equal (a grey mask saved as RGB); palette
    PNGs give their palette indices.

    Raises:
        DataError: unreadable file, non-integer values, or a colour mask with different channels.
    """
    path = Path(path)
    _check_file(path)
    if file_format(path) == "nifti":
        raw, meta = _load_nifti(path)
        zooms = meta.pop("_zooms")
        arr, sdims = _nifti_to_channel_first(raw, path)
        if arr.shape[0] != 1:
            raise DataError(f"mask has {arr.shape[0]} channels; a mask must be a single label map", path)
        arr = arr[0]
        meta["spacing"] = [float(z) for z in zooms[:sdims]]
        meta["dtype"] = str(raw.dtype)
    else:
        im, meta = _load_pil(path)
        if im.mode == "P":
            arr = np.asarray(im)  # palette indices are the label values
        else:
            if im.mode in ("RGBA", "LA"):
                im = im.convert("RGB" if im.mode == "RGBA" else "L")
            arr = np.asarray(im)
            if arr.ndim == 3:
                if not (arr == arr[..., :1]).all():
                    raise DataError("mask is a colour image with different channels; save masks as one "
                                    "grey channel of class values", path)
                arr = arr[..., 0]
        sdims = 2
        meta["dtype"] = str(arr.dtype)
        meta["spacing"] = [1.0, 1.0]
    if arr.size == 0:
        raise DataError("mask has no pixels", path)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.isfinite(arr).all():
            raise DataError("mask has NaN/inf values", path)
        rounded = np.rint(arr)
        if np.abs(arr - rounded).max() > 1e-3:
            raise DataError("mask has non-integer values; is this an image rather than a label map?", path)
        arr = rounded
    meta["spatial_dims"] = sdims
    meta["shape"] = list(arr.shape)
    return arr.astype(np.int64), meta


# ----------------------------------------------------------------------------------------------- writing


def _nifti_bytes(data: np.ndarray, meta: dict[str, Any] | None, gz: bool) -> bytes:
    import nibabel as nib

    meta = meta or {}
    affine = np.asarray(meta.get("affine", np.eye(4)), dtype=float)
    if affine.shape != (4, 4):
        affine = np.eye(4)
    img = nib.Nifti1Image(data, affine)
    spacing = meta.get("spacing")
    if spacing is not None and "affine" not in meta:
        zooms = list(img.header.get_zooms())
        for i, s in enumerate(list(spacing)[: len(zooms)]):
            zooms[i] = float(s)
        img.header.set_zooms(zooms)
        aff = np.eye(4)
        for i, s in enumerate(list(spacing)[:3]):
            aff[i, i] = float(s)
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=4, mtime=0) if gz else raw


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_image(path: str | Path, image: np.ndarray, meta: dict[str, Any] | None = None) -> None:
    """Write a ``(C, *S)`` image, choosing the format by suffix (.nii.gz / .nii / .png / .jpg).

    NIfTI keeps float32 values as they are (z-scored MRI stays z-scored) and uses ``meta["affine"]``
    or ``meta["spacing"]`` when given. PNG/JPEG take values in [0, 1] and store 8 bits (values are
    clipped); they need C = 1 (grey) or C = 3 (RGB).
    """
    path = Path(path)
    image = np.asarray(image)
    if image.ndim < 3:
        raise DataError(f"write_image expects (C, *S), got shape {image.shape}", path)
    fmt = file_format(path)
    if fmt == "nifti":
        c = image.shape[0]
        arr = image.astype(np.float32)
        if c == 1:
            data = arr[0]
        elif image.ndim == 3:  # 2D multi-channel -> (x, y, 1, c)
            data = np.moveaxis(arr, 0, -1)[:, :, None, :]
        else:
            data = np.moveaxis(arr, 0, -1)
        _write_bytes(path, _nifti_bytes(data, meta, gz=path.name.lower().endswith(".gz")))
        return
    if fmt in ("png", "jpg"):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise DataError(f"PNG/JPEG need a 2D grey or RGB image (1 or 3 channels), got shape {image.shape}",
                            path)
        u8 = np.clip(np.rint(np.nan_to_num(image.astype(np.float64)) * 255.0), 0, 255).astype(np.uint8)
        _write_pil(path, u8[0] if u8.shape[0] == 1 else np.moveaxis(u8, 0, -1), fmt)
        return
    raise DataError("cannot write this file type (use .nii.gz, .nii, .png or .jpg)", path)


def write_mask(path: str | Path, mask: np.ndarray, meta: dict[str, Any] | None = None) -> None:
    """Write an integer mask ``(*S)`` by suffix: NIfTI (uint8/uint16) or PNG (8 or 16 bit). No JPEG."""
    path = Path(path)
    mask = np.asarray(mask)
    if mask.size and (mask.min() < 0):
        raise DataError("mask values must be >= 0", path)
    vmax = int(mask.max()) if mask.size else 0
    dtype = np.uint8 if vmax < 256 else np.uint16
    if vmax >= 65536:
        raise DataError(f"mask value {vmax} too large to store", path)
    fmt = file_format(path)
    if fmt == "nifti":
        _write_bytes(path, _nifti_bytes(mask.astype(dtype), meta, gz=path.name.lower().endswith(".gz")))
        return
    if fmt == "png":
        if mask.ndim != 2:
            raise DataError(f"a PNG mask must be 2D, got shape {mask.shape}", path)
        _write_pil(path, mask.astype(dtype), "png")
        return
    raise DataError("masks are written as .nii.gz, .nii or .png (JPEG is lossy and would change labels)", path)


def _write_pil(path: Path, arr: np.ndarray, fmt: str) -> None:
    from PIL import Image

    im = Image.fromarray(arr)
    buf = _io.BytesIO()
    if fmt == "png":
        im.save(buf, format="PNG")
    else:
        im.save(buf, format="JPEG", quality=95)
    _write_bytes(path, buf.getvalue())
