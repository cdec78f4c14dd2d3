"""PNG figures for people: anomaly overlays and before/after panels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medhdiff.io.atomic import atomic_path
from medhdiff.preprocess.orientation import to_ras
from medhdiff.synth.preview import orthogonal_slices, save_slice_grid

_PANEL = 256


def _ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return to_ras(np.asarray(array, np.float32), affine)[0]


def _ras_index(ijk, affine: np.ndarray, shape) -> list[int]:
    """Voxel index of the original grid -> index in the RAS-reoriented array."""
    from nibabel import orientations as o

    ornt = o.io_orientation(affine)
    out = [0, 0, 0]
    for axis, (new_axis, flip) in enumerate(ornt):
        v = float(ijk[axis])
        if flip < 0:
            v = shape[axis] - 1 - v
        out[int(new_axis)] = int(round(v))
    return out


def save_overlay_png(image: np.ndarray, score: np.ndarray, mask: np.ndarray, affine: np.ndarray, path: str | Path,
                     centre_voxel=None, title: str = "") -> Path:
    """Three orthogonal slices through ``centre_voxel`` (original grid) with the map as a heat overlay
    and the mask outline in cyan."""
    from PIL import Image, ImageDraw
    from scipy.ndimage import binary_erosion

    img_r, sc_r, m_r = _ras(image, affine), _ras(score, affine), _ras(mask, affine) > 0
    centre = _ras_index(centre_voxel, affine, image.shape) if centre_voxel is not None else None
    nz = img_r[img_r > 0]
    hi = float(np.percentile(nz, 99.5)) if nz.size else 1.0
    s_hi = float(np.percentile(sc_r[sc_r > 0], 99.9)) if (sc_r > 0).any() else 1.0
    canvas = Image.new("RGB", (3 * _PANEL, _PANEL + 18), (0, 0, 0))
    for c, (g, s, m) in enumerate(zip(orthogonal_slices(img_r, centre), orthogonal_slices(sc_r, centre),
                                      orthogonal_slices(m_r.astype(np.uint8), centre))):
        grey = np.clip(g / hi, 0, 1)
        rgb = np.repeat(grey[..., None], 3, axis=2)
        a = np.clip(s / max(s_hi, 1e-9), 0, 1)[..., None]
        heat = np.stack([np.ones_like(a[..., 0]), np.clip(a[..., 0] * 1.5 - 0.3, 0, 1), np.zeros_like(a[..., 0])], -1)
        rgb = rgb * (1 - 0.6 * a) + heat * 0.6 * a
        edge = (m > 0) & ~binary_erosion(m > 0)
        rgb[edge] = (0.0, 1.0, 1.0)
        tile = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8), "RGB")
        scale = _PANEL / max(tile.width, tile.height)
        size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
        tile = tile.resize(size, Image.BILINEAR)
        canvas.paste(tile, (c * _PANEL + (_PANEL - size[0]) // 2, 18 + (_PANEL - size[1]) // 2))
    if title:
        ImageDraw.Draw(canvas).text((4, 3), title, fill=(255, 255, 0))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def save_panels_png(volumes: list[np.ndarray], affine: np.ndarray, path: str | Path, titles: list[str]) -> Path:
    """Rows of orthogonal mid slices (e.g. input / denoised / residual), reoriented for display."""
    with atomic_path(path) as tmp:
        save_slice_grid([_ras(v, affine) for v in volumes], tmp, titles=titles)
    return Path(path)
