"""Inject synthetic lesions into (synthetic or real) skull-stripped brain images.

Two kinds:

* ``"tumor"``: one irregular blob (thresholded smooth random noise on an
  ellipsoid) placed in the brain interior, with optional necrotic core, solid /
  enhancing rim and surrounding oedema, and optional mild mass effect.  The blob
  volume is matched to the requested volume by iterating the threshold.
* ``"focal"``: several small ellipsoidal MS-like lesions, mostly in white matter.

Intensities are set relative to the image itself (the median of the tissue around
the lesion and the brain's 99th percentile), with contrast-specific rules: bright
on T2 and FLAIR, hypo-intense on T1 (``"t1c"`` additionally gives an enhancing
rim), random for ``"random"``.  The lesion keeps the image's noise texture.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LesionInjector", "LESION_KINDS", "DEFAULT_VOLUME_ML", "contrast_scale_range"]

LESION_KINDS = ("tumor", "focal")
DEFAULT_VOLUME_ML: dict[str, tuple[float, float]] = {"tumor": (0.5, 60.0), "focal": (0.05, 2.0)}
_CONTRASTS = ("t1", "t1c", "t2", "flair", "random")
_TOLERANCE = 0.05  # aim for +/-5 % of the requested volume (the promise is +/-30 %)


def contrast_scale_range(value: Any) -> tuple[float, float]:
    """``(low, high)`` of a lesion conspicuity scale given as one value or a range; ValueError outside (0, 1]."""
    try:
        vals = (float(value),) if np.isscalar(value) else tuple(float(v) for v in value)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) not in (1, 2) or not 0 < vals[0] <= vals[-1] <= 1:
        raise ValueError(f"contrast_scale needs a value in (0, 1] or [low, high] with 0 < low <= high <= 1, "
                         f"got {value!r}")
    return vals[0], vals[-1]


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))


def _box(centre: np.ndarray, half_vox: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    lo = np.maximum(np.floor(centre - half_vox).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half_vox).astype(int) + 1, np.asarray(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _ellipsoid_radius(
    sl: tuple[slice, ...], centre: np.ndarray, vox: np.ndarray, rot: np.ndarray, semi_mm: np.ndarray
) -> np.ndarray:
    """Normalised ellipsoidal radius (1 on the surface) on the voxels of box ``sl``."""
    axes = [
        (np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c)) * np.float32(v)
        for s, c, v in zip(sl, centre, vox)
    ]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij")
    pts = np.stack([gx, gy, gz], axis=-1)  # mm offsets (voxel axes, scaled)
    local = pts @ rot.astype(np.float32)  # coordinates in the ellipsoid frame
    return np.sqrt(((local / semi_mm.astype(np.float32)) ** 2).sum(axis=-1))


class LesionInjector:
    """Add one synthetic lesion (tumour) or a set of small focal lesions to an image.

    Args:
        kind: ``"tumor"`` or ``"focal"``.
        volume_ml: requested total lesion volume in mL, either a number or a
            ``(low, high)`` range sampled log-uniformly per call.  Defaults to
            (0.5, 60) for tumours and (0.05, 2) for focal lesions.
        necrosis: tumour only: a necrotic core.
        rim: tumour only: a solid / enhancing rim around the core.
        edema: tumour only: peritumoural oedema around the solid part.
        mass_effect: tumour only: push the surrounding tissue away from the centre.
        seed: seeds the stream of per-call seeds used when ``inject`` gets none.
        contrast_scale: a value in (0, 1] or a ``(low, high)`` range of them
            (drawn uniformly per lesion, from a stream of its own, so the
            lesion's shape and place do not depend on it) that scales the
            lesion's departure from the reference intensity (the median of the
            tissue in a shell around it), and its texture with it: 1 keeps the
            contrast rules above, 0.3 makes a lesion 30 % as conspicuous (faint
            oedema, low-grade tumours). The lesion region is painted as a whole,
            so even a faint lesion replaces the anatomy under it.
    """

    def __init__(
        self,
        kind: str = "tumor",
        volume_ml: float | tuple[float, float] | None = None,
        necrosis: bool = True,
        rim: bool = True,
        edema: bool = True,
        mass_effect: bool = False,
        seed: int | None = None,
        contrast_scale: float | tuple[float, float] = 1.0,
    ) -> None:
        kind = str(kind).lower()
        if kind == "tumour":
            kind = "tumor"
        if kind not in LESION_KINDS:
            raise ValueError(f"kind must be one of {LESION_KINDS}, got {kind!r}")
        if volume_ml is None:
            volume_ml = DEFAULT_VOLUME_ML[kind]
        if np.isscalar(volume_ml):
            lo = hi = float(volume_ml)  # type: ignore[arg-type]
        else:
            lo, hi = (float(v) for v in volume_ml)  # type: ignore[union-attr]
        if not (0 < lo <= hi):
            raise ValueError(f"volume_ml must be positive with low <= high, got {volume_ml}")
        self.kind = kind
        self.volume_ml = (lo, hi)
        self.necrosis = bool(necrosis)
        self.rim = bool(rim)
        self.edema = bool(edema)
        self.mass_effect = bool(mass_effect)
        self.contrast_scale = contrast_scale_range(contrast_scale)
        self._seed_rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, volume_ml={self.volume_ml}, necrosis={self.necrosis}, "
            f"rim={self.rim}, edema={self.edema}, mass_effect={self.mass_effect}, "
            f"contrast_scale={self.contrast_scale})"
        )

    # ------------------------------------------------------------------ public
    def inject(
        self,
        image: np.ndarray,
        brain_mask: np.ndarray,
        affine: np.ndarray,
        contrast: str,
        seed: int | None = None,
        wm_mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Return ``(image_out float32, lesion_mask uint8, info)``.

        Args:
            image: 3D skull-stripped image.
            brain_mask: 3D brain mask (non-zero = brain); the lesion stays inside it.
            affine: 4x4 voxel-to-world affine (used for voxel volume and sizes in mm).
            contrast: ``t1``, ``t1c``, ``t2``, ``flair`` or ``random``.
            seed: per-call seed (same seed -> same lesion).
            wm_mask: optional white-matter mask used to place lesion centres, e.g.
                ``result.labels == labels.CEREBRAL_WM`` (cerebral WM only) or
                ``labels.class_mask(result.labels, "wm")`` (also brain stem, cerebellar
                WM); estimated from intensities when missing.  Tumour oedema also
                spreads preferentially along it.
        """
        from scipy import ndimage as ndi

        image = np.asarray(image, dtype=np.float32)
        brain = np.asarray(brain_mask) > 0
        if image.ndim != 3 or image.shape != brain.shape:
            raise ValueError(f"image {image.shape} and brain_mask {brain.shape} must be 3D with the same shape")
        if not brain.any():
            raise ValueError("brain_mask is empty")
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        contrast = str(contrast).lower()
        if contrast not in _CONTRASTS:
            raise ValueError(f"contrast must be one of {_CONTRASTS}, got {contrast!r}")
        if seed is None:
            seed = int(self._seed_rng.integers(0, 2**31 - 1))
        rng = np.random.default_rng(int(seed))

        vox = _voxel_sizes(affine)
        vox_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
        lo, hi = self.volume_ml
        requested = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
        brain_ml = float(brain.sum()) * vox_ml
        if requested > 0.5 * brain_ml:
            raise ValueError(f"requested lesion volume {requested:.1f} mL exceeds half the brain ({brain_ml:.1f} mL)")

        lo_c, hi_c = self.contrast_scale
        scale = float(np.random.default_rng([int(seed), 1]).uniform(lo_c, hi_c)) if hi_c > lo_c else lo_c
        depth = ndi.distance_transform_edt(brain, sampling=vox)  # mm to the brain edge
        wm = self._wm_candidates(image, brain, depth, contrast, wm_mask)
        info: dict[str, Any] = {
            "kind": self.kind,
            "seed": int(seed),
            "contrast": contrast,
            "requested_volume_ml": requested,
            "contrast_scale": scale,
        }
        if self.kind == "tumor":
            out, mask = self._tumor(image, brain, depth, wm, vox, vox_ml, requested, contrast, rng, info)
        else:
            out, mask = self._focal(image, brain, depth, wm, vox, vox_ml, requested, contrast, rng, info)
        mask &= brain
        out[~brain] = 0.0
        info["centre_mm"] = [float(v) for v in (affine @ np.r_[np.asarray(info["centre_vox"], float), 1.0])[:3]]
        info["volume_ml"] = float(mask.sum()) * vox_ml
        info["relative_volume_error"] = info["volume_ml"] / requested - 1.0
        return out.astype(np.float32), mask.astype(np.uint8), info

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _wm_candidates(image, brain, depth, contrast, wm_mask) -> np.ndarray:
        """Best guess of white matter (used only to choose lesion centres)."""
        from scipy import ndimage as ndi

        if wm_mask is not None:
            wm = (np.asarray(wm_mask) > 0) & brain
            if wm.any():
                return wm
        inner = brain & (depth >= 3.0)
        if not inner.any():
            return brain.copy()
        sm = ndi.gaussian_filter(image, 1.0)
        vals = sm[inner]
        if contrast in ("t1", "t1c"):
            wm = inner & (sm > np.percentile(vals, 55))
        elif contrast == "t2":
            wm = inner & (sm < np.percentile(vals, 45)) & (sm > np.percentile(vals, 3))
        elif contrast == "flair":
            wm = inner & (sm > np.percentile(vals, 15)) & (sm < np.percentile(vals, 55))
        else:
            wm = inner
        return wm if wm.any() else inner

    @staticmethod
    def _pick_centre(candidates: np.ndarray, depth: np.ndarray, min_depth: float, rng) -> np.ndarray:
        ok = candidates & (depth >= min_depth)
        if not ok.any():
            # fall back to the deepest part of the candidates (or of the brain)
            pool = candidates if candidates.any() else depth > 0
            thr = np.percentile(depth[pool], 90)
            ok = pool & (depth >= thr)
        idx = np.flatnonzero(ok)
        return np.asarray(np.unravel_index(int(rng.choice(idx)), ok.shape), dtype=np.float64)

    @staticmethod
    def _reference(image, brain, region, vox, shell_mm=4.0) -> float:
        """Median intensity of the brain tissue in a shell around ``region``."""
        from scipy import ndimage as ndi

        it = max(1, int(round(shell_mm / float(np.mean(vox)))))
        shell = ndi.binary_dilation(region, iterations=it) & brain & ~region
        vals = image[shell] if shell.any() else image[brain]
        vals = vals[vals > 0] if (vals > 0).any() else vals
        return float(np.median(vals))

    @staticmethod
    def _smooth_noise(shape, sigma_vox, rng) -> np.ndarray:
        from scipy import ndimage as ndi

        n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="reflect")
        return n / max(float(n.std()), 1e-6)

    def _paint(self, image, brain, region, target, vox, rng, texture_amp, soft_mm=0.8):
        """Blend ``target`` intensities into ``image`` over ``region`` keeping noise."""
        from scipy import ndimage as ndi

        sl = ndi.find_objects(region.astype(np.uint8))[0]
        pad = 3
        sl = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(sl, region.shape))
        reg = region[sl].astype(np.float32)
        img = image[sl]
        sig = np.maximum(soft_mm / vox, 0.3)
        # smooth target map inside the region (normalised convolution)
        num = ndi.gaussian_filter(target[sl] * reg, sig)
        den = ndi.gaussian_filter(reg, sig)
        tgt = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0).astype(np.float32)
        alpha = np.clip(1.5 * den, 0.0, 1.0) * reg
        tex = 1.0 + texture_amp * self._smooth_noise(reg.shape, np.maximum(2.0 / vox, 0.5), rng)
        resid = img - ndi.gaussian_filter(img, np.maximum(1.0 / vox, 0.5))
        new = tgt * tex + resid
        out = image.copy()
        out[sl] = (1.0 - alpha) * img + alpha * np.clip(new, 0.0, None)
        out[sl][~brain[sl]] = 0.0
        return out

    # ------------------------------------------------------------------ tumour
    def _tumor(self, image, brain, depth, wm, vox, vox_ml, requested, contrast, rng, info):
        from scipy import ndimage as ndi

        r_eq = (3.0 * requested * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)  # mm
        centre = self._pick_centre(wm, depth, min(0.6 * r_eq + 3.0, 25.0), rng)
        info["centre_vox"] = [int(c) for c in centre]

        image = image.copy()
        if self.mass_effect:
            image, disp = self._mass_effect(image, brain, centre, vox, r_eq, rng)
            info["mass_effect_max_mm"] = disp

        # Irregular blob: 1 - ellipsoidal radius + smooth noise.  The whole lesion
        # (oedema included) also gets a white-matter term so that it spreads along
        # white matter; the solid core uses the compact field only.
        aspect = np.sort(rng.uniform(0.6, 1.0, 3))[::-1]
        semi = r_eq * aspect / np.prod(aspect) ** (1.0 / 3.0)
        rot = _random_rotation(rng)
        amp = float(rng.uniform(0.2, 0.4))
        wm_gain = float(rng.uniform(0.15, 0.35)) if self.edema else 0.0
        half = (1.0 + 4.0 * amp + 2.0 * wm_gain) * semi.max() * 1.2 / vox + 3
        sl = _box(centre, half, image.shape)
        rho = _ellipsoid_radius(sl, centre, vox, rot, semi)
        coarse = self._smooth_noise(rho.shape, np.maximum(0.35 * r_eq / vox, 0.7), rng)
        fine = self._smooth_noise(rho.shape, np.maximum(0.12 * r_eq / vox, 0.6), rng)
        core_field = (1.0 - rho + amp * coarse).astype(np.float32)
        wm_s = ndi.gaussian_filter(wm[sl].astype(np.float32), np.maximum(1.5 / vox, 0.5))
        field = core_field + np.float32(0.5 * amp) * fine + np.float32(wm_gain) * (wm_s - 0.5)
        inside = brain[sl]
        field[~inside] = -np.inf
        seed_local = tuple(int(c - s_.start) for c, s_ in zip(centre, sl))
        target_n = requested / vox_ml
        region_local, thr = self._grow(field, seed_local, target_n)
        region = np.zeros(image.shape, dtype=bool)
        region[sl] = region_local

        # nested sub-regions: the highest values of the compact field form the core
        vals = core_field[region_local]
        core_frac = float(rng.uniform(0.25, 0.55)) if self.edema else 1.0
        nec_frac = float(rng.uniform(0.2, 0.45)) if self.necrosis else 0.0
        if not self.rim and self.necrosis:
            nec_frac = 1.0
        t_core = np.quantile(vals, 1.0 - core_frac) if core_frac < 1.0 else -np.inf
        t_nec = np.quantile(vals, 1.0 - core_frac * nec_frac) if nec_frac > 0 else np.inf
        comp = np.zeros(field.shape, dtype=np.uint8)  # 1 oedema, 2 rim/solid, 3 necrosis
        comp[region_local] = 1
        comp[region_local & (core_field >= t_core)] = 2
        comp[region_local & (core_field >= t_nec)] = 3
        if not self.rim and not self.necrosis and not self.edema:
            comp[region_local] = 2  # a plain solid lesion

        ref = self._reference(image, brain, region, vox)
        p99 = float(np.percentile(image[brain], 99))
        levels = self._tumor_levels(contrast, ref, p99, rng)
        scale = info["contrast_scale"]
        if scale != 1.0:
            levels = {k: ref + scale * (v - ref) for k, v in levels.items()}
        target_local = np.zeros(field.shape, dtype=np.float32)
        for k, name in ((1, "edema"), (2, "rim"), (3, "necrosis")):
            target_local[comp == k] = levels[name]
        # oedema fades towards its outer border
        oed = comp == 1
        if oed.any():
            fv = field[oed]
            q = float(np.quantile(fv, 0.5))
            ramp = np.clip((fv - thr) / max(q - thr, 1e-6), 0.0, 1.0)
            target_local[oed] = ref + (levels["edema"] - ref) * (0.45 + 0.55 * ramp)
        target = np.zeros(image.shape, dtype=np.float32)
        target[sl] = target_local
        out = self._paint(
            image, brain, region, target, vox, rng, texture_amp=float(rng.uniform(0.04, 0.1)) * scale, soft_mm=1.2
        )

        info["components_ml"] = {
            "edema": float((comp == 1).sum()) * vox_ml,
            "rim": float((comp == 2).sum()) * vox_ml,
            "necrosis": float((comp == 3).sum()) * vox_ml,
        }
        info["intensities"] = {k: float(v) for k, v in levels.items()}
        info["reference_intensity"] = ref
        info["shape"] = {
            "semi_axes_mm": [float(v) for v in semi],
            "noise_amplitude": amp,
            "white_matter_gain": wm_gain,
            "threshold": float(thr),
        }
        return out, region

    @staticmethod
    def _grow(field: np.ndarray, seed: tuple[int, ...], target_n: float) -> tuple[np.ndarray, float]:
        """Threshold ``field`` so that the connected component containing ``seed``
        has about ``target_n`` voxels (bisection on the threshold)."""
        from scipy import ndimage as ndi

        finite = field[np.isfinite(field)]
        if finite.size == 0:
            raise ValueError("no brain voxels around the lesion centre")

        def region_at(t):
            m = field >= t
            if not m[seed]:
                return m & False
            lab, _ = ndi.label(m)
            return lab == lab[seed]

        hi = float(field[seed]) if np.isfinite(field[seed]) else float(finite.max())
        lo = float(finite.min())
        best, best_t, best_err = None, hi, np.inf
        for _ in range(40):
            t = 0.5 * (lo + hi)
            reg = region_at(t)
            n = int(reg.sum())
            err = abs(n / target_n - 1.0)
            if err < best_err:
                best, best_t, best_err = reg, t, err
            if err <= _TOLERANCE:
                break
            if n > target_n:
                lo = t
            else:
                hi = t
        if best is None or not best.any():
            best = np.zeros(field.shape, dtype=bool)
            best[seed] = True
        return best, best_t

    @staticmethod
    def _tumor_levels(contrast: str, ref: float, p99: float, rng) -> dict[str, float]:
        u = rng.uniform
        top = max(p99, ref * 1.05)
        if contrast == "t2":
            return {
                "edema": ref + (top - ref) * u(0.55, 0.8),
                "rim": ref + (top - ref) * u(0.3, 0.55),
                "necrosis": ref + (top - ref) * u(0.75, 1.0),
            }
        if contrast == "flair":
            return {
                "edema": top * u(1.1, 1.4),
                "rim": top * u(0.95, 1.2),
                "necrosis": ref * u(0.8, 1.1),
            }
        if contrast == "t1":
            return {"edema": ref * u(0.72, 0.88), "rim": ref * u(0.7, 0.9), "necrosis": ref * u(0.3, 0.5)}
        if contrast == "t1c":
            return {"edema": ref * u(0.72, 0.88), "rim": top * u(1.05, 1.4), "necrosis": ref * u(0.3, 0.5)}
        return {"edema": ref * u(0.5, 1.6), "rim": ref * u(0.5, 1.6), "necrosis": ref * u(0.3, 1.8)}

    def _mass_effect(self, image, brain, centre, vox, r_eq, rng):
        """Radial displacement d(r) = A r exp(-r^2 / 2 s^2) away from ``centre``
        (invertible for A < 1); returns the warped image and the peak shift in mm."""
        from scipy import ndimage as ndi

        a = float(rng.uniform(0.2, 0.45))
        s = r_eq
        half = 3.5 * s / vox + 2
        sl = _box(centre, half, image.shape)
        axes = [(np.arange(q.start, q.stop, dtype=np.float32) - np.float32(c)) * np.float32(v)
                for q, c, v in zip(sl, centre, vox)]
        g = np.meshgrid(*axes, indexing="ij")
        r2 = g[0] ** 2 + g[1] ** 2 + g[2] ** 2
        factor = np.float32(a) * np.exp(-r2 / np.float32(2.0 * s * s))  # d = factor * (x - c)
        coords = [
            (np.arange(q.start, q.stop, dtype=np.float32)[tuple(slice(None) if i == k else None for i in range(3))]
             - (gk * factor) / np.float32(v))
            for k, (q, gk, v) in enumerate(zip(sl, g, vox))
        ]
        coords = [np.broadcast_to(c, r2.shape) for c in coords]
        warped = ndi.map_coordinates(image, coords, order=1, mode="nearest")
        out = image.copy()
        sub = out[sl]
        inside = brain[sl]
        sub[inside] = warped[inside]
        peak = a * s * np.exp(-0.5)
        return out, float(peak)

    # ------------------------------------------------------------------ focal
    def _focal(self, image, brain, depth, wm, vox, vox_ml, requested, contrast, rng, info):
        from scipy import ndimage as ndi

        target_n = requested / vox_ml
        n_max = int(np.clip(target_n // 4, 1, 8))
        n = int(rng.integers(1, n_max + 1))
        weights = rng.dirichlet(np.full(n, 2.0))
        cand = wm & (depth >= 3.0)
        if not cand.any():
            cand = wm if wm.any() else brain
        idx = rng.choice(np.flatnonzero(cand), size=n, replace=n > cand.sum())
        centres = np.stack(np.unravel_index(idx, brain.shape), axis=1).astype(np.float64)
        centres += rng.uniform(-0.45, 0.45, centres.shape)
        blobs = []
        for i in range(n):
            r = (3.0 * weights[i] * requested * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
            aspect = np.array([1.0, rng.uniform(0.55, 1.0), rng.uniform(0.4, 1.0)])
            semi = r * aspect / np.prod(aspect) ** (1.0 / 3.0)
            blobs.append((centres[i], semi, _random_rotation(rng)))

        def union(k: float) -> np.ndarray:
            m = np.zeros(brain.shape, dtype=bool)
            for c, semi, rot in blobs:
                sl = _box(c, k * semi.max() / vox + 2, brain.shape)
                rho = _ellipsoid_radius(sl, c, vox, rot, k * semi)
                m[sl] |= rho <= 1.0
            return m & brain

        lo_k, hi_k = 0.05, 4.0
        best, best_err = None, np.inf
        for _ in range(40):
            k = 0.5 * (lo_k + hi_k)
            m = union(k)
            cnt = int(m.sum())
            err = abs(cnt / target_n - 1.0)
            if err < best_err:
                best, best_err = m, err
            if err <= _TOLERANCE:
                break
            if cnt > target_n:
                hi_k = k
            else:
                lo_k = k
        region = best if best is not None and best.any() else union(hi_k)
        if not region.any():  # every blob fell outside the brain: use the first centre voxel
            region = np.zeros(brain.shape, dtype=bool)
            region[tuple(np.clip(np.rint(centres[0]).astype(int), 0, np.asarray(brain.shape) - 1))] = True
            region &= brain

        ref = self._reference(image, brain, region, vox, shell_mm=3.0)
        p99 = float(np.percentile(image[brain], 99))
        top = max(p99, ref * 1.05)
        u = rng.uniform
        if contrast == "t2":
            level = ref + (top - ref) * u(0.5, 0.8)
        elif contrast == "flair":
            level = top * u(1.0, 1.3)
        elif contrast in ("t1", "t1c"):
            level = ref * u(0.6, 0.85)
        else:
            level = ref * u(0.5, 1.6)
        scale = info["contrast_scale"]
        if scale != 1.0:
            level = ref + scale * (level - ref)
        target = np.where(region, np.float32(level), np.float32(0.0)).astype(np.float32)
        out = self._paint(image, brain, region, target, vox, rng, texture_amp=float(u(0.02, 0.06)) * scale, soft_mm=0.6)
        com = np.array(ndi.center_of_mass(region)) if region.any() else centres[0]
        info["centre_vox"] = [int(round(c)) for c in com]
        info["n_lesions"] = n
        info["lesion_centres_vox"] = [[int(round(v)) for v in c] for c, _, _ in blobs]
        info["intensities"] = {"lesion": float(level)}
        info["reference_intensity"] = ref
        return out, region
