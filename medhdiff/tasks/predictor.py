"""The :class:`Predictor`: load a model once, then denoise, reconstruct or detect many scans.

Every job follows the same path: the scan is brought into model space by the
model's own :class:`~medhdiff.preprocess.Preprocessor` (the one training
used), the hierarchical sampler runs there, and the result is mapped back
onto the scan's grid with :meth:`Preprocessor.inverse`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from scipy import ndimage

from medhdiff.device import resolve_device
from medhdiff.diffusion.bundle import ModelBundle, load_bundle
from medhdiff.diffusion.sampler import HierarchicalSampler
from medhdiff.diffusion.schedule import NoiseSchedule
from medhdiff.errors import InputError
from medhdiff.io.paths import guess_contrast
from medhdiff.io.volume import Volume
from medhdiff.preprocess import PreprocessConfig, Preprocessed, Preprocessor
from medhdiff.tasks.adapt import AdaptConfig, adapt_patch_model
from medhdiff.tasks.noise import estimate_sigma, rician_bias_correct
from medhdiff.tasks.results import DenoiseResult, DetectResult, ReconstructResult
from medhdiff.training.config import INTENSITY_LEVELS, DetectConfig, score_scale_statistic

log = logging.getLogger("medhdiff")

ProgressFn = Callable[[str, int, int], None]

#: Contrasts whose lesions are hyperintense (tumour, oedema, MS plaques).
BRIGHT_LESION_CONTRASTS = ("t2", "flair")

#: Above this many robust SDs over the median (a normal's p99.9), a scan's own intensity grow level is taken
#: to lie inside a large lesion, and ``detect`` warns that findings may miss its edges.
LESION_TAIL_SD = 3.09

#: The most times ``Predictor.outside_findings_region`` takes the level again outside the findings, and how far
#: (mm) around the findings it leaves out: the 3^3 median filter carries a lesion's brightness one voxel out and
#: partial volume another, and tissue left in the level beside a finding would be its brightest, not typical.
OUTSIDE_ROUNDS = 8
OUTSIDE_MARGIN_MM = 2.0

#: How ``detect_multi`` joins several contrasts' findings (``Predictor.combine_findings``).
COMBINE_RULES = ("union", "consensus", "lead")


def robust_fit(values: np.ndarray) -> tuple[float, float]:
    """``(median, robust SD)`` of ``values``: the SD of a normal taken as 1.4826 times the median absolute
    deviation, which a minority of outliers (a lesion) barely moves."""
    centre = float(np.median(values))
    return centre, 1.4826 * float(np.median(np.abs(values - centre)))


#: The bundled models: ``default`` (denoise, reconstruct) and ``detector`` (detect).
BUNDLED_MODELS = ("default", "detector")


def default_weights(task: str = "default") -> Path | None:
    """A model shipped inside the package, if this installation has one.

    ``task="detector"`` is the detection model (the default model's patch stage
    fine-tuned to heal lesions); where it is missing, the default model serves.
    """
    if task not in BUNDLED_MODELS:
        raise ValueError(f"task must be one of {BUNDLED_MODELS}, got {task!r}")
    try:
        models = Path(str(resources.files("medhdiff") / "models"))
    except (ModuleNotFoundError, FileNotFoundError):
        return None
    for path in (models / task, models / "default"):
        if (path / "model.safetensors").is_file():
            return path
    return None


class Predictor:
    """A loaded model plus its preprocessing, sampler and device.

    ``weights``: a model folder, a ``model.safetensors`` path, or ``None``
    for a bundled model: ``model="default"`` or ``"detector"`` (see
    :func:`default_weights`). ``batch_size`` is the number of windows
    per network call (memory), ``progress(stage, step, total)`` is called
    during sampling. ``coarse_timestep`` is how reconstruction and detection
    start the coarse stage (see :meth:`HierarchicalSampler.sample`): ``"matched"``
    (the default) gives it exactly the noise pooling leaves; ``"same"`` noises
    it as much as the full-resolution volume, so that large structures are
    re-synthesised. On TCGA-DU-7294's FLAIR, detection measured the same either
    way (AUROC 0.575 vs 0.581), so the default stays the one the shipped
    calibration used. Denoising always uses the matched level.
    """

    def __init__(self, weights: str | Path | None = None, device: str = "auto", batch_size: int = 4,
                 progress: ProgressFn | None = None, bundle: ModelBundle | None = None,
                 coarse_timestep: str = "matched", model: str = "default"):
        if coarse_timestep not in ("same", "matched"):
            raise InputError(f"coarse_timestep must be 'same' or 'matched', got {coarse_timestep!r}")
        self.coarse_timestep = coarse_timestep
        self.device = resolve_device(device)
        if bundle is None:
            path = Path(weights) if weights is not None else default_weights(model)
            if path is None:
                raise InputError("no default model is installed; pass --weights MODEL_DIR")
            bundle = load_bundle(path, device=self.device)
        else:
            bundle.to(self.device)
        self.bundle = bundle
        self.cfg = bundle.config
        self.schedule = NoiseSchedule(self.cfg.schedule)
        pre_cfg = PreprocessConfig.from_dict(bundle.preprocess) if bundle.preprocess else PreprocessConfig()
        mult = self.cfg.coarse_factor * 2 ** (len(self.cfg.global_net.channels) - 1)
        if pre_cfg.pad_multiple % mult:
            pre_cfg.pad_multiple = int(np.lcm(pre_cfg.pad_multiple, mult))
        self.preprocessor = Preprocessor(pre_cfg)
        amp = torch.bfloat16 if self.device.type == "cuda" else None
        self.sampler = HierarchicalSampler(self.schedule, self.cfg, device=self.device, batch_size=batch_size,
                                           progress=progress, amp_dtype=amp)

    # ------------------------------------------------------------------ helpers
    @property
    def sha256(self) -> str:
        return self.bundle.sha256

    def set_progress(self, progress: ProgressFn | None) -> None:
        self.sampler.progress = progress

    def class_label(self, contrast: str | None, source: str = "") -> int | None:
        """The contrast index for a class-conditional model; warns on a mismatch."""
        conditional = self.cfg.patch_net.num_class_embeds is not None
        known = list(self.cfg.contrasts)
        if contrast is None:
            contrast = guess_contrast(source)
            if contrast is None:
                if conditional:
                    log.warning("%s: contrast unknown (pass --contrast); assuming %s", source or "input", known[0])
                    return 0
                return None
        contrast = contrast.lower()
        if contrast not in known:
            log.warning("%s: this model was trained for %s, not %s; results may be poor",
                        source or "input", "/".join(known), contrast)
            return 0 if conditional else None
        return known.index(contrast) if conditional else None

    def prepare(self, volume: Volume, mask: Volume | np.ndarray | None = None) -> Preprocessed:
        return self.preprocessor.forward(volume, mask=mask)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]

    # ------------------------------------------------------------------ denoise
    def denoise(self, volume: Volume, *, sigma: float | str = "auto", steps: int = 2,
                mask: Volume | np.ndarray | None = None, contrast: str | None = None,
                rician: bool = True, seed: int = 0, adapt: int | AdaptConfig = 20) -> DenoiseResult:
        """Estimate the noise level, start the reverse diffusion at the matching timestep.

        ``steps=1`` returns the Tweedie (MMSE) estimate; more steps run DDIM
        from that timestep and give a sharper but less averaged result. The
        default, 2, scored 0.1-1.3 dB above 1 on every real-scan input of
        ``benchmarks/bench_denoise.py`` at twice the time.

        ``adapt``: optimiser steps of test-time adaptation (or an
        :class:`~medhdiff.tasks.adapt.AdaptConfig`, whose own seed is then used): a copy of the patch network
        is first fitted to this scan's own noise (recorrupted-to-recorrupted,
        self-supervised), then it denoises the scan. The loaded model is not changed.
        The default, 20 steps, scored 0.5-1.9 dB (mean 1.0 dB) above no adaptation on all 24
        real-scan inputs of ``benchmarks/bench_denoise.py``, for about 13 s on 2 CPU cores;
        ``adapt=0`` turns it off.
        """
        start = time.time()
        if steps < 1:
            raise InputError("--steps must be >= 1")
        prep = self.prepare(volume, mask)
        scale = prep.record.norm.scale
        brain = self.preprocessor.inverse(prep.mask.astype(np.float32), prep.record, kind="mask").astype(bool)
        data = np.nan_to_num(volume.data.astype(np.float32))
        if sigma == "auto":
            # Estimated on the scan's own grid: resampling (e.g. 2 mm -> 1 mm) smooths white noise and
            # would hide it from the finest wavelet band. The normalisation scale is the same in both spaces.
            sigma_raw, method = estimate_sigma(data, brain)
            sigma_norm = sigma_raw / scale
        else:
            try:
                sigma_norm, method = float(sigma) / scale, "given"
            except (TypeError, ValueError):
                raise InputError(f"--sigma must be auto or a number, got {sigma!r}") from None
            if sigma_norm < 0:
                raise InputError("--sigma must be >= 0")
        label = self.class_label(contrast, str(volume.path or ""))
        t = int(self.schedule.timestep_for_sigma(sigma_norm))
        y = self._tensor(prep.image)
        m = self._tensor(prep.mask.astype(np.float32))
        # windows per adaptation step follow --batch-size, the user's memory knob
        cfg = adapt if isinstance(adapt, AdaptConfig) else AdaptConfig(
            iterations=int(adapt), seed=int(seed), batch=min(AdaptConfig.batch, self.sampler.batch_size))
        if cfg.iterations < 0:
            raise InputError("--adapt must be >= 0")
        losses: list[float] = []
        if t <= 0:
            out = prep.image
        else:
            x_t = self.schedule.xt_from_noisy(y, t)
            patch_model, coarse = self.bundle.patch_model, None
            if cfg.iterations > 0:
                coarse = self.sampler.coarse_stage(self.bundle.global_model, x_t, t, steps, class_label=label)
                _, cond = self.sampler.condition(coarse, x_t, m)
                # recorruption noise: white on the scan's grid, resampled as the scan's own noise was
                rng = np.random.default_rng(cfg.seed)
                fields = [self.preprocessor.to_model(rng.standard_normal(volume.shape, dtype=np.float32), prep.record,
                                                     kind="field") for _ in range(min(4, cfg.iterations))]
                patch_model, losses = adapt_patch_model(
                    self.bundle.patch_model, y, prep.mask, cond, sigma_norm, self.schedule, tuple(self.cfg.patch_size),
                    cfg, noise_fields=fields, class_label=label, device=self.device,
                    amp_dtype=self.sampler.amp_dtype, progress=self.sampler.progress)
            res = self.sampler.sample(self.bundle.global_model, patch_model, x_t, t, steps,
                                      mask=m, class_label=label, coarse_x0=coarse)
            out = res.x0[0, 0].cpu().numpy()
            if rician and sigma_norm > 0:
                out = np.where(prep.mask, rician_bias_correct(out, sigma_norm), out)
        image = self.preprocessor.inverse(out, prep.record, kind="image")
        # outside the processed brain the input is returned unchanged
        image = np.where(brain, image, data).astype(np.float32)
        return DenoiseResult(image=image, residual=(data - image).astype(np.float32), sigma=float(sigma_norm * scale),
                             sigma_method=method, timestep=t, steps=steps, seconds=time.time() - start,
                             info={"sigma_normalised": float(sigma_norm), "mask_source": prep.record.mask_source,
                                   "model_shape": list(prep.record.model_shape), "adapt_iterations": len(losses),
                                   "adapt_loss_first_last": [round(losses[0], 6), round(losses[-1], 6)] if losses else None})

    # ------------------------------------------------------------------ reconstruct
    def _reconstruct_model_space(self, prep: Preprocessed, t: int, steps: int, label: int | None,
                                 generator: torch.Generator, region: np.ndarray | None = None) -> np.ndarray:
        x0 = self._tensor(prep.image)
        m = self._tensor(prep.mask.astype(np.float32))
        noise = torch.randn(x0.shape, generator=generator)
        x_t = self.schedule.add_noise(x0, noise, t)
        hook = None
        if region is not None:
            known = self._tensor((~region).astype(np.float32))

            def hook(x: torch.Tensor, t_prev: int, stage: str) -> torch.Tensor:  # RePaint-style replacement
                if stage != "patch":
                    return x
                if t_prev < 0:
                    return known * x0 + (1 - known) * x
                fresh = self.schedule.add_noise(x0, torch.randn(x0.shape, generator=generator), t_prev)
                return known * fresh + (1 - known) * x

        res = self.sampler.sample(self.bundle.global_model, self.bundle.patch_model, x_t, t, steps, mask=m,
                                  class_label=label, step_hook=hook, generator=generator,
                                  coarse_timestep=self.coarse_timestep)
        return res.x0[0, 0].cpu().numpy()

    def reconstruct(self, volume: Volume, *, strength: float = 0.5, steps: int = 10,
                    region: Volume | np.ndarray | None = None, mask: Volume | np.ndarray | None = None,
                    contrast: str | None = None, seed: int = 0) -> ReconstructResult:
        """Pseudo-healthy reconstruction (SDEdit): noise to ``strength`` then denoise.

        With ``region`` (a mask on the input grid) only that region is
        re-synthesised (RePaint-style inpainting): at every step the voxels
        outside it are replaced by the input noised to the same level, and the
        output equals the input outside the region.
        """
        start = time.time()
        if not 0.0 < strength <= 1.0:
            raise InputError("--strength must be in (0, 1]")
        prep = self.prepare(volume, mask)
        label = self.class_label(contrast, str(volume.path or ""))
        t = max(1, int(round(strength * (self.schedule.num_train_timesteps - 1))))
        g = torch.Generator().manual_seed(int(seed))
        region_model = None
        region_orig = None
        if region is not None:
            region_arr = region.data if isinstance(region, Volume) else np.asarray(region)
            if region_arr.shape != volume.shape:
                raise InputError(f"--mask region shape {region_arr.shape} differs from the image {volume.shape}")
            region_orig = region_arr > 0
            if not region_orig.any():
                raise InputError("the inpainting region is empty")
            region_model = self.preprocessor.to_model(region_orig.astype(np.float32), prep.record, kind="map") > 0
            region_model = ndimage.binary_dilation(region_model, iterations=1)
        out = self._reconstruct_model_space(prep, t, steps, label, g, region_model)
        image = self.preprocessor.inverse(out, prep.record, kind="image")
        data = np.nan_to_num(volume.data.astype(np.float32))
        if region_orig is not None:
            image = np.where(region_orig, image, data)
        else:
            brain = self.preprocessor.inverse(prep.mask.astype(np.float32), prep.record, kind="mask").astype(bool)
            image = np.where(brain, image, data)
        return ReconstructResult(image=image.astype(np.float32), timestep=t, steps=steps,
                                 seconds=time.time() - start)

    # ------------------------------------------------------------------ detect
    def anomaly_map(self, prep: Preprocessed, *, label: int | None, polarity: str, ensemble: int,
                    strengths: tuple[float, ...], steps: int, seed: int,
                    smooth_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Model-space anomaly score and mean reconstruction: ``residual_score`` of the ``residuals``."""
        residuals, rec = self.residuals(prep, label=label, ensemble=ensemble, strengths=strengths, steps=steps,
                                        seed=seed)
        return self.residual_score(residuals, prep.mask, polarity, smooth_mm, prep.record.model_spacing), rec

    def residuals(self, prep: Preprocessed, *, label: int | None, ensemble: int, strengths: tuple[float, ...],
                  steps: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
        """The signed residuals (scan minus reconstruction) of ``ensemble`` pseudo-healthy reconstructions in
        model space, and their mean reconstruction."""
        g = torch.Generator().manual_seed(int(seed))
        recs = []
        for k in range(max(1, ensemble)):
            s = strengths[k % len(strengths)]
            t = max(1, int(round(s * (self.schedule.num_train_timesteps - 1))))
            recs.append(self._reconstruct_model_space(prep, t, steps, label, g))
        return [prep.image - rec for rec in recs], np.mean(np.stack(recs), axis=0).astype(np.float32)

    @classmethod
    def residual_score(cls, residuals: list[np.ndarray], mask: np.ndarray, polarity: str, smooth_mm: float = 0.0,
                       spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
        """The anomaly score of signed residuals: each one smoothed inside the brain (``smooth_mm > 0``: a
        Gaussian of that sigma in mm, normalised by the mask's own smoothing so the brain's edge is not pulled
        to zero), kept in the lesion's ``polarity`` (``bright``: the scan above its reconstruction, ``dark``,
        ``both``: the magnitude), the median over the ensemble, then (unsmoothed only) a 3-voxel median filter;
        zero outside ``scored_region``.

        Smoothing the signed residual before the polarity lets a reconstruction's small misplacements of
        edges (a sulcus one voxel off leaves a bright and a dark rim side by side) cancel, while a lesion
        the reconstruction heals leaves a residual of one sign over its whole extent."""
        mask = np.asarray(mask, dtype=bool)
        if smooth_mm > 0:
            sigma = [smooth_mm / float(s) for s in spacing][: mask.ndim]
            weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma, mode="constant")
            inside = weight > 1e-3
            smoothed = []
            for diff in residuals:
                num = ndimage.gaussian_filter(np.where(mask, diff, 0.0).astype(np.float32), sigma, mode="constant")
                smoothed.append(np.where(inside, num / np.maximum(weight, 1e-3), 0.0))
            residuals = smoothed
        if polarity == "bright":
            kept = [np.maximum(r, 0.0) for r in residuals]
        elif polarity == "dark":
            kept = [np.maximum(-r, 0.0) for r in residuals]
        else:
            kept = [np.abs(r) for r in residuals]
        score = np.median(np.stack(kept), axis=0)
        if not smooth_mm > 0:
            score = ndimage.median_filter(score, size=3)
        return np.where(cls.scored_region(mask), score, 0.0).astype(np.float32)

    @staticmethod
    def scored_region(mask: np.ndarray) -> np.ndarray:
        """Where ``anomaly_map`` scores: the brain mask eroded twice (its rim is partial-volume)."""
        return ndimage.binary_erosion(mask, iterations=2)

    @staticmethod
    def scale_score(score: np.ndarray, region: np.ndarray, how: str) -> tuple[np.ndarray, float | None]:
        """``score`` divided by its own ``how`` statistic (``detect.score_scale``: ``"mean"`` or ``"pNN"``) inside
        ``region`` (``scored_region``), and the divisor; ``"none"``, or nothing scored: as it is, ``None``."""
        stat = score_scale_statistic(how)
        values = score[region]
        if stat is None or not values.size:
            return score, None
        divisor = float(values.mean()) if stat == "mean" else float(np.percentile(values, stat))
        if not divisor > 1e-8:  # a perfect reconstruction: nothing to scale by
            return score, None
        return (score / divisor).astype(np.float32), divisor

    @staticmethod
    def bright_regions(image: np.ndarray, brain: np.ndarray, percentiles, level: str = "scan",
                       filtered: tuple[np.ndarray, np.ndarray] | None = None) -> dict[float, np.ndarray]:
        """Where the scan itself is bright, per percentile: its median-filtered intensity above that
        ``percentile`` inside the scored region (the brain mask eroded twice, as for the score), in model
        space. The filtering is done once for all the percentiles.

        ``level`` says what the percentile is of: ``"scan"``, the filtered intensities in the scored region
        themselves, or ``"robust"``, a normal distribution fitted to them by their median and MAD (its
        standard deviation taken as 1.4826 MAD). A large lesion fills the scan's own upper tail, so its
        empirical percentile climbs into the lesion; the median and MAD barely move until half the region
        is lesion.

        An intensity grow region for findings: the per-scan level adapts to each scan's own
        contrast, and only voxels connected to a seed of the residual score ever join. ``filtered``
        (``filtered_region``'s result) saves a second median filter where the caller already has one.
        """
        if level not in INTENSITY_LEVELS or level == "outside":  # "outside" needs findings: its own method
            raise InputError(f"the intensity grow level must be scan or robust here, got {level!r}")
        percentiles = [float(p) for p in percentiles]
        if not percentiles:
            return {}
        smooth, inner = filtered or Predictor.filtered_region(image, brain)
        if not inner.any():
            return {p: inner for p in percentiles}
        values = smooth[inner]
        if level == "robust":
            centre, sigma = robust_fit(values)
            cut = {p: centre + NormalDist().inv_cdf(p / 100.0) * sigma for p in percentiles}
        else:
            cut = dict(zip(percentiles, np.percentile(values, percentiles)))
        return {p: (smooth > cut[p]) & inner for p in percentiles}

    @classmethod
    def outside_findings_region(cls, score: np.ndarray, threshold: float, grow_region: np.ndarray,
                                filtered: tuple[np.ndarray, np.ndarray], percentile: float, voxel_ml: float,
                                min_volume_ml: float, spacing=(1.0, 1.0, 1.0), opening_mm: float = 0.0,
                                rounds: int = OUTSIDE_ROUNDS) -> tuple[np.ndarray, int]:
        """The intensity grow region at the ``"outside"`` level, and how many times the level was taken.

        The findings are first formed as ``_findings`` forms them (seeds of ``score`` above ``threshold`` of at
        least ``min_volume_ml``) through ``grow_region`` (the score's own grow region) joined with the filtered
        intensity (``filtered``: ``filtered_region``'s result) above its ``percentile`` in the scored region,
        the ``"scan"`` level. Then the percentile is taken again over the scored region less those findings
        and a margin around them (``OUTSIDE_MARGIN_MM`` over the finest voxel size, in face-connected
        dilations: 2 mm along the axes on a 1 mm grid, less on the diagonals), and the findings regrown, until they stop changing (at most
        ``rounds`` levels). Without the margin, the bright rim each round adds would leave the level and
        lower it again, round after round. A large bright lesion
        fills the scan's own upper tail and lifts the scan level into itself; once its found part is left out,
        the level falls back towards the healthy tissue's own tail, heavy or not. A scan without findings
        keeps the scan level exactly, so this never seeds a finding. Measured, it runs away where bright
        healthy tissue connects to a finding (each level lets some in, leaving it out lowers the next): on
        TCGA-DU-7294's FLAIR 18 mL became 368 mL in 8 levels (``bench_levers.py --sections outside``), so no
        shipped calibration uses it. ``opening_mm`` opens each grow region as ``detect`` does (``open_region``
        on a grid of ``spacing`` mm)."""
        smooth, inner = filtered
        grow_region = np.asarray(grow_region, dtype=bool)

        def grown(cut: float) -> tuple[np.ndarray, np.ndarray]:
            bright = (smooth > cut) & inner
            region = grow_region | bright
            if opening_mm > 0:
                region = cls.open_region(region, spacing, opening_mm)
            return bright, cls._findings(score, threshold, voxel_ml, min_volume_ml, region)

        if not inner.any():
            return inner, 0
        step = max(1, int(round(OUTSIDE_MARGIN_MM / min(float(v) for v in spacing))))
        bright, found = grown(float(np.percentile(smooth[inner], percentile)))
        taken = 1
        while taken < rounds and found.any():
            rest = inner & ~ndimage.binary_dilation(found, iterations=step)
            if not rest.any():
                break
            new_bright, new_found = grown(float(np.percentile(smooth[rest], percentile)))
            taken += 1
            if np.array_equal(new_found, found):
                bright = new_bright
                break
            bright, found = new_bright, new_found
        return bright, taken

    @staticmethod
    def filtered_region(image: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The median-filtered (3^3) image and the scored region (the brain eroded twice) that the intensity
        grow region is formed from."""
        inner = ndimage.binary_erosion(brain, iterations=2)
        return ndimage.median_filter(np.asarray(image, np.float32), size=3), inner

    @staticmethod
    def intensity_tail_sd(image: np.ndarray, brain: np.ndarray, percentile: float,
                          filtered: tuple[np.ndarray, np.ndarray] | None = None) -> float | None:
        """How far the scan's own ``percentile`` of filtered intensity (the 'scan' grow level) lies above its
        median, in robust SDs (1.4826 MAD). A normal tissue distribution puts p98 about 2 SDs up; a large
        bright lesion fills the upper tail itself and lifts the level into the lesion, whose edges the
        intensity grow region then leaves out. ``None`` without a scored region."""
        smooth, inner = filtered or Predictor.filtered_region(image, brain)
        if not inner.any():
            return None
        values = smooth[inner]
        centre, sigma = robust_fit(values)
        return (float(np.percentile(values, percentile)) - centre) / sigma if sigma > 0 else None

    @staticmethod
    def open_region(region: np.ndarray, spacing, radius_mm: float) -> np.ndarray:
        """``region`` opened (eroded, then dilated) with a ball of ``radius_mm`` on a grid of ``spacing`` mm:
        what is left are the parts at least about twice the radius thick. The ball is measured in mm, so on
        thick slices it may span no neighbour across slices; a radius below every voxel size changes nothing."""
        region = np.asarray(region, dtype=bool)
        if radius_mm <= 0 or not region.any():
            return region
        spacing = np.asarray(spacing, dtype=float)[: region.ndim]
        half = np.floor(radius_mm / spacing + 1e-6).astype(int)
        if not half.any():
            return region
        grid = np.meshgrid(*[np.arange(-h, h + 1) * sp for h, sp in zip(half, spacing)], indexing="ij")
        ball = sum(g**2 for g in grid) <= radius_mm**2 + 1e-6
        return ndimage.binary_opening(region, structure=ball)

    def _score(self, volume: Volume, *, threshold, ensemble, strengths, steps, mask, contrast, polarity, seed,
               grow="auto", min_volume_ml: float | None = None):
        """Score map on the input grid, reconstruction, and the thresholds that apply to it."""
        cal = dict(self.bundle.meta.get("calibration", {}))
        fallback = DetectConfig()  # a model calibrated before these settings were stored
        strengths = tuple(strengths or cal.get("strengths", fallback.strengths))
        ensemble = int(ensemble or cal.get("ensemble", fallback.ensemble))
        steps = int(steps or cal.get("steps", fallback.steps))
        prep = self.prepare(volume, mask)
        label = self.class_label(contrast, str(volume.path or ""))
        name = self.cfg.contrasts[label] if label is not None else (contrast or guess_contrast(str(volume.path or "")))
        if polarity == "auto":
            polarity = "bright" if name in BRIGHT_LESION_CONTRASTS else "both"
        if polarity not in ("bright", "dark", "both"):
            raise InputError("--polarity must be auto, bright, dark or both")
        smooth_mm = float((cal.get("score_smooth_mm") or {}).get(name, 0.0))
        score, rec = self.anomaly_map(prep, label=label, polarity=polarity, ensemble=ensemble,
                                      strengths=strengths, steps=steps, seed=seed, smooth_mm=smooth_mm)
        region = self.scored_region(prep.mask)
        scale = (cal.get("score_scale") or {}).get(name, "none")
        score, divisor = self.scale_score(score, region, scale)
        score_map = np.maximum(self.preprocessor.inverse(score, prep.record, kind="map"), 0.0)
        reconstruction = self.preprocessor.inverse(rec, prep.record, kind="image")
        if threshold == "auto":
            thr_table = cal.get("threshold", {})
            thr = thr_table.get(name) if isinstance(thr_table, dict) else thr_table
            if thr is None:
                inner = score[region]
                thr = float(np.median(inner) + 6.0 * 1.4826 * np.median(np.abs(inner - np.median(inner))))
                log.warning("the model has no calibrated threshold for %s; using a per-scan robust one (%.4f)",
                            name, thr)
                thr_source = "per-scan robust (median + 6 MAD)"
            else:
                thr_source = "calibrated on healthy validation volumes"
        else:
            try:
                thr, thr_source = float(threshold), "user"
            except (TypeError, ValueError):
                raise InputError(f"--threshold must be auto or a number, got {threshold!r}") from None
        grow_thr = self._grow_threshold(grow, cal, name, float(thr))
        # the calibrated intensity grow region joins the score's one only with the calibrated grow level
        table = cal.get("grow_intensity_percentile", {})
        bright_p = table.get(name) if grow == "auto" and grow_thr is not None and isinstance(table, dict) else None
        bright_level = (cal.get("grow_intensity_level") or {}).get(name, "scan")
        opening = float(cal.get("grow_opening_mm", 0.0))
        grow_mask, tail_sd, rounds = None, None, None
        if grow_thr is not None:
            grow_mask = score_map > grow_thr
            if bright_p is not None:
                filtered = self.filtered_region(prep.image, prep.mask)  # one median filter for every use
                if bright_level == "outside":  # the findings, in model space, set the level
                    spacing = prep.record.model_spacing
                    bright, rounds = self.outside_findings_region(
                        score, float(thr), score > grow_thr, filtered, float(bright_p),
                        float(np.prod(spacing)) / 1000.0, self._min_volume(min_volume_ml, name, threshold == "auto"),
                        spacing, opening)
                else:
                    bright = self.bright_regions(prep.image, prep.mask, [float(bright_p)], bright_level,
                                                 filtered)[float(bright_p)]
                grow_mask |= self.preprocessor.inverse(bright.astype(np.float32), prep.record, kind="mask") > 0
                if bright_level != "robust":
                    tail_sd = self.intensity_tail_sd(prep.image, prep.mask, float(bright_p), filtered)
                    if bright_level == "scan" and tail_sd is not None and tail_sd > LESION_TAIL_SD:
                        log.warning("%s: the scan's own p%g lies %.1f robust SDs above its median (a normal "
                                    "tissue distribution: about 2): a large bright lesion fills the tail, so "
                                    "findings may miss its edges; compare with a T2 of the same subject",
                                    volume.path or "input", float(bright_p), tail_sd)
        if grow_mask is not None and opening > 0:
            grow_mask = self.open_region(grow_mask, volume.spacing, opening)
        settings = {"contrast": name, "polarity": polarity, "threshold": float(thr), "threshold_source": thr_source,
                    "grow_threshold": grow_thr,
                    "grow_intensity_percentile": None if bright_p is None else float(bright_p),
                    "grow_intensity_level": None if bright_p is None else bright_level,
                    "grow_intensity_tail_sd": None if tail_sd is None else round(tail_sd, 2),
                    "grow_intensity_rounds": rounds,
                    "grow_opening_mm": opening if grow_mask is not None else None,
                    "score_scale": None if divisor is None else {"statistic": scale, "divisor": round(divisor, 6)},
                    "score_smooth_mm": smooth_mm,
                    "ensemble": ensemble, "strengths": list(strengths), "steps": steps}
        return score_map.astype(np.float32), reconstruction, settings, grow_mask

    @staticmethod
    def _grow_threshold(grow, cal: dict, name: str, thr: float) -> float | None:
        """The lower (hysteresis) threshold findings grow to, or None for a single threshold.

        ``grow`` is ``"auto"`` (the calibrated one, when the model has it), ``"off"``
        or a score value; a value at or above the seed threshold means no growth.
        """
        if grow is None or grow == "off":
            return None
        if grow == "auto":
            table = cal.get("grow_threshold", {})
            value = table.get(name) if isinstance(table, dict) else None
        else:
            try:
                value = float(grow)
            except (TypeError, ValueError):
                raise InputError(f"--grow must be auto, off or a number, got {grow!r}") from None
        return float(value) if value is not None and float(value) < thr else None

    @staticmethod
    def _findings(score_map: np.ndarray, thr: float, voxel_ml: float, min_volume_ml: float,
                  grow_mask: np.ndarray | None = None) -> np.ndarray:
        """The finding mask: connected components above ``thr`` of at least ``min_volume_ml``.

        With ``grow_mask`` (hysteresis), each such component is a seed, and the
        finding is the connected component of ``grow_mask`` that holds it:
        voxels below ``thr`` join only where they connect to a seed.
        """
        labels, n = ndimage.label(score_map > thr)
        if not n:
            return np.zeros(score_map.shape, dtype=bool)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:] * voxel_ml
        seeds = np.concatenate([[False], sizes >= min_volume_ml])[labels]
        if grow_mask is None or not seeds.any():
            return seeds
        grown, n = ndimage.label(grow_mask | seeds)
        hit = np.zeros(n + 1, dtype=bool)
        hit[grown[seeds]] = True
        hit[0] = False
        return hit[grown]

    @classmethod
    def combine_findings(cls, norms: dict[str, np.ndarray], grows: dict[str, np.ndarray | None],
                         seed_ml: dict[str, float], voxel_ml: float, level: float = 1.0, rule: str = "union",
                         order: list[str] | None = None, bound: list[str] | None = None) -> dict[str, np.ndarray]:
        """Each contrast's findings when one subject's co-registered contrasts are scored together; the
        mask is their union. ``norms`` are the score maps divided by their seed thresholds, so every
        contrast seeds above ``level`` (with its own smallest seed, ``seed_ml``); ``grows`` are their grow
        regions (``None``: no growth). ``rule``:

        * ``"union"``: each contrast's seeds grow through its own grow region, as if scored alone;
        * ``"consensus"``: seeds still come from any contrast, but grow only through voxels that every
          contrast of ``bound`` (default: all) with a grow region calls abnormal: one contrast finds, all
          of them bound the extent;
        * ``"lead"``: the first contrast of ``order`` keeps its findings as if scored alone; a later
          contrast's finding joins only where it touches (shares or borders a voxel of) none of those
          already kept.
        """
        if rule not in COMBINE_RULES:
            raise InputError(f"the combination rule must be one of {', '.join(COMBINE_RULES)}, got {rule!r}")
        names = list(order or norms)
        if sorted(names) != sorted(norms):
            raise ValueError("order must name each contrast once")
        if rule == "consensus":
            present = [grows[n] for n in (bound or names) if grows.get(n) is not None]
            shared = np.logical_and.reduce(present) if present else None
            grows = {n: None if grows[n] is None else shared for n in names}
        found = {n: cls._findings(norms[n], level, voxel_ml, seed_ml[n], grows[n]) for n in names}
        if rule == "lead":
            kept = np.zeros(next(iter(norms.values())).shape, dtype=bool)
            for n in names:
                labels, count = ndimage.label(found[n])
                near = ndimage.binary_dilation(kept)  # the neighbourhood ndimage.label joins through
                touch = np.zeros(count + 1, dtype=bool)
                touch[labels[near & (labels > 0)]] = True
                found[n] = (labels > 0) & ~touch[labels]
                kept |= found[n]
        return found

    @staticmethod
    def lead_order(cal: dict, names) -> tuple[list[str], list[str]]:
        """``(order, useful)`` for ``combine_findings`` from a calibration record: the contrasts by their
        calibrated synthetic-tumour Dice, best first (ties and unmeasured ones as given), and those the
        calibration found tumours in (``useful``; all of them where it found none)."""
        hysteresis, tumour = cal.get("hysteresis") or {}, cal.get("synthetic_tumour") or {}

        def dice_of(n: str) -> float:
            t = tumour.get(n) or {}
            return float(t.get("dice_at_calibrated", t.get("best_dice")) or 0.0)

        names = list(names)
        useful = [n for n in names if n in hysteresis and hysteresis[n].get("useful", True)]
        return sorted(names, key=lambda n: -dice_of(n)), useful or names

    @staticmethod
    def _describe(keep: np.ndarray, score_map: np.ndarray, volume: Volume) -> list[dict]:
        """One report entry per connected component of ``keep``, largest first."""
        labels, n = ndimage.label(keep)
        components = []
        if n:
            idx = np.arange(1, n + 1)
            ones = np.ones(keep.shape, dtype=np.float32)
            sizes = ndimage.sum_labels(ones, labels, idx)
            maxs = ndimage.maximum(score_map, labels, idx)
            means = ndimage.mean(score_map, labels, idx)
            centres = ndimage.center_of_mass(ones, labels, idx)
            for size, mx, mean, c in zip(sizes, maxs, means, centres):
                world = volume.affine @ np.array([*c, 1.0])
                components.append({"volume_ml": round(float(size) * volume.voxel_volume_ml, 3),
                                   "centroid_mm": [round(float(v), 2) for v in world[:3]],
                                   "centroid_voxel": [round(float(v), 1) for v in c],
                                   "max_score": round(float(mx), 5), "mean_score": round(float(mean), 5)})
        components.sort(key=lambda c: -c["volume_ml"])
        for k, c in enumerate(components, start=1):
            c["id"] = k
        return components

    @classmethod
    def _components(cls, score_map: np.ndarray, thr: float, volume: Volume, min_volume_ml: float,
                    grow_mask: np.ndarray | None = None):
        """``(finding mask, report entries)`` of one score map; see ``_findings``."""
        keep = cls._findings(score_map, thr, volume.voxel_volume_ml, min_volume_ml, grow_mask)
        return keep, cls._describe(keep, score_map, volume)

    def _min_volume(self, min_volume_ml: float | None, contrast: str | None = None,
                    calibrated: bool = True) -> float:
        """The smallest seed component kept: the user's, else the one calibrated for ``contrast`` (with the
        calibrated thresholds only: ``calibrated``), else the calibration's common one."""
        cal = dict(self.bundle.meta.get("calibration", {}))
        if min_volume_ml is not None:
            return float(min_volume_ml)
        table = cal.get("seed_min_volume_ml", {})
        if calibrated and isinstance(table, dict) and table.get(contrast) is not None:
            return float(table[contrast])
        return float(cal.get("min_volume_ml", DetectConfig().min_volume_ml))

    def _report(self, volume: Volume, settings: dict, components: list, min_volume_ml: float | dict,
                start: float) -> dict:
        report = {
            "input": str(volume.path) if volume.path else None,
            **{k: settings[k] for k in ("contrast", "polarity", "threshold", "threshold_source", "grow_threshold")},
            "grow_intensity_percentile": settings.get("grow_intensity_percentile"),
            "grow_intensity_level": settings.get("grow_intensity_level"),
            "grow_intensity_tail_sd": settings.get("grow_intensity_tail_sd"),
            "grow_intensity_rounds": settings.get("grow_intensity_rounds"),
            "grow_opening_mm": settings.get("grow_opening_mm"),
            "score_scale": settings.get("score_scale"),
            "score_smooth_mm": settings.get("score_smooth_mm"),
            "min_component_ml": min_volume_ml,
            "total_lesion_ml": round(float(sum(c["volume_ml"] for c in components)), 3),
            "n_components": len(components),
            "components": components,
            **{k: settings[k] for k in ("ensemble", "strengths", "steps")},
            "model_sha256": self.sha256,
        }
        report["seconds"] = round(time.time() - start, 2)
        return report

    def _calibration_check(self, contrast: str, source: str = "input", warn: bool = True) -> dict | None:
        """How the model fared on this contrast's synthetic tumours when it was calibrated: the Dice at its
        calibrated levels and whether it found tumours at all (``useful``). Where it did not, a clean result
        says little, and a warning says so. ``None`` for a model calibrated without tumours."""
        cal = dict(self.bundle.meta.get("calibration") or {})
        pick = (cal.get("hysteresis") or {}).get(contrast)
        tumour = (cal.get("synthetic_tumour") or {}).get(contrast)
        if not pick or not tumour:
            return None
        dice = tumour.get("dice_at_calibrated", tumour.get("best_dice"))
        useful = bool(pick.get("useful", True))
        if not useful and warn:
            log.warning("%s: this detection model found no synthetic tumours on %s when it was calibrated "
                        "(Dice %.2f); an empty result on %s means little, score a T2 or FLAIR scan as well",
                        source, contrast, dice or 0.0, contrast)
        return {"synthetic_tumour_dice": None if dice is None else round(float(dice), 4), "useful": useful}

    def detect(self, volume: Volume, *, threshold: float | str = "auto", ensemble: int | None = None,
               strengths: tuple[float, ...] | None = None, steps: int | None = None,
               mask: Volume | np.ndarray | None = None, contrast: str | None = None,
               polarity: str = "auto", min_volume_ml: float | None = None, seed: int = 0,
               grow: float | str | None = "auto") -> DetectResult:
        """Anomaly map, thresholded mask and a report of connected components.

        Findings are seeded above the threshold and grow, through connected
        voxels, down to the grow threshold (``grow``: ``"auto"`` = calibrated,
        ``"off"``, or a score value).
        """
        start = time.time()
        score_map, reconstruction, settings, grow_mask = self._score(
            volume, threshold=threshold, ensemble=ensemble, strengths=strengths, steps=steps, mask=mask,
            contrast=contrast, polarity=polarity, seed=seed, grow=grow, min_volume_ml=min_volume_ml)
        min_ml = self._min_volume(min_volume_ml, settings["contrast"], threshold == "auto")
        keep, components = self._components(score_map, settings["threshold"], volume, min_ml, grow_mask)
        report = self._report(volume, settings, components, min_ml, start)
        report["calibration_check"] = self._calibration_check(settings["contrast"], str(volume.path or "input"))
        return DetectResult(score_map=score_map, mask=keep.astype(np.uint8), report=report,
                            reconstruction=reconstruction, seconds=time.time() - start)

    def detect_multi(self, volumes: dict[str, Volume], *, threshold: float | str = "auto",
                     ensemble: int | None = None, steps: int | None = None,
                     mask: Volume | np.ndarray | None = None, min_volume_ml: float | None = None,
                     seed: int = 0, grow: str | None = "auto", combine: str = "consensus") -> DetectResult:
        """One subject's co-registered scans of several contrasts (e.g. T2 and FLAIR) together.

        Each contrast is scored on its own and divided by its own calibrated
        threshold; the map written is their voxel-wise maximum. A contrast's
        findings are its components above 1 (``--threshold`` scales that level),
        grown through the grow regions (``grow="off"`` disables growth) as
        ``combine`` says (``combine_findings``: ``"consensus"``, the default,
        through the voxels every contrast's region holds; ``"union"``, each
        through its own; ``"lead"``, the contrast of best calibrated
        synthetic-tumour Dice first: ``lead_order``), and the mask is the union
        over contrasts. A contrast whose calibration found no synthetic tumours
        (T1 in the bundled model) still seeds, but does not bound consensus.
        Consensus was chosen on paired synthetic brains (bench_levers' combine
        section): one contrast's over-grown extent (T2's) no longer carries the
        joint finding. A seed in one contrast never
        grows through voxels only another contrast's grow region holds: that
        level was calibrated for that contrast's own seeds.
        """
        start = time.time()
        if len(volumes) < 1:
            raise InputError("no scans given")
        items = list(volumes.items())
        ref_name, ref = items[0]
        for name, vol in items[1:]:
            if vol.shape != ref.shape or not np.allclose(vol.affine, ref.affine, atol=1e-3):
                raise InputError(f"the {name} and {ref_name} scans are not on the same grid; "
                                 "co-register them first")
        level = 1.0
        if threshold != "auto":
            try:
                level = float(threshold)
            except (TypeError, ValueError):
                raise InputError(f"--threshold must be auto or a number, got {threshold!r}") from None
        if grow not in (None, "auto", "off"):
            raise InputError("with several contrasts --grow must be auto or off")
        if combine not in COMBINE_RULES:
            raise InputError(f"--combine must be one of {', '.join(COMBINE_RULES)}, got {combine!r}")
        combined, per, norms, grows, seed_mls = None, {}, {}, {}, {}
        for name, vol in items:
            score_map, _, settings, grow_mask = self._score(vol, threshold="auto", ensemble=ensemble, strengths=None,
                                                            steps=steps, mask=mask, contrast=name, polarity="auto",
                                                            seed=seed, grow=grow, min_volume_ml=min_volume_ml)
            norm = score_map / max(settings["threshold"], 1e-12)
            combined = norm if combined is None else np.maximum(combined, norm)
            norms[name], grows[name] = norm, grow_mask
            seed_ml = seed_mls[name] = self._min_volume(min_volume_ml, settings.get("contrast", name))
            per[name] = {**{k: settings.get(k) for k in ("threshold", "threshold_source", "grow_threshold",
                                                     "grow_intensity_percentile", "grow_intensity_level",
                                                     "grow_intensity_tail_sd", "grow_intensity_rounds",
                                                     "grow_opening_mm", "score_scale",
                                                     "score_smooth_mm", "polarity")},
                         "min_component_ml": seed_ml,
                         "calibration_check": self._calibration_check(name, warn=False)}
        # "lead": the contrast whose calibration found synthetic tumours best goes first; "consensus": only
        # contrasts the calibration found tumours in bound the extent (T1's region would shrink every finding)
        order, useful = self.lead_order(dict(self.bundle.meta.get("calibration") or {}), per)
        found = self.combine_findings(norms, grows, seed_mls, ref.voxel_volume_ml, level, combine, order, useful)
        keep = np.logical_or.reduce(list(found.values()))
        for name in per:
            per[name]["found_ml"] = round(float(found[name].sum()) * ref.voxel_volume_ml, 3)
        grown = any(g is not None for g in grows.values())
        components = self._describe(keep, combined, ref)
        settings = {"contrast": "+".join(volumes), "polarity": "per contrast", "threshold": level,
                    "threshold_source": "each contrast's map divided by its calibrated threshold",
                    "grow_threshold": "per contrast" if grown else None,
                    "ensemble": ensemble, "strengths": None, "steps": steps}
        # each contrast seeds with its own smallest component, so the report names them per contrast
        report = self._report(ref, settings, components, {n: v["min_component_ml"] for n, v in per.items()}, start)
        report["inputs"] = {name: str(v.path) if v.path else None for name, v in items}
        report["per_contrast"] = per
        report["combine"] = combine
        return DetectResult(score_map=combined.astype(np.float32), mask=keep.astype(np.uint8), report=report,
                            reconstruction=None, seconds=time.time() - start)
