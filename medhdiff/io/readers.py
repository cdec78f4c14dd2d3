"""Reading and writing volumes with their geometry intact.

NIfTI goes through nibabel, which keeps the full header (qform/sform codes,
units, intent). NRRD, MetaImage (MHA/MHD) and DICOM series go through
SimpleITK, whose LPS geometry is converted to the RAS+ affine used everywhere
else in medhdiff.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medhdiff.errors import InputError, UnsupportedFormatError
from medhdiff.io.atomic import atomic_path, check_output_path, full_suffix
from medhdiff.io.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
DICOM_SUFFIXES = (".dcm", ".ima", "")

# Flip between ITK's LPS and nibabel's RAS world coordinates.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

#: Default ceiling on the memory one volume may need once loaded (float32).
DEFAULT_MAX_MEMORY_GB = float(os.environ.get("MEDHDIFF_MAX_MEMORY_GB", "16"))


def format_of(path: str | os.PathLike) -> str:
    """``"nifti"``, ``"nrrd"``, ``"mha"`` or ``"dicom"`` (a folder); otherwise an error."""
    p = Path(path)
    if p.is_dir():
        return "dicom"
    suffix = full_suffix(p)
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in (".nrrd", ".nhdr"):
        return "nrrd"
    if suffix in (".mha", ".mhd"):
        return "mha"
    raise UnsupportedFormatError(
        f"unsupported file type '{suffix or p.name}' for {p}; "
        f"medhdiff reads {', '.join(IMAGE_SUFFIXES)} and DICOM series folders"
    )


def _check_size(shape: tuple[int, ...], path: Path, max_memory_gb: float | None) -> None:
    limit = DEFAULT_MAX_MEMORY_GB if max_memory_gb is None else max_memory_gb
    need_gb = float(np.prod([max(int(s), 1) for s in shape], dtype=np.float64)) * 4 / 1e9
    if need_gb > limit:
        raise InputError(
            f"{path}: its header declares shape {tuple(shape)}, which needs about {need_gb:.1f} GB "
            f"as float32, above the {limit:g} GB limit (raise it with --max-memory)"
        )


def _to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    """Accept 3D arrays and 4D arrays with a single volume; refuse everything else."""
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim < 3:
        raise InputError(f"{path} is a {data.ndim}D image (shape {data.shape}); medhdiff needs a 3D volume")
    if data.ndim > 4:
        raise InputError(f"{path} is a {data.ndim}D image (shape {data.shape}); medhdiff needs a 3D volume")
    if data.ndim == 4:
        raise InputError(
            f"{path} is 4D with {data.shape[3]} volumes (shape {data.shape}); pass a single 3D volume"
        )
    if min(data.shape) < 2:
        raise InputError(f"{path} holds a single slice (shape {data.shape}); medhdiff needs a 3D volume")
    return data


def _check_file_length(img: nib.Nifti1Image, path: Path) -> None:
    """Refuse an uncompressed NIfTI shorter than its header's voxel block, before reading it."""
    if full_suffix(path) != ".nii":
        return
    offset = int(getattr(img.dataobj, "offset", 0))  # the loaded header's vox_offset is reset to 0
    need = offset + int(np.prod(img.shape, dtype=np.float64)) * img.get_data_dtype().itemsize
    have = path.stat().st_size
    if have < need:
        raise InputError(f"{path} holds {have} bytes, but its header declares {need} "
                         "(image data at the offset it names): truncated or corrupt file")


def _load_nifti(path: Path, max_memory_gb: float | None) -> Volume:
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"cannot read {path}: {exc}") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 3 or len(shape) > 4:
        raise InputError(f"{path} is a {len(shape)}D image (shape {shape}); medhdiff needs a 3D volume")
    _check_size(shape, path, max_memory_gb)
    _check_file_length(img, path)
    try:
        data = np.asanyarray(img.dataobj)
        source_dtype = str(img.get_data_dtype())
        data = np.asarray(data, dtype=np.float32)
    except Exception as exc:
        raise InputError(f"cannot read the voxels of {path} (truncated or corrupt file?): {exc}") from None
    data = _to_3d(data, path)
    header = img.header.copy()
    meta = {"source_dtype": source_dtype, "qform_code": int(header["qform_code"]),
            "sform_code": int(header["sform_code"])}
    return Volume(data=data, affine=img.affine, header=header, fmt="nifti", path=path, meta=meta)


def _sitk_affine(image) -> np.ndarray:
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    return affine


