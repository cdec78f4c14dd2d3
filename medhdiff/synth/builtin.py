"""The built-in label map: a coarse FreeSurfer-style segmentation of the MNI template.

The shipped file ``data/mni152_labels_2mm.nii.gz`` is derived from the MNI ICBM152
2009a non-linear symmetric template (T1 and grey/white-matter probability maps)
as distributed inside the ``nilearn`` wheel; see ``data/NOTICE``.  It lets the
synthesis run (and the tests pass) without any external data.

Rebuild it with ``python -m medhdiff.synth.builtin`` (needs ``nilearn``, the
``data`` extra); loading it at runtime does not need nilearn.

How the labels are derived (deliberately simple, and only approximately
anatomical):

* brain mask: non-zero voxels of the skull-stripped template T1, holes filled;
* tissue: arg-max of (WM, GM, CSF = 1 - GM - WM) probabilities -> 2 / 3 / 24;
* lateral ventricles (4): CSF connected components that do not reach the outer
  surface of the brain mask (this also catches the 3rd ventricle);
* cerebellum (7 WM / 8 cortex): tissue below a tent-shaped surface that
  approximates the tentorium in MNI coordinates, posterior to the brain stem;
* brain stem (16): tissue in a midline box below the midbrain;
* deep grey matter: GM voxels inside a box around the basal ganglia and
  thalamus, split by position into thalamus (10), caudate (11) and putamen (12).
  Pallidum, hippocampus, amygdala etc. are not separated (they keep the tissue
  label the probability maps give them).

The result is written at 2 mm in RAS orientation as uint8, after a majority
vote over 2x2x2 blocks of the 1 mm segmentation.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import numpy as np

from . import labels as L

__all__ = [
    "BUILTIN_FILENAME",
    "build_mni_labelmap",
    "load_builtin_labelmap",
    "builtin_labelmap_path",
    "list_labelmaps",
]

BUILTIN_FILENAME = "mni152_labels_2mm.nii.gz"
_MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    "csf": "mni_icbm152_csf_tal_nlin_sym_09a_converted.nii.gz",  # not in every nilearn
}


# --------------------------------------------------------------------------- runtime


def builtin_labelmap_path():
    """Traversable pointing at the shipped built-in label map."""
    return resources.files("medhdiff.synth").joinpath("data", BUILTIN_FILENAME)


def load_builtin_labelmap() -> tuple[np.ndarray, np.ndarray]:
    """Load the shipped MNI-derived label map.

    Returns:
        ``(labels, affine)``: an int16 array (RAS, 2 mm) and its 4x4 affine.
    """
    import nibabel as nib

    ref = builtin_labelmap_path()
    with resources.as_file(ref) as path:
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"built-in label map {path} is missing; rebuild it with "
                "`python -m medhdiff.synth.builtin` (needs nilearn)"
            )
        img = nib.load(str(path))
        labels = np.asarray(img.dataobj).astype(np.int16)
        affine = np.asarray(img.affine, dtype=np.float64)
    return labels, affine


def list_labelmaps(directory: str | Path) -> list[Path]:
    """Sorted ``*.nii`` / ``*.nii.gz`` files directly inside ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"not a directory: {directory}")
    files = [
        p
        for p in directory.iterdir()
        if p.is_file() and (p.name.endswith(".nii") or p.name.endswith(".nii.gz"))
    ]
    return sorted(files)


# --------------------------------------------------------------------------- building


def _nilearn_data_dir() -> Path:
    try:
        import nilearn.datasets
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rebuilding the built-in label map needs nilearn (pip install 'medhdiff[data]')"
        ) from exc
    return Path(nilearn.datasets.__file__).parent / "data"


def _mni_coords(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, ...]:
    """World (MNI mm) coordinates of every voxel, as three broadcastable arrays."""
    # The nilearn template is axis-aligned RAS; use the diagonal + translation.
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError("expected an axis-aligned template affine")
    axes = []
    for d in range(3):
        coord = affine[d, d] * np.arange(shape[d], dtype=np.float32) + affine[d, 3]
        s = [1, 1, 1]
        s[d] = shape[d]
        axes.append(coord.reshape(s))
    return tuple(axes)


