"""Exact (interpolation-free) reorientation to canonical RAS and back."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt_mod


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip voxel axes so they point as closely as possible to R, A, S.

    Returns the reoriented array and its affine; the world position of every
    voxel is unchanged, so no interpolation happens.
    """
    ornt = ornt_mod.io_orientation(affine)
    out = ornt_mod.apply_orientation(data, ornt)
    new_affine = np.asarray(affine, dtype=np.float64) @ ornt_mod.inv_ornt_aff(ornt, data.shape[:3])
    return np.ascontiguousarray(out), new_affine


def from_ras(data: np.ndarray, original_affine: np.ndarray) -> np.ndarray:
    """Undo :func:`to_ras`: return an array in the original file's voxel order."""
    original = ornt_mod.io_orientation(original_affine)
    back = ornt_mod.ornt_transform(ornt_mod.axcodes2ornt(("R", "A", "S")), original)
    return np.ascontiguousarray(ornt_mod.apply_orientation(data, back))


def axcodes(affine: np.ndarray) -> str:
    return "".join(nib.aff2axcodes(affine))
