"""Invertible preprocessing: orientation, spacing, brain mask, normalisation, crop/pad."""

from medhdiff.preprocess.mask import auto_mask, compute_mask, otsu_mask
from medhdiff.preprocess.normalize import NormParams, denormalize, fit_normalization, normalize
from medhdiff.preprocess.orientation import from_ras, to_ras
from medhdiff.preprocess.pipeline import Preprocessed, PreprocessConfig, Preprocessor, PreprocessRecord
from medhdiff.preprocess.resample import grid_with_spacing, resample_to_grid

__all__ = [
    "NormParams",
    "PreprocessConfig",
    "PreprocessRecord",
    "Preprocessed",
    "Preprocessor",
    "auto_mask",
    "compute_mask",
    "denormalize",
    "fit_normalization",
    "from_ras",
    "grid_with_spacing",
    "normalize",
    "otsu_mask",
    "resample_to_grid",
    "to_ras",
]
