"""Synthetic cohorts: many seeded cases (brain, brain mask, optional lesion) from label maps."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medhdiff.errors import InputError


@dataclass
class SynthCase:
    index: int
    image: np.ndarray
    brain_mask: np.ndarray
    lesion_mask: np.ndarray
    affine: np.ndarray
    contrast: str
    labelmap: str
    info: dict[str, Any] = field(default_factory=dict)


def _labelmaps(folder: str | Path | None) -> list[tuple[str, Any]]:
    from medhdiff.synth.builtin import list_labelmaps

    if folder is None:
        return [("builtin", None)]
    paths = list_labelmaps(folder) if Path(folder).is_dir() else []
    if not paths:
        raise InputError(f"--labelmaps {folder}: no label maps (*.nii, *.nii.gz) found")
    return [(p.name, p) for p in paths]


def synthesize(n: int, contrast: str = "t1", *, lesions: bool = False, labelmaps: str | Path | None = None,
               seed: int = 0, spacing: float = 2.0, lesion_kind: str = "tumor",
               noise_range: tuple[float, float] = (0.0, 0.05),
               lesion_contrast: float | tuple[float, float] = 1.0) -> Iterator[SynthCase]:
    """Yield ``n`` cases; case ``i`` depends only on (``seed``, ``i``) and the options.

    ``lesion_contrast`` is the lesions' conspicuity (``LesionInjector``'s
    ``contrast_scale``): one value, or a ``(low, high)`` range drawn per lesion.
    """
    import nibabel as nib

    from medhdiff.synth.builtin import load_builtin_labelmap
    from medhdiff.synth.generator import CONTRASTS, HealthyBrainGenerator
    from medhdiff.synth.labels import CEREBRAL_WM
    from medhdiff.synth.lesions import LesionInjector

    if n < 1:
        raise InputError("--n must be >= 1")
    if contrast not in CONTRASTS:
        raise InputError(f"--contrast must be one of {', '.join(CONTRASTS)}, got {contrast!r}")
    if spacing <= 0:
        raise InputError("--spacing must be positive")
    sources = _labelmaps(labelmaps)
    loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    generator = HealthyBrainGenerator(contrast=contrast, spacing=spacing, noise_range=noise_range)
    try:
        injector = LesionInjector(kind=lesion_kind, contrast_scale=lesion_contrast) if lesions else None
    except ValueError as exc:
        raise InputError(f"--lesion-kind / --lesion-contrast: {exc}") from None
    for i in range(n):
        rng = np.random.default_rng([int(seed), i])
        name, path = sources[int(rng.integers(len(sources)))]
        if name not in loaded:
            if path is None:
                loaded[name] = load_builtin_labelmap()
            else:
                img = nib.load(str(path))
                loaded[name] = (np.asarray(img.dataobj).astype(np.int16), img.affine)
        labels, affine = loaded[name]
        res = generator.generate(labels, affine, seed=int(rng.integers(2**31 - 1)))
        image = res.image
        lesion = np.zeros(image.shape, dtype=np.uint8)
        info: dict[str, Any] = {"generator": res.params}
        if injector is not None:
            image, lesion, linfo = injector.inject(image, res.brain_mask, res.affine, res.contrast,
                                                   seed=int(rng.integers(2**31 - 1)),
                                                   wm_mask=res.labels == CEREBRAL_WM)
            info["lesion"] = linfo
        yield SynthCase(i, image.astype(np.float32), res.brain_mask.astype(np.uint8), lesion.astype(np.uint8),
                        res.affine, res.contrast, name, info)
