"""PNG previews of 3D volumes: three orthogonal mid slices per volume.

Used by the CLI ``--png`` options and for eyeballing synthetic brains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["save_slice_grid", "orthogonal_slices"]

_PANEL = 192  # height/width of the square box each slice is fitted into, in pixels
_TITLE_H = 16


def orthogonal_slices(vol: np.ndarray, centre: Sequence[int] | None = None) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices of a RAS-oriented volume, ready to display.

    Rows run top to bottom, columns left to right on screen.  Axial and coronal
    slices show the subject's right on the viewer's right (neurological
    convention); the sagittal slice shows anterior on the right.  Superior is up
    in coronal and sagittal slices, anterior is up in axial slices.
    """
    vol = np.asarray(vol)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {vol.shape}")
    if centre is None:
        centre = [s // 2 for s in vol.shape]
    x, y, z = (int(np.clip(c, 0, s - 1)) for c, s in zip(centre, vol.shape))
    axial = vol[:, :, z].T[::-1, :]  # rows: y (anterior up), cols: x
    coronal = vol[:, y, :].T[::-1, :]  # rows: z (superior up), cols: x
    sagittal = vol[x, :, :].T[::-1, :]  # rows: z (superior up), cols: y (anterior right)
    return [axial, coronal, sagittal]


def _to_uint8(sl: np.ndarray, hi: float) -> np.ndarray:
    sl = np.nan_to_num(sl.astype(np.float32), nan=0.0)
    if hi <= 0:
        hi = 1.0
    return (np.clip(sl / hi, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_slice_grid(
    volumes: list[np.ndarray],
    path: str | Path,
    titles: list[str] | None = None,
    masks: list[np.ndarray | None] | None = None,
    centres: list[Sequence[int] | None] | None = None,
) -> Path:
    """Write a PNG with one row per volume and three orthogonal mid slices per row.

    Args:
        volumes: RAS-oriented 3D arrays (any shapes; each is shown at its own size,
            fitted into a fixed-size panel).
        path: output PNG path.
        titles: optional caption per volume.
        masks: optional binary mask per volume (``None`` entries allowed), drawn as a
            semi-transparent red overlay.  Must match the volume's shape.
        centres: optional voxel (x, y, z) per volume through which the three slices
            pass (``None`` entries allowed).

    Each volume is scaled to [0, 1] by its own 99.5th percentile of non-zero voxels.
    Slices go through ``centres[i]`` if given, else through the mask's centre of mass
    when a non-empty mask is given (so that lesions are visible), else through the
    volume centre.
    """
    from PIL import Image, ImageDraw

    if not volumes:
        raise ValueError("no volumes to draw")
    n = len(volumes)
    titles = list(titles) if titles is not None else [""] * n
    masks = list(masks) if masks is not None else [None] * n
    centres = list(centres) if centres is not None else [None] * n
    if len(titles) != n or len(masks) != n or len(centres) != n:
        raise ValueError("titles, masks and centres must have one entry per volume")

    row_h = _PANEL + _TITLE_H
    canvas = Image.new("RGB", (3 * _PANEL, n * row_h), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for r, (vol, title, mask, given) in enumerate(zip(volumes, titles, masks, centres)):
        vol = np.asarray(vol, dtype=np.float32)
        if vol.ndim != 3:
            raise ValueError(f"volume {r} is not 3D: shape {vol.shape}")
        nz = vol[vol > 0]
        hi = float(np.percentile(nz, 99.5)) if nz.size else 1.0
        centre = None
        if mask is not None:
            mask = np.asarray(mask) > 0
            if mask.shape != vol.shape:
                raise ValueError(f"mask {r} shape {mask.shape} != volume shape {vol.shape}")
            if mask.any():
                centre = [int(round(c.mean())) for c in np.nonzero(mask)]
        if given is not None:
            centre = [int(c) for c in given]
        slices = orthogonal_slices(vol, centre)
        mslices = orthogonal_slices(mask.astype(np.uint8), centre) if mask is not None else [None] * 3
        for c, (sl, ms) in enumerate(zip(slices, mslices)):
            grey = _to_uint8(sl, hi)
            rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
            if ms is not None and ms.any():
                sel = ms > 0
                rgb[sel] = 0.55 * rgb[sel] + 0.45 * np.array([255.0, 0.0, 0.0])
            img = Image.fromarray(rgb.astype(np.uint8), "RGB")
            scale = _PANEL / max(img.width, img.height)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.BILINEAR)
            ox = c * _PANEL + (_PANEL - size[0]) // 2
            oy = r * row_h + _TITLE_H + (_PANEL - size[1]) // 2
            canvas.paste(img, (ox, oy))
        if title:
            draw.text((4, r * row_h + 2), str(title), fill=(255, 255, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