def _segment_1mm(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, csf: np.ndarray | None,
                 affine: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    mask = ndi.binary_fill_holes(t1 > 0)
    if csf is None:
        csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    cls = np.argmax(np.stack([wm, gm, csf]), axis=0)  # 0 WM, 1 GM, 2 CSF
    seg = np.zeros(t1.shape, dtype=np.uint8)
    seg[mask & (cls == 0)] = L.CEREBRAL_WM
    seg[mask & (cls == 1)] = L.CEREBRAL_CORTEX
    seg[mask & (cls == 2)] = L.CSF

    x, y, z = _mni_coords(t1.shape, affine)
    ax = np.abs(x)

    # Ventricles: CSF components that do not touch a 3 mm shell at the brain surface.
    csf_mask = seg == L.CSF
    comp, n = ndi.label(csf_mask)
    if n:
        shell = mask & ~ndi.binary_erosion(mask, iterations=3)
        outer = np.unique(comp[shell & csf_mask])
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        inner = np.setdiff1d(np.nonzero(sizes >= 100)[0], np.concatenate([[0], outer]))
        seg[np.isin(comp, inner)] = L.LATERAL_VENTRICLE

    tissue = (seg == L.CEREBRAL_WM) | (seg == L.CEREBRAL_CORTEX)

    # Brain stem: midline box below the thalamus, in front of the 4th ventricle.
    stem = tissue & (ax <= 13) & (y > -44) & (y < -8) & (z < -8)
    # Cerebellum: below a tent whose apex (z=0 at y=-60) slopes down laterally and
    # posteriorly; anterior limit y < -40 (medially) widening to y < -32 laterally.
    tent = -2.0 - 0.7 * ax - 0.66 * np.clip(-60.0 - y, 0.0, None)
    front = -42.0 + 0.35 * np.clip(ax - 10.0, 0.0, None)
    cereb = tissue & (z < tent) & (y < front) & ~stem
    seg[stem] = L.BRAIN_STEM
    seg[cereb & (seg == L.CEREBRAL_WM)] = L.CEREBELLUM_WM
    seg[cereb & (seg == L.CEREBRAL_CORTEX)] = L.CEREBELLUM_CORTEX

    # Deep grey matter: GM inside a box around the basal ganglia and thalamus.
    gm_mask = seg == L.CEREBRAL_CORTEX
    deep = gm_mask & (ax >= 2) & (ax <= 31) & (y > -38) & (y < 26) & (z > -10) & (z < 22)
    # keep only voxels at least 12 mm from the brain surface (excludes insula/cortex)
    depth = ndi.distance_transform_edt(mask)
    deep &= depth >= 12
    # The insular cortex lies lateral to x=32; cingulate cortex is medial (|x|<8) above z=8.
    deep &= ~((ax < 8) & (z > 8) & (y > -10))
    thal = deep & (y < -6) & (ax <= 22)
    caud = deep & ~thal & (ax < 17) & (z > -2)
    put = deep & ~thal & ~caud & (ax >= 17)
    seg[thal] = L.THALAMUS
    seg[caud] = L.CAUDATE
    seg[put] = L.PUTAMEN
    return seg


def _majority_downsample(seg: np.ndarray, factor: int) -> np.ndarray:
    """Most frequent label in each ``factor``^3 block (ties -> smallest code)."""
    if factor == 1:
        return seg.copy()
    pad = [(0, (-s) % factor) for s in seg.shape]
    seg = np.pad(seg, pad)
    codes = np.unique(seg)
    out_shape = tuple(s // factor for s in seg.shape)
    best = np.zeros(out_shape, dtype=np.int32) - 1
    out = np.zeros(out_shape, dtype=seg.dtype)
    for code in codes:
        m = (seg == code).reshape(out_shape[0], factor, out_shape[1], factor, out_shape[2], factor)
        count = m.sum(axis=(1, 3, 5))
        upd = count > best
        best[upd] = count[upd]
        out[upd] = code
    return out


def build_mni_labelmap(spacing: float = 2.0):
    """Derive a FreeSurfer-style label map from nilearn's MNI ICBM152 2009a files.

    Args:
        spacing: output voxel size in mm; must be a positive integer multiple of the
            template's 1 mm.

    Returns:
        A ``nibabel.Nifti1Image`` (uint8, RAS).
    """
    import nibabel as nib

    factor = int(round(float(spacing)))
    if factor < 1 or abs(factor - float(spacing)) > 1e-6:
        raise ValueError(f"spacing must be a positive whole number of mm, got {spacing}")
    ddir = _nilearn_data_dir()
    imgs = {}
    for key, name in _MNI_FILES.items():
        path = ddir / name
        if path.is_file():
            imgs[key] = nib.as_closest_canonical(nib.load(str(path)))
        elif key != "csf":
            raise FileNotFoundError(f"nilearn does not ship {name} (looked in {ddir})")
    affine = imgs["t1"].affine
    t1 = np.asarray(imgs["t1"].dataobj, dtype=np.float32)
    scale = {}
    prob = {}
    for key in ("gm", "wm", "csf"):
        if key in imgs:
            arr = np.asarray(imgs[key].dataobj, dtype=np.float32)
            scale[key] = 255.0 if arr.max() > 1.5 else 1.0
            prob[key] = arr / scale[key]
    seg = _segment_1mm(t1, prob["gm"], prob["wm"], prob.get("csf"), affine)
    seg = _majority_downsample(seg, factor)
    new_aff = affine.copy()
    new_aff[:3, :3] = affine[:3, :3] * factor
    # centre of the first block: half a block minus half a voxel from the first voxel
    new_aff[:3, 3] = affine[:3, :3] @ np.full(3, (factor - 1) / 2.0) + affine[:3, 3]
    img = nib.Nifti1Image(seg.astype(np.uint8), new_aff)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm")
    img.set_qform(new_aff, code=4)  # MNI
    img.set_sform(new_aff, code=4)
    return img


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "data" / BUILTIN_FILENAME,
    )
    args = parser.parse_args(argv)
    import nibabel as nib

    img = build_mni_labelmap(args.spacing)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(args.output))
    data = np.asarray(img.dataobj)
    codes, counts = np.unique(data, return_counts=True)
    vox_ml = abs(np.linalg.det(img.affine[:3, :3])) / 1000.0
    print(f"wrote {args.output} shape={data.shape} ({args.output.stat().st_size / 1024:.0f} KiB)")
    for c, n in zip(codes, counts):
        if c:
            print(f"  {int(c):3d} {L.LABEL_NAMES.get(int(c), '?'):24s} {n * vox_ml:8.1f} mL")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
