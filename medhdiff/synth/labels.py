"""FreeSurfer-style label codes and the tissue classes used for synthesis.

The label maps used by :mod:`medhdiff.synth` follow the FreeSurfer colour table
(left-hemisphere codes are used for both hemispheres).  Every code is assigned to
exactly one tissue class, which decides how it is rendered for a given contrast.
Codes that are not listed are treated as "other brain tissue" (grey-matter-like)
if they are non-zero.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BACKGROUND",
    "CEREBRAL_WM",
    "CEREBRAL_CORTEX",
    "LATERAL_VENTRICLE",
    "INF_LATERAL_VENTRICLE",
    "CEREBELLUM_WM",
    "CEREBELLUM_CORTEX",
    "THALAMUS",
    "CAUDATE",
    "PUTAMEN",
    "PALLIDUM",
    "THIRD_VENTRICLE",
    "FOURTH_VENTRICLE",
    "BRAIN_STEM",
    "HIPPOCAMPUS",
    "AMYGDALA",
    "CSF",
    "ACCUMBENS",
    "VENTRAL_DC",
    "VESSEL",
    "CHOROID_PLEXUS",
    "OPTIC_CHIASM",
    "EXTRA_CEREBRAL",
    "LABEL_NAMES",
    "WM_LIKE",
    "GM_LIKE",
    "DEEP_GM",
    "CSF_LIKE",
    "TISSUE_CLASSES",
    "BRAIN_LABELS",
    "tissue_class",
    "brain_mask_from_labels",
    "class_mask",
]

BACKGROUND = 0
CEREBRAL_WM = 2
CEREBRAL_CORTEX = 3
LATERAL_VENTRICLE = 4
INF_LATERAL_VENTRICLE = 5
CEREBELLUM_WM = 7
CEREBELLUM_CORTEX = 8
THALAMUS = 10
CAUDATE = 11
PUTAMEN = 12
PALLIDUM = 13
THIRD_VENTRICLE = 14
FOURTH_VENTRICLE = 15
BRAIN_STEM = 16
HIPPOCAMPUS = 17
AMYGDALA = 18
CSF = 24
ACCUMBENS = 26
VENTRAL_DC = 28
VESSEL = 30
CHOROID_PLEXUS = 31
OPTIC_CHIASM = 85
#: Skull, scalp, eyes and other non-brain tissue in the SynthSeg training maps.
EXTRA_CEREBRAL: frozenset[int] = frozenset({165, 258, 259})

LABEL_NAMES: dict[int, str] = {
    BACKGROUND: "background",
    CEREBRAL_WM: "cerebral-white-matter",
    CEREBRAL_CORTEX: "cerebral-cortex",
    LATERAL_VENTRICLE: "lateral-ventricle",
    INF_LATERAL_VENTRICLE: "inf-lateral-ventricle",
    CEREBELLUM_WM: "cerebellum-white-matter",
    CEREBELLUM_CORTEX: "cerebellum-cortex",
    THALAMUS: "thalamus",
    CAUDATE: "caudate",
    PUTAMEN: "putamen",
    PALLIDUM: "pallidum",
    THIRD_VENTRICLE: "3rd-ventricle",
    FOURTH_VENTRICLE: "4th-ventricle",
    BRAIN_STEM: "brain-stem",
    HIPPOCAMPUS: "hippocampus",
    AMYGDALA: "amygdala",
    CSF: "csf",
    ACCUMBENS: "accumbens-area",
    VENTRAL_DC: "ventral-dc",
    VESSEL: "vessel",
    CHOROID_PLEXUS: "choroid-plexus",
    OPTIC_CHIASM: "optic-chiasm",
    165: "skull",
    258: "head-extra-cerebral",
    259: "eye",
}

#: White-matter-like tissue (rendered close to cerebral white matter).
WM_LIKE: frozenset[int] = frozenset({CEREBRAL_WM, CEREBELLUM_WM, BRAIN_STEM, VENTRAL_DC, OPTIC_CHIASM})
#: Cortical grey-matter-like tissue.
GM_LIKE: frozenset[int] = frozenset(
    {CEREBRAL_CORTEX, CEREBELLUM_CORTEX, HIPPOCAMPUS, AMYGDALA, VESSEL, CHOROID_PLEXUS}
)
#: Deep grey-matter nuclei (rendered between white matter and cortex).
DEEP_GM: frozenset[int] = frozenset({THALAMUS, CAUDATE, PUTAMEN, PALLIDUM, ACCUMBENS})
#: Cerebrospinal fluid (ventricles and sulcal/cisternal CSF).
CSF_LIKE: frozenset[int] = frozenset(
    {LATERAL_VENTRICLE, INF_LATERAL_VENTRICLE, THIRD_VENTRICLE, FOURTH_VENTRICLE, CSF}
)

TISSUE_CLASSES: dict[str, frozenset[int]] = {
    "wm": WM_LIKE,
    "gm": GM_LIKE,
    "deep_gm": DEEP_GM,
    "csf": CSF_LIKE,
    "extra_cerebral": EXTRA_CEREBRAL,
}

#: Every known code inside the brain mask (CSF included; background and
#: extra-cerebral tissue excluded).
BRAIN_LABELS: frozenset[int] = WM_LIKE | GM_LIKE | DEEP_GM | CSF_LIKE


def tissue_class(label: int) -> str:
    """Tissue class name of a label code: ``wm``, ``gm``, ``deep_gm``, ``csf``,
    ``extra_cerebral``, ``background``; unknown non-zero codes count as ``gm``."""
    label = int(label)
    if label == BACKGROUND:
        return "background"
    for name, codes in TISSUE_CLASSES.items():
        if label in codes:
            return name
    return "gm"


def brain_mask_from_labels(labels: np.ndarray) -> np.ndarray:
    """Boolean brain mask: every non-zero label that is not extra-cerebral.

    Unknown non-zero codes are counted as brain so that label maps with extra
    structures (e.g. lesion labels) keep them inside the mask.
    """
    labels = np.asarray(labels)
    mask = labels != BACKGROUND
    for code in EXTRA_CEREBRAL:
        mask &= labels != code
    return mask


def class_mask(labels: np.ndarray, cls: str) -> np.ndarray:
    """Boolean mask of the voxels whose label belongs to tissue class ``cls``."""
    if cls not in TISSUE_CLASSES:
        raise ValueError(f"unknown tissue class {cls!r}; expected one of {sorted(TISSUE_CLASSES)}")
    return np.isin(np.asarray(labels), np.fromiter(TISSUE_CLASSES[cls], dtype=np.int64))