def _from_sitk(image, path: Path, fmt: str, max_memory_gb: float | None,
               extra_meta: dict | None = None) -> Volume:
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "medhdiff needs a scalar 3D volume")
    dim = image.GetDimension()
    size = tuple(int(s) for s in image.GetSize())
    if dim == 4 and size[3] == 1:
        image = image[:, :, :, 0]
        dim, size = 3, size[:3]
    if dim != 3:
        raise InputError(f"{path} is a {dim}D image (size {size}); medhdiff needs a 3D volume")
    _check_size(size, path, max_memory_gb)
    source_dtype = image.GetPixelIDTypeAsString()
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32, copy=False)
    data = np.ascontiguousarray(_to_3d(data, path))
    meta = {
        "source_dtype": source_dtype,
        "lps_origin": list(image.GetOrigin()),
        "lps_spacing": list(image.GetSpacing()),
        "lps_direction": list(image.GetDirection()),
    }
    if extra_meta:
        meta.update(extra_meta)
    return Volume(data=data, affine=_sitk_affine(image), header=None, fmt=fmt, path=path, meta=meta)


def dicom_series(folder: Path) -> list[str]:
    """The DICOM series identifiers found directly in ``folder``."""
    import SimpleITK as sitk

    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except Exception:
        return []


def _last_line(exc: BaseException) -> str:
    """ITK's exception texts span several lines; the last one says what went wrong."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


#: Largest relative deviation of one slice step from the median step before a series is refused.
SLICE_STEP_TOLERANCE = 0.1


def _check_slice_spacing(files: list[str] | tuple[str, ...], series: str, folder: Path) -> None:
    """Refuse a series whose slices are not evenly spaced along their normal.

    A missing slice (a gap of two steps) or slices of two acquisitions sharing
    a series UID would otherwise be stacked silently onto a wrong grid.
    """
    import SimpleITK as sitk

    positions = []
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(name))
        try:
            reader.ReadImageInformation()
        except Exception as exc:
            raise InputError(f"cannot read {name} of DICOM series {series}: {_last_line(exc)}") from None
        direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
        positions.append(float(np.dot(reader.GetOrigin(), direction[:, 2])))
    pos = np.sort(np.asarray(positions))
    steps = np.diff(pos)
    step = float(np.median(steps))
    if step <= 1e-6:
        raise InputError(f"DICOM series {series} in {folder}: several slices share one position; "
                         "the folder mixes acquisitions")
    bad = np.flatnonzero(np.abs(steps - step) > SLICE_STEP_TOLERANCE * step)
    if bad.size:
        i = int(bad[0])
        what = "a slice is missing" if steps[i] > step else "slices of another acquisition are mixed in"
        raise InputError(
            f"DICOM series {series} in {folder}: slices are {step:.4g} mm apart, but {steps[i]:.4g} mm "
            f"between positions {pos[i]:.4g} and {pos[i + 1]:.4g} mm ({what})"
        )


def _load_dicom(folder: Path, max_memory_gb: float | None, series: str | None) -> Volume:
    import SimpleITK as sitk

    ids = dicom_series(folder)
    if not ids:
        raise InputError(f"{folder} is a folder without a DICOM series or images")
    if series is None:
        if len(ids) > 1:
            raise InputError(f"{folder} holds {len(ids)} DICOM series ({', '.join(ids)}); "
                             "put each series in its own folder")
        series = ids[0]
    elif series not in ids:
        raise InputError(f"DICOM series {series} is not in {folder}; found {', '.join(ids)}")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series)
    if len(files) < 2:
        raise InputError(f"DICOM series {series} in {folder} has {len(files)} slice(s); "
                         "medhdiff needs a 3D volume")
    _check_slice_spacing(files, series, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK would print its own lines on stderr
    try:
        image = reader.Execute()
    except Exception as exc:
        raise InputError(f"cannot read DICOM series {series} in {folder}: {_last_line(exc)}") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    return _from_sitk(image, folder, "dicom", max_memory_gb,
                      {"dicom_series": series, "dicom_files": len(files)})


def _usable(vol: Volume) -> Volume:
    """Refuse a volume whose voxel-to-world affine has NaN/Inf entries or collapses an axis."""
    rot = vol.affine[:3, :3]
    if not np.isfinite(vol.affine).all():
        problem = "NaN or infinite entries"
    elif abs(float(np.linalg.det(rot))) < 1e-9 * max(float(np.abs(rot).max()), 1e-30) ** 3:
        problem = "a zero voxel size or two parallel axes"
    else:
        return vol
    raise InputError(f"{vol.path}: its header gives no usable geometry (the voxel-to-world affine has {problem}); "
                     "check the qform/sform and pixdim fields")


def load_volume(path: str | os.PathLike, *, max_memory_gb: float | None = None,
                series: str | None = None) -> Volume:
    """Load a 3D volume from NIfTI, NRRD, MHA/MHD or a DICOM series folder.

    The returned :class:`Volume` holds float32 voxels (``scl_slope`` and
    ``scl_inter`` applied), the RAS+ affine, and the original header or
    metadata. Raises :class:`~medhdiff.errors.InputError` with a one-line
    reason for a missing, corrupt, unsupported, 2D, 5D or oversized input.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such file or folder: {p}")
    fmt = format_of(p)
    if fmt == "dicom":
        return _usable(_load_dicom(p, max_memory_gb, series))
    if p.stat().st_size == 0:
        raise InputError(f"{p} is an empty file")
    if fmt == "nifti":
        return _usable(_load_nifti(p, max_memory_gb))
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        size = tuple(int(s) for s in reader.GetSize())
    except Exception as exc:
        raise InputError(f"cannot read {p}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from None
    _check_size(size, p, max_memory_gb)
    try:
        image = reader.Execute()
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise InputError(f"cannot read the voxels of {p} (truncated or corrupt file?): "
                         f"{msg[-1] if msg else exc}") from None
    return _usable(_from_sitk(image, p, fmt, max_memory_gb))


def _cast(data: np.ndarray, kind: str) -> np.ndarray:
    if kind == "auto":
        kind = "mask" if data.dtype in (np.bool_, np.uint8) else "image"
    if kind == "mask":
        if data.dtype == np.bool_:
            return data.astype(np.uint8)
        out = np.rint(np.nan_to_num(np.asarray(data, dtype=np.float64)))
        if out.min(initial=0) < 0 or out.max(initial=0) > 255:
            raise ValueError("mask values must lie in 0..255")
        return out.astype(np.uint8)
    if kind == "image":
        return np.asarray(data, dtype=np.float32)
    raise ValueError(f"unknown kind {kind!r}; use 'image', 'mask' or 'auto'")


def _nifti_for(data: np.ndarray, reference: Volume) -> nib.Nifti1Image:
    if reference.header is not None and isinstance(reference.header, nib.Nifti1Header):
        header = reference.header.copy()
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        # affine=None keeps the reference's qform and sform fields (and codes) untouched.
        img = cls(data, None, header)
    else:
        img = nib.Nifti1Image(data, reference.affine)
        img.set_qform(reference.affine, code=1)
        img.set_sform(reference.affine, code=1)
    img.set_data_dtype(data.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"] = 0.0
    img.header["cal_max"] = 0.0
    return img


def _sitk_for(data: np.ndarray, reference: Volume):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    meta = reference.meta
    if all(k in meta for k in ("lps_origin", "lps_spacing", "lps_direction")):
        image.SetOrigin(tuple(meta["lps_origin"]))
        image.SetSpacing(tuple(meta["lps_spacing"]))
        image.SetDirection(tuple(meta["lps_direction"]))
    else:
        spacing = np.sqrt((reference.affine[:3, :3] ** 2).sum(axis=0))
        direction = _LPS_TO_RAS @ reference.affine[:3, :3] / spacing
        image.SetOrigin(tuple(_LPS_TO_RAS @ reference.affine[:3, 3]))
        image.SetSpacing(tuple(float(s) for s in spacing))
        image.SetDirection(tuple(direction.ravel()))
    return image


def save_volume(data_or_volume: np.ndarray | Volume, path: str | os.PathLike, reference: Volume | None = None,
                *, kind: str = "auto", overwrite: bool = False,
                inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Write an array onto the reference volume's grid, atomically.

    ``kind`` is ``"image"`` (float32), ``"mask"`` (uint8) or ``"auto"``
    (uint8 for bool/uint8 arrays, float32 otherwise). The reference header is
    kept, qform/sform codes included, and ``scl_slope``/``scl_inter`` are
    reset. The file appears only once complete. Writing onto the reference's
    own file (or any of ``inputs``) is refused, and so is replacing an existing
    file unless ``overwrite``.
    """
    if isinstance(data_or_volume, Volume):
        if reference is None:
            reference = data_or_volume
        data = data_or_volume.data
    else:
        data = np.asarray(data_or_volume)
    if reference is None:
        raise ValueError("save_volume needs a reference volume for an array")
    if data.shape != reference.shape:
        raise ValueError(f"array shape {data.shape} does not match the reference grid {reference.shape}")
    out_fmt = format_of(path) if not Path(path).is_dir() else "dicom"
    if full_suffix(path) in (".mhd", ".nhdr"):
        raise UnsupportedFormatError(f"cannot write {path}: detached-header formats split into two files; "
                                     "use .mha or .nrrd (one file each)")
    if out_fmt == "dicom":
        raise UnsupportedFormatError(f"cannot write {path}: choose a .nii.gz, .nii, .nrrd or .mha file name")
    refs = tuple(inputs) + ((reference.path,) if reference.path is not None else ())
    out = check_output_path(path, overwrite=overwrite, inputs=refs)
    data = _cast(data, kind)
    with atomic_path(out) as tmp:
        if out_fmt == "nifti":
            _nifti_for(data, reference).to_filename(str(tmp))
        else:
            import SimpleITK as sitk

            try:
                sitk.WriteImage(_sitk_for(data, reference), str(tmp), True)
            except RuntimeError as exc:  # ITK reports a full disk as a RuntimeError
                raise OSError(_last_line(exc)) from exc
    return out
