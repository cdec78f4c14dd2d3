"""Brain masks: from a file, from a skull-stripped input, or automatic (Otsu)."""

from __future__ import annotations

import numpy as np

#: Fraction of exactly-zero voxels above which an input is taken as skull-stripped.
SKULL_STRIPPED_ZERO_FRACTION = 0.15


def _largest_component(mask: np.ndarray) -> np.ndarray:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(image), sortByObjectSize=True)
    return sitk.GetArrayFromImage(labels) == 1


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=False, foregroundValue=1)) > 0


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Voxels that are not exactly zero (the brain of a skull-stripped scan)."""
    return np.asarray(data != 0)


def otsu_mask(data: np.ndarray) -> np.ndarray:
    """Automatic foreground: Otsu threshold, largest connected component, holes filled.

    Axes are passed to SimpleITK as they are; connectivity and hole filling
    are symmetric, so the voxel order does not matter.
    """
    import SimpleITK as sitk

    finite = np.nan_to_num(np.asarray(data, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if not np.any(finite != finite.flat[0]):
        return np.zeros(finite.shape, dtype=bool)
    # Clip the bright tail so that a few hot voxels do not drive the threshold.
    hi = np.percentile(finite, 99.9)
    lo = finite.min()
    image = sitk.GetImageFromArray(np.clip(finite, lo, hi))
    fg = sitk.GetArrayFromImage(sitk.OtsuThreshold(image, 0, 1, 128)) > 0
    if not fg.any():
        return fg
    fg = _largest_component(fg)
    return _fill_holes(fg)


def is_skull_stripped(data: np.ndarray) -> bool:
    zeros = float(np.mean(data == 0))
    return zeros >= SKULL_STRIPPED_ZERO_FRACTION and zeros < 0.995


def auto_mask(data: np.ndarray) -> tuple[np.ndarray, str]:
    """The non-zero voxels if the scan looks skull-stripped, else an Otsu foreground.

    Returns the mask and the name of the method used.
    """
    if is_skull_stripped(data):
        return _fill_holes(nonzero_mask(data)), "nonzero"
    return otsu_mask(data), "otsu"


def compute_mask(data: np.ndarray, method: str = "auto") -> tuple[np.ndarray, str]:
    if method == "auto":
        return auto_mask(data)
    if method == "nonzero":
        return nonzero_mask(data), "nonzero"
    if method == "otsu":
        return otsu_mask(data), "otsu"
    if method == "none":
        return np.ones(data.shape, dtype=bool), "none"
    raise ValueError(f"unknown mask method {method!r}; use auto, nonzero, otsu or none")
