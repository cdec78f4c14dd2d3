"""SynthSeg-style synthesis of healthy, skull-stripped brain MR images from label maps.

Pipeline of :meth:`HealthyBrainGenerator.generate` (all random draws come from a
single per-call seed, so the same seed gives a bit-identical result):

1. the label map is reoriented to RAS and resampled (nearest neighbour) to
   ``spacing`` mm on a working grid around the brain (cached per input array);
   label means are painted at the input's native resolution and box-averaged to
   the output voxel size, which gives realistic partial volume;
2. the label map (nearest) and the painted image (linear) are deformed together
   with a random affine (MONAI ``RandAffineGrid``) and a smooth random elastic
   field on a coarse control grid (MONAI ``RandDeformGrid``, upsampled
   trilinearly, the scheme of MONAI's ``Rand2DElastic`` in 3D) through MONAI
   ``Resample``; the result is cropped to the deformed brain's bounding box plus
   an 8 mm margin (so the output shape varies slightly from call to call);
3. every label gets a mean intensity drawn around contrast-specific presets
   (``t1``, ``t2``, ``flair``) or independently at random (``random``);
4. within-tissue texture: smooth low-amplitude multiplicative noise per tissue
   class plus a little voxel-wise noise;
5. a random smooth bias field (MONAI ``RandBiasField``);
6. random resolution: anisotropic Gaussian blur (MONAI ``RandGaussianSmooth``),
   sometimes with one "thick-slice" axis;
7. normalisation to the brain's 99th percentile, Rician noise at a level drawn
   from ``noise_range`` (MONAI ``RandRicianNoise``), and skull stripping (zero
   outside the brain mask).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import labels as L

__all__ = ["SynthResult", "HealthyBrainGenerator", "CONTRASTS", "prepare_label_grid"]

CONTRASTS = ("t1", "t2", "flair", "random")

# Class reference intensities per contrast: (low, high) ranges of the ratios
# relative to the brightest reference tissue of that contrast.
_PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    # T1: WM > GM > CSF
    "t1": {"wm": (1.0, 1.0), "gm": (0.62, 0.80), "csf": (0.15, 0.38)},
    # T2: CSF > GM > WM
    "t2": {"wm": (0.18, 0.27), "gm": (0.32, 0.45), "csf": (1.0, 1.0)},
    # FLAIR: GM >= WM > CSF, CSF suppressed
    "flair": {"wm": (0.68, 0.84), "gm": (1.0, 1.0), "csf": (0.06, 0.22)},
}

# Position of each non-CSF label on the WM (0) -> cortical GM (1) axis, as a
# (low, high) range; the label mean is WM + t * (GM - WM).  Deep GM nuclei lie
# strictly between WM and cortex, so the class order holds for every draw.
_LABEL_T: dict[int, tuple[float, float]] = {
    L.CEREBRAL_WM: (0.0, 0.0),
    L.CEREBELLUM_WM: (0.0, 0.15),
    L.BRAIN_STEM: (0.1, 0.35),
    L.VENTRAL_DC: (0.15, 0.4),
    L.OPTIC_CHIASM: (0.0, 0.2),
    L.CEREBRAL_CORTEX: (1.0, 1.0),
    L.CEREBELLUM_CORTEX: (0.92, 1.1),
    L.HIPPOCAMPUS: (0.92, 1.1),
    L.AMYGDALA: (0.88, 1.05),
    L.VESSEL: (0.8, 1.2),
    L.CHOROID_PLEXUS: (0.8, 1.2),
    L.THALAMUS: (0.3, 0.5),
    L.PALLIDUM: (0.2, 0.4),
    L.PUTAMEN: (0.45, 0.65),
    L.CAUDATE: (0.5, 0.7),
    L.ACCUMBENS: (0.5, 0.7),
}
_UNKNOWN_T = (0.85, 1.1)  # unknown brain labels: grey-matter-like

_CLASS_INDEX = {"wm": 1, "gm": 2, "deep_gm": 3, "csf": 4}
_N_CLASSES = 5  # 0 = outside brain / background


@dataclass
class SynthResult:
    """One synthetic brain.

    Attributes:
        image: float32 image, skull-stripped (0 outside ``brain_mask``), brain 99th
            percentile close to 1.
        brain_mask: uint8 {0, 1}.
        labels: int16 deformed label map on the output grid.
        affine: 4x4 voxel-to-world (RAS mm) affine of the output grid.
        contrast: ``t1``, ``t2``, ``flair`` or ``random``.
        params: JSON-serialisable record of the random draws.
    """

    image: np.ndarray
    brain_mask: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    contrast: str
    params: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- grid


@dataclass
class _LabelGrid:
    """Cached, deformation-independent preparation of one input label map."""

    labels: np.ndarray  # int16, output grid (nearest neighbour)
    affine: np.ndarray  # output grid affine (RAS)
    native: np.ndarray  # int16, RAS native-resolution crop covering the output grid
    index: tuple[np.ndarray, ...]  # per axis: native-crop index of each output voxel
    box: tuple[int, ...]  # per axis: width (native voxels) of the partial-volume box
    codes: np.ndarray  # label codes present inside the brain


def _box_weights(width: int) -> np.ndarray:
    """Centred box filter of ``width`` samples (half weights at the ends if even)."""
    if width <= 1:
        return np.ones(1, dtype=np.float32)
    if width % 2:
        w = np.ones(width, dtype=np.float32)
    else:
        w = np.ones(width + 1, dtype=np.float32)
        w[0] = w[-1] = 0.5
    return w / w.sum()


def _build_grid(labels: np.ndarray, affine: np.ndarray, spacing: float, margin_mm: float) -> _LabelGrid:
    import nibabel.orientations as nio

    labels = np.asarray(labels)
    if labels.ndim == 4 and labels.shape[3] == 1:
        labels = labels[..., 0]
    if labels.ndim != 3:
        raise ValueError(f"label map must be 3D, got shape {labels.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    ornt = nio.io_orientation(affine)
    ras = nio.apply_orientation(labels, ornt)
    aff_ras = affine @ nio.inv_ornt_aff(ornt, labels.shape)

    vox = np.sqrt((aff_ras[:3, :3] ** 2).sum(axis=0))
    ratio = float(spacing) / vox
    n_out = [int(np.floor((n - 1) / r + 1e-6)) + 1 for n, r in zip(ras.shape, ratio)]

    # Brain bounding box on the output grid (via the nearest input indices).
    idx = [np.rint(np.arange(n) * r).astype(np.int64) for n, r in zip(n_out, ratio)]
    small = ras[np.ix_(*idx)]
    if small.dtype.kind == "f":
        small = np.rint(small)
    brain = L.brain_mask_from_labels(small)
    if not brain.any():
        raise ValueError("label map contains no brain labels")
    m = int(np.ceil(margin_mm / spacing))
    src, box, lo_list = [], [], []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        prof = np.nonzero(brain.any(axis=other))[0]
        lo, hi = int(prof[0]) - m, int(prof[-1]) + m + 1
        lo_list.append(lo)
        # output voxel i samples native voxel round((lo + i) * r)
        src.append(np.rint(np.arange(lo, hi) * ratio[ax]).astype(np.int64))
        box.append(max(1, int(round(ratio[ax]))))
    # Native crop covering every sampled voxel plus the partial-volume box, zero-padded.
    starts = [int(s_.min()) - b // 2 - 1 for s_, b in zip(src, box)]
    stops = [int(s_.max()) + b // 2 + 2 for s_, b in zip(src, box)]
    native = np.zeros([b - a for a, b in zip(starts, stops)], dtype=np.int16)
    sl_in, sl_out = [], []
    for ax in range(3):
        a0, b0 = max(starts[ax], 0), min(stops[ax], ras.shape[ax])
        sl_in.append(slice(a0, b0))
        sl_out.append(slice(a0 - starts[ax], b0 - starts[ax]))
    chunk = ras[tuple(sl_in)]
    if chunk.dtype.kind == "f":
        chunk = np.rint(chunk)
    native[tuple(sl_out)] = chunk.astype(np.int16)
    index = tuple(s_ - a for s_, a in zip(src, starts))
    out = native[np.ix_(*index)]

    new_aff = aff_ras.copy()
    new_aff[:3, :3] = aff_ras[:3, :3] * ratio[None, :]
    new_aff[:3, 3] = aff_ras[:3, :3] @ (np.asarray(lo_list, dtype=np.float64) * ratio) + aff_ras[:3, 3]
    codes = np.unique(native[L.brain_mask_from_labels(native)])
    return _LabelGrid(out, new_aff, native, index, tuple(box), codes)


def prepare_label_grid(
    labels: np.ndarray, affine: np.ndarray, spacing: float, margin_mm: float = 8.0
) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a label map to RAS, resample it (nearest) to ``spacing`` mm and crop
    it to the brain bounding box plus ``margin_mm``.

    Returns:
        ``(labels_int16, affine)`` of the output grid.
    """
    g = _build_grid(labels, affine, spacing, margin_mm)
    return g.labels, g.affine


