"""SynthSeg-style synthesis of healthy brain MR images and lesion injection.

Typical use::

    from medhdiff.synth import HealthyBrainGenerator, LesionInjector, load_builtin_labelmap

    labels, affine = load_builtin_labelmap()          # or any FreeSurfer-style label map
    gen = HealthyBrainGenerator(contrast="flair", seed=0)
    res = gen.generate(labels, affine)                 # SynthResult
    inj = LesionInjector(kind="tumor", volume_ml=(5, 40))
    image, lesion, info = inj.inject(res.image, res.brain_mask, res.affine, res.contrast)
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

# Lazy attribute access (PEP 562) keeps `import medhdiff.synth` light and lets
# `python -m medhdiff.synth.builtin` run without a double-import warning.
_EXPORTS = {
    "labels": ("labels", None),
    "CONTRASTS": ("generator", "CONTRASTS"),
    "HealthyBrainGenerator": ("generator", "HealthyBrainGenerator"),
    "SynthResult": ("generator", "SynthResult"),
    "prepare_label_grid": ("generator", "prepare_label_grid"),
    "LesionInjector": ("lesions", "LesionInjector"),
    "LESION_KINDS": ("lesions", "LESION_KINDS"),
    "DEFAULT_VOLUME_ML": ("lesions", "DEFAULT_VOLUME_ML"),
    "build_mni_labelmap": ("builtin", "build_mni_labelmap"),
    "load_builtin_labelmap": ("builtin", "load_builtin_labelmap"),
    "list_labelmaps": ("builtin", "list_labelmaps"),
    "save_slice_grid": ("preview", "save_slice_grid"),
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from . import labels
    from .builtin import build_mni_labelmap, list_labelmaps, load_builtin_labelmap
    from .generator import CONTRASTS, HealthyBrainGenerator, SynthResult, prepare_label_grid
    from .lesions import DEFAULT_VOLUME_ML, LESION_KINDS, LesionInjector
    from .preview import save_slice_grid


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    mod = import_module(f"{__name__}.{module}")
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
