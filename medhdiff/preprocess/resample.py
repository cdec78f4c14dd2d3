"""Resampling between voxel grids with SimpleITK.

Grids are described by (shape, affine). Both affines may be oblique or even
sheared: the resampling transform maps output voxel indices to input voxel
indices through world space, so nothing about the geometry is approximated.
"""

from __future__ import annotations

import numpy as np

_INTERPOLATORS = {"linear": "sitkLinear", "nearest": "sitkNearestNeighbor", "bspline": "sitkBSpline"}


def grid_with_spacing(shape: tuple[int, ...], affine: np.ndarray,
                      spacing: tuple[float, float, float]) -> tuple[tuple[int, int, int], np.ndarray]:
    """A grid covering the same field of view with new voxel sizes along the same axes.

    The outer edges of the two grids coincide (up to rounding of the voxel
    count), as when an image is resized.
    """
    affine = np.asarray(affine, dtype=np.float64)
    old = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    new = np.asarray(spacing, dtype=np.float64)
    extent = np.asarray(shape[:3], dtype=np.float64) * old
    new_shape = tuple(int(max(1, round(e / s))) for e, s in zip(extent, new))
    ratio = extent / np.asarray(new_shape) / old  # exact ratio so that the edges coincide
    scale = np.eye(4)
    scale[:3, :3] = np.diag(ratio)
    scale[:3, 3] = 0.5 * ratio - 0.5
    return new_shape, affine @ scale


def resample_to_grid(data: np.ndarray, affine: np.ndarray, out_shape: tuple[int, ...],
                     out_affine: np.ndarray, interpolation: str = "linear",
                     default: float = 0.0) -> np.ndarray:
    """Resample ``data`` (on ``affine``) onto the grid ``(out_shape, out_affine)``."""
    affine = np.asarray(affine, dtype=np.float64)
    out_affine = np.asarray(out_affine, dtype=np.float64)
    if tuple(out_shape) == tuple(data.shape) and np.allclose(affine, out_affine, atol=1e-6):
        return np.array(data, dtype=np.float32, copy=True)
    import SimpleITK as sitk  # imported here: only needed when a grid really changes

    # Output index -> world -> input index.
    vox2vox = np.linalg.inv(affine) @ out_affine
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(vox2vox[:3, :3].ravel()))
    transform.SetTranslation(tuple(vox2vox[:3, 3]))
    # SimpleITK arrays are (z, y, x); with unit geometry its indices are our (i, j, k).
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, np.float32).transpose(2, 1, 0)))
    reference = sitk.Image([int(s) for s in out_shape], sitk.sitkFloat32)
    out = sitk.Resample(image, reference, transform, getattr(sitk, _INTERPOLATORS[interpolation]), float(default),
                        sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0).copy()
