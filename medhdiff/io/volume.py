"""The :class:`Volume` container: voxels plus the geometry they live on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np


@dataclass
class Volume:
    """A 3D scalar image with its world geometry.

    ``data`` is always float32 with shape (I, J, K) in the file's own voxel
    order. ``affine`` maps voxel indices to RAS+ millimetres (the NIfTI/nibabel
    convention) whatever the source format was. ``header`` is the original
    NIfTI header when the file was NIfTI, and ``meta`` keeps format-specific
    metadata (for SimpleITK sources: spacing, origin and direction in LPS, and
    the metadata dictionary) so that outputs can be written back faithfully.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    fmt: str = "nifti"
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def orientation(self) -> str:
        """Three-letter axis code in the nibabel convention, e.g. ``"RAS"``, ``"LPS"``."""
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def is_oblique(self) -> bool:
        return is_oblique(self.affine)

    @property
    def source_dtype(self) -> str:
        return str(self.meta.get("source_dtype", self.data.dtype))

    def with_data(self, data: np.ndarray) -> "Volume":
        """A new volume on the same grid with different voxel values."""
        data = np.asarray(data)
        if data.shape[:3] != self.data.shape[:3]:
            raise ValueError(f"shape {data.shape} does not match the volume's grid {self.data.shape}")
        return Volume(data=data, affine=self.affine.copy(), header=self.header, fmt=self.fmt,
                      path=self.path, meta=dict(self.meta))


def is_oblique(affine: np.ndarray, tol: float = 1e-3) -> bool:
    """True when the voxel axes are not aligned with the world axes.

    Each column of the rotation part is normalised; the grid is oblique when
    any column has more than ``tol`` of its length off its dominant axis.
    """
    rot = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(rot, axis=0)
    norms[norms == 0] = 1.0
    cosines = np.abs(rot / norms)
    return bool((1.0 - cosines.max(axis=0) > tol).any())
