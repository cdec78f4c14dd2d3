"""Evaluation metrics for volumes: image fidelity and voxel-wise detection.

Everything here is plain numpy/scipy and works on arrays of any shape
(the image metrics assume the array axes are spatial axes).

Conventions
-----------
* ``mask`` (optional) restricts a metric to the voxels where it is non-zero.
* NaN values are treated as 0 (a NaN in a score map never ranks anywhere
  special; a NaN intensity counts as background).
* For detection metrics a voxel is predicted positive when ``score >= t``.
  Labels are positive where they are non-zero.
* Undefined values are reported as ``nan`` (e.g. AUROC when the labels hold a
  single class); a perfect PSNR (identical images) is ``inf``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = [
    "auprc",
    "auroc",
    "best_dice",
    "dice",
    "evaluate_arrays",
    "psnr",
    "ssim",
]

K1 = 0.01
K2 = 0.03


# --------------------------------------------------------------------------- helpers


def _as_float(a: Any, keep_float_dtype: bool = False) -> np.ndarray:
    """float64 (or the input's own float dtype) copy-or-view with NaN replaced by 0."""
    arr = np.asarray(a)
    if not (keep_float_dtype and np.issubdtype(arr.dtype, np.floating)):
        arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        arr = np.where(np.isnan(arr), 0.0, arr)
    return arr


def _as_bool(a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return np.nan_to_num(arr, nan=0.0) != 0
    return arr != 0


def _check_shapes(**arrays: np.ndarray | None) -> None:
    named = [(k, v) for k, v in arrays.items() if v is not None]
    first_name, first = named[0]
    for name, arr in named[1:]:
        if arr.shape != first.shape:
            raise ValueError(
                f"shape mismatch: {first_name} has shape {tuple(first.shape)} "
                f"but {name} has shape {tuple(arr.shape)}"
            )


def _mask_of(mask: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = _as_bool(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"shape mismatch: mask has shape {tuple(m.shape)} but the images have shape {tuple(shape)}")
    if not m.any():
        raise ValueError("the mask is empty (no non-zero voxels)")
    return m


def _default_range(ref: np.ndarray, mask: np.ndarray | None) -> float:
    vals = ref[mask] if mask is not None else ref
    if vals.size == 0:
        raise ValueError("no voxels to evaluate")
    return float(vals.max()) - float(vals.min())


def _tie_groups(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group voxels by distinct score.

    Returns ``(values, counts, positives)``: the distinct scores in ascending
    order, how many voxels hold each, and how many of those are positive.
    Costs two sorts (all scores, then the positives' scores), no argsort.
    """
    s = _as_float(scores, keep_float_dtype=True).ravel()  # float32 maps sort as float32: exact, faster
    y = _as_bool(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"shape mismatch: {s.size} scores but {y.size} labels")
    if s.size == 0:
        raise ValueError("no voxels to evaluate")
    s_sorted = np.sort(s)
    starts = np.concatenate(([0], np.flatnonzero(s_sorted[1:] != s_sorted[:-1]) + 1))
    values = s_sorted[starts]
    counts = np.diff(np.append(starts, s.size))
    pos_sorted = np.sort(s[y])
    positives = np.diff(np.searchsorted(pos_sorted, values, side="right"), prepend=0)
    return values, counts.astype(np.int64), positives.astype(np.int64)


# --------------------------------------------------------------------------- image metrics


def psnr(pred: Any, ref: Any, mask: Any = None, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range**2 / MSE)``.

    The MSE is taken over the voxels of ``mask`` (all voxels without one).
    ``data_range`` defaults to ``max - min`` of ``ref`` inside the mask.
    Identical inputs give ``inf``.
    """
    x, y = _as_float(pred), _as_float(ref)
    _check_shapes(pred=x, ref=y)
    m = _mask_of(mask, y.shape)
    diff = (x - y)[m] if m is not None else (x - y)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    rng = _default_range(y, m) if data_range is None else float(data_range)
    if rng <= 0:
        raise ValueError("PSNR needs a positive data range (the reference is constant inside the mask); "
                         "pass data_range")
    return float(10.0 * np.log10(rng * rng / mse))


def ssim(pred: Any, ref: Any, mask: Any = None, data_range: float | None = None, sigma: float = 1.5,
         truncate: float = 3.5) -> float:
    """Structural similarity (Wang et al., IEEE TIP 2004) with a Gaussian window, in 3D.

    This is the standard formula

        SSIM = (2 mu_x mu_y + C1) (2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (s_x^2 + s_y^2 + C2))

    with C1 = (K1 L)^2, C2 = (K2 L)^2, K1 = 0.01, K2 = 0.03 and L = ``data_range``
    (default: ``max - min`` of ``ref`` inside the mask). Local means, variances
    and the covariance are Gaussian-weighted (``scipy.ndimage.gaussian_filter``,
    standard deviation ``sigma`` voxels, window radius ``int(truncate*sigma+0.5)``,
    i.e. an 11-voxel window for the defaults; reflecting borders; population
    rather than sample statistics). The SSIM map is computed over the whole
    array (so windows see voxels just outside the mask) and then averaged over
    the voxels of ``mask`` only (all voxels without a mask). Identical inputs give 1.
    """
    if sigma <= 0:
        raise ValueError("sigma must be positive")
    x, y = _as_float(pred), _as_float(ref)
    _check_shapes(pred=x, ref=y)
    m = _mask_of(mask, y.shape)
    if np.array_equal(x, y):
        return 1.0
    rng = _default_range(y, m) if data_range is None else float(data_range)
    if rng <= 0:
        raise ValueError("SSIM needs a positive data range (the reference is constant inside the mask); "
                         "pass data_range")

    if m is not None:
        # Crop to the mask's bounding box plus one window radius: the filtered
        # values at mask voxels only depend on inputs within that radius, and
        # borders that are real array borders stay where they were.
        radius = int(truncate * sigma + 0.5)
        idx = np.nonzero(m)
        box = tuple(slice(max(int(i.min()) - radius, 0), int(i.max()) + radius + 1) for i in idx)
        x, y, m = x[box], y[box], m[box]

    def smooth(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma=sigma, mode="reflect", truncate=truncate)

    c1 = (K1 * rng) ** 2
    c2 = (K2 * rng) ** 2
    mu_x, mu_y = smooth(x), smooth(y)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x = smooth(x * x) - mu_xx
    var_y = smooth(y * y) - mu_yy
    cov = smooth(x * y) - mu_xy
    smap = ((2 * mu_xy + c1) * (2 * cov + c2)) / ((mu_xx + mu_yy + c1) * (var_x + var_y + c2))
    return float(smap[m].mean() if m is not None else smap.mean())


# --------------------------------------------------------------------------- detection metrics


def dice(pred_mask: Any, ref_mask: Any) -> float:
    """Dice overlap ``2|A & B| / (|A| + |B|)`` of two masks (non-zero = inside); 1.0 when both are empty."""
    a, b = _as_bool(pred_mask), _as_bool(ref_mask)
    _check_shapes(pred_mask=a, ref_mask=b)
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve via the Mann-Whitney rank statistic.

    Ranks are 1-based with ties given their average rank, so a tied
    positive/negative pair counts 1/2 (identical to the trapezoidal ROC area).
    Returns ``nan`` when the labels hold only one class.
    """
    return _auroc_groups(*_tie_groups(scores, labels))


def auprc(scores: Any, labels: Any) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over every distinct score threshold.

    Voxels with equal scores enter together (one threshold per distinct
    score), so the result does not depend on the order of tied voxels.
    Returns ``nan`` when there is no positive voxel.
    """
    return _auprc_groups(*_tie_groups(scores, labels))


def best_dice(scores: Any, labels: Any) -> tuple[float, float]:
    """Best Dice over all thresholds ``score >= t`` and the threshold ``t`` reaching it.

    Every distinct score is tried (sorting plus cumulative sums, so 10^7
    voxels take about a second). Ties between thresholds go to the highest.
    With no positive voxel the best is 1.0, reached by predicting nothing
    (threshold ``inf``).
    """
    return _best_dice_groups(*_tie_groups(scores, labels))


def _auroc_groups(values: np.ndarray, counts: np.ndarray, pos: np.ndarray) -> float:
    n_pos = int(pos.sum())
    n_neg = int(counts.sum()) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    below = np.cumsum(counts) - counts  # voxels with a strictly lower score
    mid_rank = below + (counts + 1) / 2.0  # average 1-based rank of the tie group
    rank_sum = float(np.dot(pos.astype(np.float64), mid_rank))
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (float(n_pos) * float(n_neg))


def _descending(values: np.ndarray, counts: np.ndarray, pos: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Thresholds (distinct scores, descending) with cumulative TP and predicted-positive counts."""
    return values[::-1], np.cumsum(pos[::-1]), np.cumsum(counts[::-1]), int(pos.sum())


def _auprc_groups(values: np.ndarray, counts: np.ndarray, pos: np.ndarray) -> float:
    _, tp, pp, n_pos = _descending(values, counts, pos)
    if n_pos == 0:
        return math.nan
    precision = tp / pp
    recall_step = np.diff(tp, prepend=0) / n_pos
    return float(np.dot(recall_step, precision))


def _best_dice_groups(values: np.ndarray, counts: np.ndarray, pos: np.ndarray) -> tuple[float, float]:
    thresholds, tp, pp, n_pos = _descending(values, counts, pos)
    if n_pos == 0:
        return 1.0, math.inf
    d = 2.0 * tp / (pp + n_pos)
    i = int(np.argmax(d))
    return float(d[i]), float(thresholds[i])


# --------------------------------------------------------------------------- one call for the CLI


def _is_binary(a: np.ndarray) -> bool:
    return bool(np.all((a == 0) | (a == 1)))


def evaluate_arrays(pred: Any, ref: Any, mask: Any = None, threshold: float | None = None) -> dict[str, Any]:
    """Compare a prediction with a reference and return a flat dict of metrics.

    If ``ref`` is binary (only 0 and 1 inside the mask) it is a segmentation
    and ``pred`` a score map or a mask: ``mode="segmentation"`` with ``auroc``,
    ``auprc``, ``best_dice`` and ``best_dice_threshold``, ``ref_volume_voxels``,
    and, when a threshold applies (``threshold`` given, or 0.5 for a binary
    ``pred``), ``threshold``, ``dice`` (of ``pred >= threshold``) and
    ``pred_volume_voxels``. Otherwise ``mode="image"`` with ``psnr``, ``ssim``,
    ``mse`` and ``data_range``. ``n_voxels`` is the number of voxels evaluated.

    Everything is restricted to ``mask`` when given (for SSIM: the map is
    averaged over the mask). NaNs count as 0. Raises ``ValueError`` on shape
    mismatch or an empty mask.
    """
    x, y = _as_float(pred, keep_float_dtype=True), _as_float(ref, keep_float_dtype=True)
    _check_shapes(pred=x, ref=y)
    m = _mask_of(mask, y.shape)
    xs = x[m] if m is not None else x.ravel()
    ys = y[m] if m is not None else y.ravel()
    if ys.size == 0:
        raise ValueError("no voxels to evaluate")
    segmentation = _is_binary(ys)
    out: dict[str, Any] = {"mode": "segmentation" if segmentation else "image", "n_voxels": int(ys.size)}

    if segmentation:
        labels = ys.astype(bool)
        out["ref_volume_voxels"] = int(np.count_nonzero(labels))
        groups = _tie_groups(xs, labels)  # one sort serves all three
        out["auroc"] = _auroc_groups(*groups)
        out["auprc"] = _auprc_groups(*groups)
        bd, bt = _best_dice_groups(*groups)
        out["best_dice"] = bd
        out["best_dice_threshold"] = bt
        if threshold is None and _is_binary(xs):
            threshold = 0.5
        if threshold is not None:
            predicted = xs >= float(threshold)
            out["threshold"] = float(threshold)
            out["dice"] = dice(predicted, labels)
            out["pred_volume_voxels"] = int(np.count_nonzero(predicted))
    else:
        rng = _default_range(y, m)
        diff = xs.astype(np.float64) - ys
        out["mse"] = float(np.mean(diff * diff))
        out["data_range"] = rng
        out["psnr"] = psnr(x, y, m, data_range=rng)
        out["ssim"] = ssim(x, y, m, data_range=rng)
    return out
