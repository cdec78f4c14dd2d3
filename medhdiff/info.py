"""Summaries of a volume for ``medhdiff info``."""

from __future__ import annotations

import numpy as np

from medhdiff.io.volume import Volume
from medhdiff.preprocess.mask import auto_mask


def volume_info(volume: Volume) -> dict:
    """Format, geometry and intensity statistics of one volume, JSON-serialisable."""
    data = volume.data
    finite = np.isfinite(data)
    n_nan = int(np.isnan(data).sum())
    n_inf = int(np.isinf(data).sum())
    values = data[finite]
    if values.size:
        p1, p50, p99 = (float(v) for v in np.percentile(values, [1, 50, 99]))
        vmin, vmax = float(values.min()), float(values.max())
    else:
        p1 = p50 = p99 = vmin = vmax = float("nan")
    clean = np.where(finite, data, 0.0).astype(np.float32)
    if np.any(clean):
        fg, method = auto_mask(clean)
        fg_ml = float(fg.sum()) * volume.voxel_volume_ml
    else:
        fg_ml, method = 0.0, "empty"
    info = {
        "path": str(volume.path) if volume.path is not None else None,
        "format": volume.fmt,
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 6) for s in volume.spacing],
        "orientation": volume.orientation,
        "oblique": volume.is_oblique,
        "dtype": volume.source_dtype,
        "affine": np.round(volume.affine, 6).tolist(),
        "intensity": {"min": vmin, "p1": p1, "p50": p50, "p99": p99, "max": vmax},
        "foreground_ml": round(fg_ml, 3),
        "foreground_method": method,
        "nan_voxels": n_nan,
        "inf_voxels": n_inf,
    }
    if volume.header is not None:
        info["qform_code"] = int(volume.header["qform_code"])
        info["sform_code"] = int(volume.header["sform_code"])
    if "dicom_series" in volume.meta:
        info["dicom_series"] = volume.meta["dicom_series"]
    return info
