"""Noise-level estimation for magnitude MR images (Rician-aware).

Two estimators:

* background: outside the head, a magnitude image is Rayleigh-distributed,
  so ``sigma = sqrt(mean(y^2) / 2)`` over background voxels;
* wavelet MAD: inside the brain, the finest diagonal Haar sub-band (HHH)
  holds almost only noise, so ``sigma = median(|HHH|) / 0.6745``
  (Donoho's robust estimator). This works for skull-stripped scans, whose
  background is exactly zero.

``estimate_sigma`` picks the background when there is enough of it that is
not exactly zero, and the wavelet estimate otherwise.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion


def haar_hhh(data: np.ndarray) -> np.ndarray:
    """Finest diagonal Haar detail coefficients (orthonormal, so white noise keeps its sigma)."""
    x = np.asarray(data, dtype=np.float64)
    x = x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2, : x.shape[2] // 2 * 2]
    for axis in range(3):
        even = np.take(x, np.arange(0, x.shape[axis], 2), axis=axis)
        odd = np.take(x, np.arange(1, x.shape[axis], 2), axis=axis)
        x = (even - odd) / np.sqrt(2.0)
    return x


def wavelet_sigma(data: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Robust (median absolute deviation) noise sigma from the HHH sub-band inside ``mask``."""
    hhh = haar_hhh(data)
    if mask is not None:
        m = np.asarray(mask, bool)
        m = m[: m.shape[0] // 2 * 2, : m.shape[1] // 2 * 2, : m.shape[2] // 2 * 2]
        # a coefficient counts when its whole 2x2x2 block is inside the mask
        m = m.reshape(m.shape[0] // 2, 2, m.shape[1] // 2, 2, m.shape[2] // 2, 2).all(axis=(1, 3, 5))
        values = hhh[m]
    else:
        values = hhh.ravel()
    if values.size < 64:
        return 0.0
    return float(np.median(np.abs(values)) / 0.6745)


def background_sigma(data: np.ndarray, head_mask: np.ndarray) -> float | None:
    """Rayleigh estimate from voxels well outside the head; ``None`` if there are too few."""
    outside = ~binary_dilation(np.asarray(head_mask, bool), iterations=3)
    values = np.asarray(data, np.float64)[outside]
    values = values[values != 0]
    if values.size < 1000:
        return None
    # trim the bright tail (ghosting, other structures) before the moment estimate
    values = values[values <= np.percentile(values, 99)]
    return float(np.sqrt(np.mean(values**2) / 2.0))


def estimate_sigma(data: np.ndarray, brain_mask: np.ndarray, head_mask: np.ndarray | None = None) -> tuple[float, str]:
    """Noise sigma in the units of ``data``, and the method used (``background`` or ``wavelet``)."""
    head = brain_mask if head_mask is None else head_mask
    bg = background_sigma(data, head)
    if bg is not None and bg > 0:
        return bg, "background"
    inner = binary_erosion(np.asarray(brain_mask, bool), iterations=2)
    if inner.sum() < 512:
        inner = np.asarray(brain_mask, bool)
    return wavelet_sigma(data, inner), "wavelet"


def rician_bias_correct(estimate: np.ndarray, sigma: float) -> np.ndarray:
    """Remove the Rician floor from a denoised magnitude: ``sqrt(max(m^2 - sigma^2, 0))``.

    A magnitude image's mean is about ``sqrt(A^2 + sigma^2)`` for a true
    intensity ``A`` (exact at high SNR, a fair approximation below), so an
    estimate of the mean is mapped back to ``A``.
    """
    est = np.asarray(estimate, np.float32)
    return np.sign(est) * np.sqrt(np.maximum(est.astype(np.float64) ** 2 - float(sigma) ** 2, 0.0)).astype(np.float32)
