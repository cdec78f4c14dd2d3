"""Regenerate everything in sample_data/ (needs the `data` extra: pip install -e ".[data]").

    python sample_data/make_sample_data.py

Files (2 mm, RAS, float32 images, uint8 masks):
  mni152_t1_2mm.nii.gz            real-derived healthy T1 (MNI ICBM152 2009a, resampled to 2 mm)
  synth_t2.nii.gz                 synthetic healthy T2 (built-in MNI-derived label map)
  synth_flair.nii.gz              synthetic healthy FLAIR
  synth_flair_lesion.nii.gz       synthetic FLAIR with an injected tumour-like lesion
  synth_flair_lesion_mask.nii.gz  its lesion mask
  synth_t2_clean.nii.gz           a clean synthetic T2 ...
  synth_t2_noisy.nii.gz           ... and the same with Rician noise at 5 % of the brain's 99th percentile
Everything is seeded, so a rerun reproduces the same files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _mni_t1() -> Path:
    try:
        import nilearn
    except ImportError:
        sys.exit('this script needs nilearn for the MNI template: pip install -e ".[data]"')
    return Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def main() -> None:
    from medhdiff.io import Volume, load_volume, save_volume
    from medhdiff.preprocess import grid_with_spacing, resample_to_grid, to_ras
    from medhdiff.synth.cohort import synthesize

    def write(data, affine, name, kind="image"):
        path = HERE / name
        save_volume(np.asarray(data), path, Volume(np.asarray(data, np.float32), affine), kind=kind, overwrite=True)
        print(f"wrote {path.relative_to(HERE.parent)} ({path.stat().st_size / 1e3:.0f} kB)")

    mni = load_volume(_mni_t1())
    data, aff = to_ras(mni.data, mni.affine)
    shape, aff2 = grid_with_spacing(data.shape, aff, (2.0, 2.0, 2.0))
    t1 = resample_to_grid(data, aff, shape, aff2, "linear")
    write(np.round(np.clip(t1, 0, None), 2), aff2, "mni152_t1_2mm.nii.gz")

    t2 = next(synthesize(1, "t2", seed=101, noise_range=(0.0, 0.0)))
    write(np.round(t2.image, 4), t2.affine, "synth_t2.nii.gz")
    flair = next(synthesize(1, "flair", seed=102, noise_range=(0.0, 0.0)))
    write(np.round(flair.image, 4), flair.affine, "synth_flair.nii.gz")
    les = next(synthesize(1, "flair", seed=103, lesions=True, noise_range=(0.0, 0.0)))
    write(np.round(les.image, 4), les.affine, "synth_flair_lesion.nii.gz")
    write(les.lesion_mask, les.affine, "synth_flair_lesion_mask.nii.gz", kind="mask")

    clean = next(synthesize(1, "t2", seed=104, noise_range=(0.0, 0.0)))
    brain = clean.brain_mask > 0
    sigma = 0.05 * float(np.percentile(clean.image[brain], 99))
    rng = np.random.default_rng(104)
    noisy = np.sqrt((clean.image + rng.normal(0, sigma, clean.image.shape)) ** 2
                    + rng.normal(0, sigma, clean.image.shape) ** 2)
    write(np.round(clean.image, 4), clean.affine, "synth_t2_clean.nii.gz")
    write(np.round(noisy, 4).astype(np.float32), clean.affine, "synth_t2_noisy.nii.gz")


if __name__ == "__main__":
    main()
