"""Robust percentile intensity normalisation with stored, invertible parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class NormParams:
    """``normalised = (raw - offset) / scale``."""

    offset: float
    scale: float
    lower_percentile: float | None
    upper_percentile: float

    def to_dict(self) -> dict:
        return asdict(self)


def fit_normalization(data: np.ndarray, mask: np.ndarray | None, upper_percentile: float = 99.5,
                      lower_percentile: float | None = None) -> NormParams:
    """Percentiles of the voxels inside ``mask``.

    With ``lower_percentile=None`` the offset is 0, so zero stays zero and the
    absolute intensity scale is kept (a scan's background remains 0).
    """
    values = data[mask] if mask is not None and mask.any() else data.ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return NormParams(0.0, 1.0, lower_percentile, upper_percentile)
    offset = float(np.percentile(values, lower_percentile)) if lower_percentile is not None else 0.0
    top = float(np.percentile(values, upper_percentile))
    scale = top - offset
    if not np.isfinite(scale) or scale <= 1e-12 * max(1.0, abs(top)):
        spread = float(values.max() - offset)
        scale = spread if spread > 0 else 1.0
    return NormParams(offset, float(scale), lower_percentile, upper_percentile)


def normalize(data: np.ndarray, params: NormParams) -> np.ndarray:
    return ((np.asarray(data, np.float32) - params.offset) / params.scale).astype(np.float32)


def denormalize(data: np.ndarray, params: NormParams) -> np.ndarray:
    return (np.asarray(data, np.float32) * params.scale + params.offset).astype(np.float32)