def _partial_volume(grid: _LabelGrid, lut: np.ndarray, lo: int) -> np.ndarray:
    """Intensity image on the output grid: label means painted at native resolution,
    box-averaged over each output voxel's footprint, then sampled."""
    from scipy import ndimage as ndi

    img = lut[grid.native.astype(np.int32) - lo]
    for ax, b in enumerate(grid.box):
        if b > 1:
            img = ndi.correlate1d(img, _box_weights(b), axis=ax, mode="constant")
    return np.ascontiguousarray(img[np.ix_(*grid.index)], dtype=np.float32)


def _fingerprint(labels: np.ndarray, affine: np.ndarray, spacing: float) -> str:
    """Cheap cache key: object identity + shape/dtype/affine + hash of a strided
    sub-sample (about 64^3 voxels).  Label arrays are assumed not to be modified in
    place between calls."""
    labels = np.asarray(labels)
    steps = tuple(max(1, n // 64) for n in labels.shape)
    sample = np.ascontiguousarray(labels[tuple(slice(None, None, st) for st in steps)])
    h = hashlib.blake2b(digest_size=16)
    h.update(sample.tobytes())
    h.update(np.asarray(affine, dtype=np.float64).tobytes())
    h.update(repr((id(labels), labels.shape, labels.dtype.str, float(spacing))).encode())
    return h.hexdigest()


def _crop_to_brain(
    lab: np.ndarray, img: np.ndarray, affine: np.ndarray, margin_vox: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop ``lab``/``img`` to the brain bounding box plus ``margin_vox`` (zero-padded
    if the box leaves the array) and shift the affine accordingly."""
    brain = L.brain_mask_from_labels(lab)
    if not brain.any():
        raise ValueError("the deformed label map has no brain voxels left")
    lo, hi = [], []
    for ax in range(3):
        prof = np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != ax)))[0]
        lo.append(int(prof[0]) - margin_vox)
        hi.append(int(prof[-1]) + margin_vox + 1)
    shape = tuple(h - l_ for l_, h in zip(lo, hi))
    src = tuple(slice(max(l_, 0), min(h, n)) for l_, h, n in zip(lo, hi, lab.shape))
    dst = tuple(slice(s_.start - l_, s_.stop - l_) for s_, l_ in zip(src, lo))
    lab_c = np.zeros(shape, dtype=lab.dtype)
    img_c = np.zeros(shape, dtype=img.dtype)
    lab_c[dst] = lab[src]
    img_c[dst] = img[src]
    new_aff = np.asarray(affine, dtype=np.float64).copy()
    new_aff[:3, 3] = affine[:3, :3] @ np.asarray(lo, dtype=np.float64) + affine[:3, 3]
    return lab_c, img_c, new_aff


# --------------------------------------------------------------------------- generator


def _seed_from(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


class HealthyBrainGenerator:
    """Synthesise skull-stripped healthy brain images from label maps.

    Args:
        contrast: ``"t1"``, ``"t2"``, ``"flair"`` or ``"random"`` (independent random
            mean per label).
        spacing: output voxel size in mm.
        seed: seeds the stream of per-call seeds used when ``generate`` gets none.
        deform: random affine + elastic deformation of the label map.
        bias: random bias field.
        blur: random resolution / Gaussian blur.
        noise: Rician noise.
        noise_range: (low, high) of the noise standard deviation relative to the
            brain's 99th percentile.
        texture_amplitude: (low, high) of the smooth within-tissue texture's relative
            amplitude, drawn per tissue class (default: the class attribute).
        tissue_ratios: per tissue class (``wm``, ``gm``, ``csf``), (low, high) of its
            reference intensity relative to the contrast's brightest tissue, replacing
            the contrast's preset for that class (not with ``contrast="random"``).
            A narrower grey-white gap and a stronger texture spread the healthy
            tissue's intensities as a real scan's are spread (``bench_detect.py
            --sections tissue``).
    """

    #: control-point spacing of the elastic field, in mm
    elastic_spacing_mm = 16.0
    #: standard deviation of the control-point displacements, in mm (drawn uniformly)
    elastic_magnitude_mm = (0.5, 2.0)
    rotate_range_rad = 0.14  # about 8 degrees per axis
    scale_range = 0.06
    shear_range = 0.02
    translate_range_mm = 2.0
    bias_coeff_range = (-0.08, 0.08)
    blur_sigma_mm = (0.3, 1.1)  # per-axis Gaussian sigma
    thick_slice_sigma_mm = (1.2, 2.2)  # sigma along a "thick-slice" axis
    thick_slice_prob = 0.3
    texture_amplitude = (0.015, 0.05)  # smooth multiplicative texture, relative
    texture_sigma_mm = 3.0
    voxel_noise_amplitude = (0.0, 0.03)  # voxel-wise noise before blurring, relative
    margin_mm = 8.0  # margin around the brain bounding box of the output grid
    deform_pad_mm = 10.0  # extra room on the working grid so deformations never clip the brain
    cache_size = 8

    def __init__(
        self,
        contrast: str = "t1",
        spacing: float = 2.0,
        seed: int | None = None,
        deform: bool = True,
        bias: bool = True,
        blur: bool = True,
        noise: bool = True,
        noise_range: tuple[float, float] = (0.0, 0.05),
        texture_amplitude: tuple[float, float] | None = None,
        tissue_ratios: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        contrast = str(contrast).lower()
        if contrast not in CONTRASTS:
            raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
        if texture_amplitude is not None:
            t_lo, t_hi = (float(v) for v in texture_amplitude)
            if not 0.0 <= t_lo <= t_hi < 1.0:
                raise ValueError(f"texture_amplitude must satisfy 0 <= low <= high < 1, got {texture_amplitude}")
            self.texture_amplitude = (t_lo, t_hi)
        ratios = {str(k): tuple(float(v) for v in r) for k, r in (tissue_ratios or {}).items()}
        if ratios and contrast == "random":
            raise ValueError("tissue_ratios need a contrast with presets, not 'random'")
        for k, r in ratios.items():
            if k not in ("wm", "gm", "csf") or len(r) != 2 or not 0.0 < r[0] <= r[1] <= 1.5:
                raise ValueError(f"tissue_ratios must map wm, gm or csf to (low, high) with 0 < low <= high <= 1.5, "
                                 f"got {k}: {r}")
        self.presets = {**_PRESETS.get(contrast, {}), **ratios}
        if not spacing > 0:
            raise ValueError(f"spacing must be positive, got {spacing}")
        lo, hi = (float(v) for v in noise_range)
        if lo < 0 or hi < lo:
            raise ValueError(f"noise_range must satisfy 0 <= low <= high, got {noise_range}")
        self.contrast = contrast
        self.spacing = float(spacing)
        self.deform = bool(deform)
        self.bias = bool(bias)
        self.blur = bool(blur)
        self.noise = bool(noise)
        self.noise_range = (lo, hi)
        self._seed_rng = np.random.default_rng(seed)
        self._cache: OrderedDict[str, _LabelGrid] = OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ helpers
    def _grid(self, labels: np.ndarray, affine: np.ndarray) -> _LabelGrid:
        key = _fingerprint(labels, affine, self.spacing) + f"/{self.margin_mm + self.deform_pad_mm}"
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        grid = _build_grid(labels, affine, self.spacing, self.margin_mm + self.deform_pad_mm)
        with self._lock:
            self._cache[key] = grid
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return grid

    def _deform(
        self, lab: np.ndarray, img: np.ndarray, seeds: np.ndarray, params: dict
    ) -> tuple[np.ndarray, np.ndarray]:
        """Deform the label map (nearest) and the intensity image (linear) with one
        random affine + elastic sampling grid."""
        import torch
        from monai.transforms import CenterSpatialCrop, RandAffineGrid, RandDeformGrid, Resample

        sp = self.spacing
        # odd control spacing (in voxels) keeps the upsampled grid centred exactly
        cs = max(3, int(round(self.elastic_spacing_mm / sp)))
        cs += 1 - cs % 2
        deform_grid = RandDeformGrid(
            spacing=(cs, cs, cs),
            magnitude_range=tuple(m / sp for m in self.elastic_magnitude_mm),
        )
        deform_grid.set_random_state(seed=int(seeds[0]))
        affine_grid = RandAffineGrid(
            rotate_range=(self.rotate_range_rad,) * 3,
            shear_range=(self.shear_range,) * 6,
            translate_range=(self.translate_range_mm / sp,) * 3,
            scale_range=(self.scale_range,) * 3,
        )
        affine_grid.set_random_state(seed=int(seeds[1]))
        shape = lab.shape
        ctrl = deform_grid(spatial_size=shape)
        ctrl = affine_grid(grid=ctrl)
        dense = torch.nn.functional.interpolate(
            torch.as_tensor(ctrl).unsqueeze(0).float(),
            scale_factor=(float(cs),) * 3,
            mode="trilinear",
            align_corners=False,
            recompute_scale_factor=False,
        )[0]
        dense = CenterSpatialCrop(roi_size=shape)(dense)
        nearest = Resample(mode="nearest", padding_mode="zeros", dtype=np.float32)
        linear = Resample(mode="bilinear", padding_mode="zeros", dtype=np.float32)
        lab_out = nearest(torch.as_tensor(lab[None].astype(np.float32)), dense)
        img_out = linear(torch.as_tensor(img[None]), dense)
        params["deform"] = {
            "control_spacing_vox": int(cs),
            "elastic_std_mm": float(deform_grid.rand_mag * sp),
            "rotate_rad": [float(v) for v in (affine_grid.rotate_params or [])],
            "shear": [float(v) for v in (affine_grid.shear_params or [])],
            "translate_mm": [float(v) * sp for v in (affine_grid.translate_params or [])],
            "scale": [float(v) for v in (affine_grid.scale_params or [])],
        }
        lab_np = np.rint(np.asarray(lab_out.detach().cpu())[0]).astype(np.int16)
        img_np = np.asarray(img_out.detach().cpu(), dtype=np.float32)[0]
        return lab_np, np.ascontiguousarray(img_np)

    def _label_means(self, codes: np.ndarray, rng: np.random.Generator, params: dict) -> dict[int, float]:
        means: dict[int, float] = {}
        if self.contrast == "random":
            for c in codes:
                means[int(c)] = float(rng.uniform(0.05, 1.0))
            params["class_means"] = {}
        else:
            preset = self.presets
            ref = {k: float(rng.uniform(*v)) for k, v in preset.items()}
            params["class_means"] = ref
            for c in codes:
                c = int(c)
                cls = L.tissue_class(c)
                if cls == "csf":
                    means[c] = ref["csf"] * float(rng.uniform(0.95, 1.05))
                else:
                    t = float(rng.uniform(*_LABEL_T.get(c, _UNKNOWN_T)))
                    means[c] = ref["wm"] + t * (ref["gm"] - ref["wm"])
        params["label_means"] = {str(k): v for k, v in sorted(means.items())}
        return means

    def _texture(self, img: np.ndarray, cls_map: np.ndarray, rng: np.random.Generator, params: dict) -> None:
        from scipy import ndimage as ndi

        sigma_vox = self.texture_sigma_mm / self.spacing
        # Generate the smooth fields on a half-resolution grid and upsample: much cheaper.
        f = 2 if sigma_vox >= 2.0 else 1
        coarse_shape = tuple(int(np.ceil(s / f)) + (f > 1) for s in img.shape)
        amps = {}
        for name, k in _CLASS_INDEX.items():
            sel = cls_map == k
            if not sel.any():
                continue
            amp = float(rng.uniform(*self.texture_amplitude))
            amps[name] = amp
            noise = rng.standard_normal(coarse_shape, dtype=np.float32)
            smooth = ndi.gaussian_filter(noise, sigma_vox / f, mode="reflect")
            smooth /= max(float(smooth.std()), 1e-6)
            if f > 1:
                smooth = ndi.zoom(smooth, f, order=1)
            smooth = smooth[: img.shape[0], : img.shape[1], : img.shape[2]]
            img[sel] *= 1.0 + amp * smooth[sel]
        vamp = float(rng.uniform(*self.voxel_noise_amplitude))
        if vamp > 0:
            brain = cls_map > 0
            img[brain] *= 1.0 + vamp * rng.standard_normal(int(brain.sum()), dtype=np.float32)
        np.clip(img, 0.0, None, out=img)
        params["texture"] = {"amplitude": amps, "voxel_noise": vamp}

    # ------------------------------------------------------------------ public
    def generate(self, labels: np.ndarray, affine: np.ndarray, seed: int | None = None) -> SynthResult:
        """Synthesise one image from ``labels`` (3D integer codes) with voxel-to-world
        ``affine``.  Same ``seed`` -> bit-identical result; ``seed=None`` draws the next
        seed from the generator's own stream."""
        from monai.transforms import RandBiasField, RandGaussianSmooth, RandRicianNoise

        if seed is None:
            seed = _seed_from(self._seed_rng)
        seed = int(seed)
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        ss = np.random.SeedSequence(seed)
        # independent streams: 0 elastic, 1 affine, 2 bias, 3 blur, 4 noise, 5 intensities
        seeds = ss.generate_state(6, dtype=np.uint32) % (2**31 - 1)
        rng = np.random.default_rng(int(seeds[5]))
        params: dict[str, Any] = {
            "seed": seed,
            "contrast": self.contrast,
            "spacing": self.spacing,
        }

        grid = self._grid(labels, affine)

        # --- label intensities, painted with partial volume at native resolution
        means = self._label_means(grid.codes, rng, params)
        lo = int(min(0, grid.native.min()))
        hi = int(max(grid.native.max(), max(means, default=0)))
        lut = np.zeros(hi - lo + 1, dtype=np.float32)
        cls_lut = np.zeros(hi - lo + 1, dtype=np.uint8)
        for c, mu in means.items():
            lut[c - lo] = mu
            cls_lut[c - lo] = _CLASS_INDEX.get(L.tissue_class(c), _CLASS_INDEX["gm"])
        img = _partial_volume(grid, lut, lo)

        # --- spatial deformation of labels and image together
        if self.deform:
            lab, img = self._deform(grid.labels, img, seeds, params)
        else:
            lab = grid.labels.copy()
        lab, img, out_affine = _crop_to_brain(lab, img, grid.affine, int(np.ceil(self.margin_mm / self.spacing)))
        brain = L.brain_mask_from_labels(lab)
        cls_map = cls_lut[lab.astype(np.int32) - lo]
        cls_map[~brain] = 0
        self._texture(img, cls_map, rng, params)

        x = img[None]
        # --- bias field
        if self.bias:
            bf = RandBiasField(degree=3, coeff_range=self.bias_coeff_range, prob=1.0)
            bf.set_random_state(seed=int(seeds[2]))
            x = np.asarray(bf(x))
            params["bias"] = {"degree": 3, "coeffs": [float(c) for c in getattr(bf, "_coeff", [])]}
        # --- random resolution / blur
        if self.blur:
            ranges = [tuple(s / self.spacing for s in self.blur_sigma_mm)] * 3
            thick_axis = None
            if rng.uniform() < self.thick_slice_prob:
                thick_axis = int(rng.integers(0, 3))
                ranges[thick_axis] = tuple(s / self.spacing for s in self.thick_slice_sigma_mm)
            gs = RandGaussianSmooth(sigma_x=ranges[0], sigma_y=ranges[1], sigma_z=ranges[2], prob=1.0)
            gs.set_random_state(seed=int(seeds[3]))
            x = np.asarray(gs(x))
            params["blur"] = {
                "sigma_mm": [float(gs.x * self.spacing), float(gs.y * self.spacing), float(gs.z * self.spacing)],
                "thick_axis": thick_axis,
            }
        x = np.asarray(x, dtype=np.float32)
        # --- normalise to the brain's 99th percentile
        p99 = float(np.percentile(x[0][brain], 99)) if brain.any() else 1.0
        if p99 > 0:
            x = x / np.float32(p99)
        # --- Rician noise
        if self.noise:
            level = float(rng.uniform(*self.noise_range))
            params["noise_std"] = level
            if level > 0:
                rn = RandRicianNoise(prob=1.0, mean=0.0, std=level, relative=False, sample_std=False)
                rn.set_random_state(seed=int(seeds[4]))
                x = np.asarray(rn(x))
        out = np.asarray(x[0], dtype=np.float32)
        out[~brain] = 0.0
        return SynthResult(
            image=out,
            brain_mask=brain.astype(np.uint8),
            labels=lab.astype(np.int16),
            affine=out_affine.copy(),
            contrast=self.contrast,
            params=params,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(contrast={self.contrast!r}, spacing={self.spacing}, "
            f"deform={self.deform}, bias={self.bias}, blur={self.blur}, noise={self.noise}, "
            f"noise_range={self.noise_range})"
        )
