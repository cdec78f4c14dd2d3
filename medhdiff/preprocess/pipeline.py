"""The invertible preprocessing pipeline between a scan and model space.

forward: reorient to RAS (exact) -> brain mask -> resample to the target
spacing -> percentile normalisation inside the mask -> crop to the mask's
bounding box plus a margin -> pad to a multiple of N.

inverse: any array computed in model space goes back through the same steps
in reverse and lands on the original file's grid.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from medhdiff.errors import InputError
from medhdiff.io.volume import Volume
from medhdiff.preprocess.crop import bounding_box, crop_pad, pad_amounts, uncrop_unpad
from medhdiff.preprocess.mask import compute_mask
from medhdiff.preprocess.normalize import NormParams, denormalize, fit_normalization, normalize
from medhdiff.preprocess.orientation import axcodes, from_ras, to_ras
from medhdiff.preprocess.resample import grid_with_spacing, resample_to_grid

log = logging.getLogger("medhdiff")

#: Ratio of the largest to the smallest voxel side above which a scan is processed with a warning.
ANISOTROPY_WARN_RATIO = 4.0


@dataclass
class PreprocessConfig:
    """How a scan is brought into model space.

    ``spacing``: target voxel size in mm (``None`` keeps the native spacing).
    ``mask``: ``auto`` | ``nonzero`` | ``otsu`` | ``none`` (ignored when a mask is given).
    ``margin_mm``: margin around the brain's bounding box.
    ``pad_multiple``: each model-space axis is padded to a multiple of this.
    """

    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    mask: str = "auto"
    upper_percentile: float = 99.5
    lower_percentile: float | None = None
    margin_mm: float = 6.0
    pad_multiple: int = 16
    interpolation: str = "linear"
    zero_outside_mask: bool = True

    def __post_init__(self) -> None:
        if self.spacing is not None:
            sp = self.spacing
            if isinstance(sp, (int, float)):
                sp = (float(sp),) * 3
            sp = tuple(float(s) for s in sp)
            if len(sp) != 3 or min(sp) <= 0:
                raise ValueError(f"spacing must be three positive numbers, got {self.spacing}")
            self.spacing = sp
        if self.mask not in ("auto", "nonzero", "otsu", "none"):
            raise ValueError(f"mask must be auto, nonzero, otsu or none, got {self.mask!r}")
        if self.interpolation not in ("linear", "bspline"):
            raise ValueError(f"interpolation must be linear or bspline, got {self.interpolation!r}")
        if int(self.pad_multiple) < 1:
            raise ValueError("pad_multiple must be >= 1")

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing key(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PreprocessRecord:
    """Everything needed to map model-space arrays back onto the original grid."""

    original_shape: tuple[int, int, int]
    original_affine: list
    original_orientation: str
    canonical_shape: tuple[int, int, int]
    canonical_affine: list
    resampled_shape: tuple[int, int, int]
    resampled_affine: list
    box: tuple[tuple[int, int], ...]
    pads: tuple[tuple[int, int], ...]
    norm: NormParams
    mask_source: str
    nonfinite_voxels: int = 0
    config: dict = field(default_factory=dict)

    @property
    def model_shape(self) -> tuple[int, int, int]:
        return tuple(int(b - a + p0 + p1) for (a, b), (p0, p1) in zip(self.box, self.pads))

    @property
    def model_affine(self) -> np.ndarray:
        """Voxel-to-world affine of the model-space grid (after crop and pad)."""
        shift = np.eye(4)
        shift[:3, 3] = [a - p0 for (a, _), (p0, _) in zip(self.box, self.pads)]
        return np.asarray(self.resampled_affine) @ shift

    @property
    def model_spacing(self) -> tuple[float, float, float]:
        aff = np.asarray(self.resampled_affine)
        return tuple(float(s) for s in np.sqrt((aff[:3, :3] ** 2).sum(axis=0)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model_shape"] = list(self.model_shape)
        return d


@dataclass
class Preprocessed:
    image: np.ndarray  # float32, model space
    mask: np.ndarray  # bool, model space
    record: PreprocessRecord


class Preprocessor:
    """Brings volumes into model space and maps results back (see module docs)."""

    def __init__(self, config: PreprocessConfig | None = None):
        self.config = config or PreprocessConfig()

    # -- geometry helpers -------------------------------------------------
    def _canonical(self, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
        return to_ras(volume.data, volume.affine)

    def _target_grid(self, shape, affine) -> tuple[tuple[int, int, int], np.ndarray]:
        if self.config.spacing is None:
            return tuple(int(s) for s in shape[:3]), np.asarray(affine, dtype=np.float64)
        return grid_with_spacing(shape, affine, self.config.spacing)

    def _mask_on_grid(self, mask: Volume | np.ndarray, volume: Volume) -> np.ndarray:
        """A user mask brought onto the input volume's own grid."""
        if isinstance(mask, np.ndarray):
            if mask.shape != volume.shape:
                raise InputError(f"mask shape {mask.shape} differs from the image shape {volume.shape}")
            return mask > 0
        if mask.shape == volume.shape and np.allclose(mask.affine, volume.affine, atol=1e-3):
            return mask.data > 0
        log.warning("the mask %s lies on a different grid than the image; resampling it onto the image grid",
                    mask.path or "")
        out = resample_to_grid((mask.data > 0).astype(np.float32), mask.affine, volume.shape,
                               volume.affine, "linear") > 0.5
        if not out.any():
            raise InputError(f"the mask {mask.path or ''} does not overlap the image")
        return out

    # -- forward ----------------------------------------------------------
    def forward(self, volume: Volume, mask: Volume | np.ndarray | None = None, *,
                warn_geometry: bool = True) -> Preprocessed:
        """The scan in model space; ``warn_geometry`` warns about very anisotropic voxels."""
        cfg = self.config
        data = np.asarray(volume.data, dtype=np.float32)
        bad = ~np.isfinite(data)
        n_bad = int(bad.sum())
        if n_bad:
            log.warning("%s: %d NaN/Inf voxel(s) set to 0", volume.path or "input", n_bad)
            data = np.where(bad, 0.0, data).astype(np.float32)
        if not np.any(data):
            raise InputError(f"{volume.path or 'input'} is all zeros; there is nothing to process")
        spacing = volume.spacing
        if warn_geometry and min(spacing) > 0 and max(spacing) / min(spacing) >= ANISOTROPY_WARN_RATIO:
            log.warning("%s: voxels of %s mm are very anisotropic (%.0f:1); detail between the thick slices "
                        "is interpolated, so results along that axis are coarse", volume.path or "input",
                        " x ".join(f"{s:.3g}" for s in spacing), max(spacing) / min(spacing))

        if mask is not None:
            user_mask = self._mask_on_grid(mask, volume)
            mask_source = "file"
        else:
            user_mask, mask_source = compute_mask(data, cfg.mask)
        if not user_mask.any():
            raise InputError(f"{volume.path or 'input'}: the brain mask is empty")

        can, can_aff = to_ras(data, volume.affine)
        can_mask, _ = to_ras(user_mask.astype(np.float32), volume.affine)
        out_shape, out_aff = self._target_grid(can.shape, can_aff)
        res = resample_to_grid(can, can_aff, out_shape, out_aff, cfg.interpolation)
        res_mask = resample_to_grid(can_mask, can_aff, out_shape, out_aff, "linear") > 0.5
        if not res_mask.any():
            raise InputError(f"{volume.path or 'input'}: the brain mask vanished after resampling")

        norm = fit_normalization(res, res_mask, cfg.upper_percentile, cfg.lower_percentile)
        res = normalize(res, norm)
        if cfg.zero_outside_mask:
            res = np.where(res_mask, res, 0.0).astype(np.float32)

        spacing = np.sqrt((out_aff[:3, :3] ** 2).sum(axis=0))
        margin = tuple(int(np.ceil(cfg.margin_mm / s)) for s in spacing)
        box = bounding_box(res_mask, margin)
        cropped_shape = tuple(b - a for a, b in box)
        pads = pad_amounts(cropped_shape, int(cfg.pad_multiple))
        image = crop_pad(res, box, pads).astype(np.float32)
        model_mask = crop_pad(res_mask, box, pads).astype(bool)

        record = PreprocessRecord(
            original_shape=tuple(int(s) for s in volume.shape),
            original_affine=np.asarray(volume.affine).tolist(),
            original_orientation=axcodes(volume.affine),
            canonical_shape=tuple(int(s) for s in can.shape),
            canonical_affine=np.asarray(can_aff).tolist(),
            resampled_shape=tuple(int(s) for s in out_shape),
            resampled_affine=np.asarray(out_aff).tolist(),
            box=tuple((int(a), int(b)) for a, b in box),
            pads=tuple((int(a), int(b)) for a, b in pads),
            norm=norm,
            mask_source=mask_source,
            nonfinite_voxels=n_bad,
            config=cfg.to_dict(),
        )
        return Preprocessed(image=image, mask=model_mask, record=record)

    def to_model(self, array: np.ndarray, record: PreprocessRecord, kind: str = "mask") -> np.ndarray:
        """Map another array on the original grid into model space.

        ``kind``: ``mask`` (a lesion mask, a region: linear, then > 0.5), ``map``
        (linear, values kept) or ``field`` (the image's own interpolation, values
        kept, no intensity normalisation: e.g. a noise field that must be
        resampled exactly as the image's noise was).
        """
        if kind not in ("mask", "map", "field"):
            raise ValueError(f"kind must be mask, map or field, got {kind!r}")
        if tuple(array.shape) != tuple(record.original_shape):
            raise InputError(f"array shape {array.shape} differs from the image shape {record.original_shape}")
        interp = record.config.get("interpolation", "linear") if kind == "field" else "linear"
        can, can_aff = to_ras(np.asarray(array, np.float32), np.asarray(record.original_affine))
        res = resample_to_grid(can, can_aff, record.resampled_shape, np.asarray(record.resampled_affine), interp)
        out = crop_pad(res, record.box, record.pads)
        return (out > 0.5) if kind == "mask" else out.astype(np.float32)

    # -- inverse ----------------------------------------------------------
    def inverse(self, array: np.ndarray, record: PreprocessRecord, kind: str = "image") -> np.ndarray:
        """Map a model-space array back onto the original file's grid.

        ``kind``: ``image`` (de-normalised, linear interpolation, float32),
        ``map`` (linear interpolation, values kept, float32) or ``mask``
        (uint8, a voxel is set when it is more than half covered).
        """
        if kind not in ("image", "map", "mask"):
            raise ValueError(f"kind must be image, map or mask, got {kind!r}")
        array = np.asarray(array, dtype=np.float32)
        if tuple(array.shape) != tuple(record.model_shape):
            raise ValueError(f"array shape {array.shape} is not the model shape {record.model_shape}")
        res = uncrop_unpad(array, record.box, record.pads, tuple(record.resampled_shape))
        if kind == "image":
            res = denormalize(res, record.norm)
            fill = record.norm.offset
            outside = np.ones(record.resampled_shape, dtype=bool)
            outside[tuple(slice(a, b) for a, b in record.box)] = False
            res[outside] = fill
        interp = "linear" if kind != "image" else record.config.get("interpolation", "linear")
        can = resample_to_grid(res, np.asarray(record.resampled_affine), tuple(record.canonical_shape),
                               np.asarray(record.canonical_affine), interp)
        out = from_ras(can, np.asarray(record.original_affine))
        if kind == "mask":
            return (out > 0.5).astype(np.uint8)
        return out.astype(np.float32)
