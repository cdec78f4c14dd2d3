"""Crop to a mask's bounding box with a margin, and pad to a multiple of N."""

from __future__ import annotations

import numpy as np


def bounding_box(mask: np.ndarray, margin: tuple[int, int, int]) -> tuple[tuple[int, int], ...]:
    """(start, stop) per axis of the mask's bounding box grown by ``margin`` voxels."""
    if not mask.any():
        return tuple((0, int(s)) for s in mask.shape)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        start = max(0, int(hits[0]) - margin[axis])
        stop = min(mask.shape[axis], int(hits[-1]) + 1 + margin[axis])
        box.append((start, stop))
    return tuple(box)


def pad_amounts(shape: tuple[int, ...], multiple: int) -> tuple[tuple[int, int], ...]:
    """Symmetric (before, after) padding that makes every axis a multiple of ``multiple``."""
    pads = []
    for s in shape[:3]:
        target = int(np.ceil(s / multiple) * multiple) if multiple > 1 else s
        extra = target - s
        pads.append((extra // 2, extra - extra // 2))
    return tuple(pads)


def crop_pad(data: np.ndarray, box, pads, fill: float = 0.0) -> np.ndarray:
    cropped = data[tuple(slice(a, b) for a, b in box)]
    return np.pad(cropped, pads, mode="constant", constant_values=fill)


def uncrop_unpad(data: np.ndarray, box, pads, full_shape: tuple[int, ...], fill: float = 0.0) -> np.ndarray:
    inner = data[tuple(slice(p0, data.shape[i] - p1) for i, (p0, p1) in enumerate(pads))]
    out = np.full(full_shape, fill, dtype=data.dtype)
    out[tuple(slice(a, b) for a, b in box)] = inner
    return out
