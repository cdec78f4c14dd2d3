"""Calibrating detection on held-out synthetic volumes, after training.

For each contrast the model knows, healthy synthetic brains (seeds that
training never draws) go through exactly the scoring that ``medhdiff detect``
uses; the threshold is a high percentile of their in-brain scores, so that a
healthy scan yields only a small false-positive volume. With
``detect.lesion_volumes > 0``, synthetic brains with an injected tumour are
scored too, and where the threshold of best Dice on them (pooled) is higher,
it is used instead. With ``detect.grow_percentiles`` the threshold seeds
findings instead, and the grow threshold they extend to (hysteresis) is the
healthy-score percentile, among those candidates, whose masks (exactly as
``detect`` forms them) score the best pooled Dice on the synthetic tumours,
within a healthy false-positive budget; the seed percentile is chosen with it
among ``detect.seed_percentiles``. A contrast whose best pair within the
budget stays below ``detect.min_useful_dice`` keeps the most conservative
pair. The settings and thresholds are stored in ``model.json`` under
``calibration``; ``--threshold auto`` reads them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medhdiff.diffusion.bundle import update_bundle_meta
from medhdiff.errors import InputError
from medhdiff.io import Volume
from medhdiff.training.config import DetectConfig, TrainConfig

log = logging.getLogger("medhdiff")

#: Lesion sizes of the calibration tumours (mL).
LESION_ML = (5.0, 60.0)


def calibrate_detection(model_dir: str | Path, cfg: TrainConfig, device: torch.device | str = "cpu",
                        detect: DetectConfig | None = None, seed: int = 900_000,
                        progress: Callable[[str, int, int], None] | None = None,
                        contrasts: list[str] | None = None) -> dict:
    """Calibrate ``model_dir``'s detection thresholds and store them in its ``model.json``.

    ``progress(contrast, done, total)`` is called after each scored brain, ``total`` counting the
    brains of all contrasts. ``contrasts`` (a subset of ``cfg.data.contrasts``) recalibrates only
    those and keeps the stored calibration of the others, which must have been made with the same
    shared settings (``_merge_calibration``).
    """
    from medhdiff.metrics import best_dice
    from medhdiff.synth import LesionInjector
    from medhdiff.synth import labels as synth_labels
    from medhdiff.synth.builtin import load_builtin_labelmap
    from medhdiff.synth.generator import HealthyBrainGenerator
    from medhdiff.tasks.predictor import BRIGHT_LESION_CONTRASTS, Predictor

    d = detect or cfg.detect
    dev = torch.device(device)
    predictor = Predictor(model_dir, device=dev.type if dev.type == "cpu" else str(dev),
                          batch_size=32 if dev.type == "cuda" else 4)
    labels, affine = load_builtin_labelmap()
    spacing = cfg.preprocess.spacing[0] if cfg.preprocess.spacing else 1.0

    def score(image: np.ndarray, aff: np.ndarray, brain: np.ndarray, label, polarity: str, s: int, scale: str,
              smooth_mm: float):
        """Model-space score (exactly as ``detect`` computes it), the scored region, the preprocessing."""
        prep = predictor.prepare(Volume(image, aff), mask=brain)
        sc, _ = predictor.anomaly_map(prep, label=label, polarity=polarity, ensemble=d.ensemble,
                                      strengths=d.strengths, steps=d.steps, seed=s, smooth_mm=smooth_mm)
        inner = Predictor.scored_region(prep.mask)
        sc, _ = Predictor.scale_score(sc, inner, scale)
        return sc, inner, prep

    thresholds, fp_ml, lesion_dice, grow_thresholds = {}, {}, {}, {}
    voxel_ml = spacing ** 3 / 1000.0
    chosen = list(cfg.data.contrasts) if contrasts is None else list(dict.fromkeys(contrasts))
    unknown = [c for c in chosen if c not in cfg.data.contrasts]
    if unknown or not chosen:
        raise InputError(f"--contrast must name contrasts of data.contrasts {list(cfg.data.contrasts)}, "
                         f"got {chosen}")
    outside = [c for c in chosen if d.intensity_level(c) == "outside"]
    if outside:  # its findings' level would have to be taken for every candidate pick on every brain
        raise InputError(f"detect.grow_intensity_level 'outside' ({', '.join(outside)}) cannot be calibrated: "
                         "it was measured at a fixed pick (bench_levers.py --sections outside) and runs away on "
                         "real FLAIR; use scan or robust")
    stored = dict(predictor.bundle.meta.get("calibration") or {})
    subset = set(chosen) != set(cfg.data.contrasts) and bool(stored)
    if subset:  # before any scoring: a merge that cannot be made should not cost the whole run
        _check_shared(stored, _shared_settings(d))
    total = sum(d.healthy_count(c) + d.lesion_volumes for c in chosen)
    done = 0

    def tick(contrast: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(contrast, done, total)

    def bright(prep, contrast: str) -> dict:
        """The scan's intensity grow regions, one per candidate percentile (only tried against tumours)."""
        if not (d.lesion_volumes and d.grow_percentiles):
            return {}
        return Predictor.bright_regions(prep.image, prep.mask, d.grow_intensity_percentiles,
                                        d.intensity_level(contrast))

    for contrast in chosen:
        gen = HealthyBrainGenerator(contrast=contrast, spacing=spacing, noise_range=cfg.data.noise_range,
                                    **d.synthesis(contrast))
        label = predictor.class_label(contrast)
        polarity = "bright" if contrast in BRIGHT_LESION_CONTRASTS else "both"
        scale = d.score_scale.get(contrast, "none")
        smooth = d.score_smooth_mm.get(contrast, 0.0)
        pooled, healthy_maps, healthy_bright, lesion_bright = [], [], [], []
        n_healthy = d.healthy_count(contrast)
        for i in range(n_healthy):
            res = gen.generate(labels, affine, seed=seed + i)
            sc, inner, prep = score(res.image, res.affine, res.brain_mask > 0, label, polarity, seed + i, scale,
                                    smooth)
            pooled.append(sc[inner])
            healthy_maps.append(sc)
            healthy_bright.append(bright(prep, contrast))
            tick(contrast)
        values = np.concatenate(pooled)
        thr = float(np.percentile(values, d.percentile))
        fp_ml[contrast] = round(float((values > thr).sum()) * voxel_ml / n_healthy, 3)
        maps = []
        if d.lesion_volumes:
            scores, refs = [], []
            s = seed + 500
            while len(scores) < d.lesion_volumes:
                s += 1
                res = gen.generate(labels, affine, seed=s)
                brain = res.brain_mask > 0
                try:
                    image, lesion, _ = LesionInjector(kind="tumor", volume_ml=LESION_ML).inject(
                        res.image, brain, res.affine, contrast, seed=s,
                        wm_mask=synth_labels.class_mask(res.labels, "wm"))
                except ValueError:  # no room for this draw's tumour: the next seed
                    if s > seed + 600:
                        raise
                    continue
                sc, inner, prep = score(image, res.affine, brain, label, polarity, s, scale, smooth)
                ref = predictor.preprocessor.to_model(lesion.astype(np.float32), prep.record, kind="mask") > 0
                scores.append(sc[inner])
                refs.append(ref[inner])
                maps.append((sc, ref & inner))
                lesion_bright.append(bright(prep, contrast))
                tick(contrast)
            best, thr_dice = best_dice(np.concatenate(scores), np.concatenate(refs))
            lesion_dice[contrast] = {"best_dice": round(float(best), 4), "threshold": float(thr_dice)}
            if thr_dice > thr and not d.grow_percentiles:
                thr = float(thr_dice)
        if d.grow_percentiles:
            choice = _pick_hysteresis(values, healthy_maps, maps, d.for_contrast(contrast), voxel_ml, healthy_bright,
                                      lesion_bright, d.seed_tail.get(contrast))
            thr = choice["threshold"]
            grow_thresholds[contrast] = choice
            dice_at = choice.pop("dice")
            if contrast in lesion_dice:
                lesion_dice[contrast]["dice_at_calibrated"] = dice_at
                lesion_dice[contrast]["dice_and_healthy_fp_ml_by_seed_grow_percentile"] = choice.pop("table")
            else:
                choice.pop("table")
        thresholds[contrast] = thr
        log.info("calibration %s: threshold %.5f, healthy false positives %.2f mL before the component-size filter%s",
                 contrast, thr, fp_ml[contrast],
                 f", synthetic-tumour best Dice {lesion_dice[contrast]['best_dice']:.3f}" if contrast in lesion_dice
                 else "")
    calibration = {"threshold": thresholds, **_shared_settings(d), "healthy_fp_ml_at_percentile": fp_ml,
                   "source": "synthetic healthy brains from the built-in label map, held-out seeds"}
    # per-contrast settings are written only where one differs from its default (or the stored record
    # already has the key), so that records made before a setting existed stay as they were
    for key, value, default in (("score_scale", lambda c: d.score_scale.get(c, "none"), "none"),
                                ("healthy_volumes", d.healthy_count, d.healthy_volumes),
                                ("score_smooth_mm", lambda c: d.score_smooth_mm.get(c, 0.0), 0.0),
                                ("seed_tail", lambda c: d.seed_tail.get(c), None),
                                ("grow_percentiles", lambda c: list(d.grow_grid(c)), list(d.grow_percentiles)),
                                ("grow_intensity_level", d.intensity_level, "scan"),
                                ("calibration_synthesis", lambda c: _jsonable(d.synthesis(c)), {})):
        values = {c: value(c) for c in chosen}
        if any(v != default for v in values.values()) or key in stored:
            calibration[key] = values
    if lesion_dice:
        calibration["synthetic_tumour"] = lesion_dice
    if lesion_dice and not grow_thresholds:
        calibration["source"] += ("; threshold raised to the best-Dice one on as many held-out synthetic tumours "
                                  "where that was higher")
    if grow_thresholds:
        calibration.update(grow_threshold={c: v["grow_threshold"] for c, v in grow_thresholds.items()},
                           seed_min_volume_ml={c: v["seed_min_volume_ml"] for c, v in grow_thresholds.items()},
                           seed_min_volumes_ml={c: list(d.seed_volumes(c)) for c in grow_thresholds},
                           grow_intensity_percentile={c: v["grow_intensity_percentile"]
                                                      for c, v in grow_thresholds.items()},
                           hysteresis=grow_thresholds)
        calibration["source"] += ("; findings are seeded above one healthy-score percentile and grow to a lower "
                                  "one: the pair of best Dice on held-out synthetic tumours within the healthy "
                                  "false-positive budget")
    if any(v is not None for v in (calibration.get("seed_tail") or {}).values()):
        calibration["source"] += ("; where seed_tail is set, each seed threshold is at least the level a new "
                                  "healthy brain seeds above with that probability (an extreme-value fit to the "
                                  "calibration brains' highest seed levels)")
    if subset:
        calibration = _merge_calibration(stored, calibration, chosen)
    update_bundle_meta(model_dir, calibration=calibration)
    return calibration


#: Calibration entries that hold one value per contrast; the others are settings shared by all contrasts.
PER_CONTRAST = ("threshold", "healthy_fp_ml_at_percentile", "grow_threshold", "grow_intensity_percentile",
                "seed_min_volume_ml", "seed_min_volumes_ml", "hysteresis", "synthetic_tumour", "score_scale",
                "score_smooth_mm", "healthy_volumes", "seed_tail", "grow_percentiles", "grow_intensity_level",
                "calibration_synthesis")


def _jsonable(synthesis: dict) -> dict:
    """A contrast's calibration synthesis as the JSON record keeps it (lists, not tuples)."""
    return {k: ({c: list(r) for c, r in v.items()} if isinstance(v, dict) else list(v)) for k, v in synthesis.items()}


def _shared_settings(d: DetectConfig) -> dict:
    """The settings a calibration record shares across its contrasts: what ``calibrate_detection`` writes
    beside the per-contrast entries, and what ``--contrast`` requires the stored record to match."""
    shared = {"percentile": d.percentile, "ensemble": d.ensemble, "steps": d.steps, "strengths": list(d.strengths),
              "min_volume_ml": d.min_volume_ml, "volumes_per_contrast": d.healthy_volumes}
    if d.lesion_volumes:
        shared["lesion_volumes"] = d.lesion_volumes
    if d.grow_percentiles:
        shared.update(grow_intensity_percentiles=list(d.grow_intensity_percentiles),
                      max_healthy_fp_ml=d.max_healthy_fp_ml, max_healthy_fp_ml_worst=d.max_healthy_fp_ml_worst,
                      dice_tie_margin=d.dice_tie_margin, min_useful_dice=d.min_useful_dice)
    if d.grow_opening_mm > 0:  # absent when off, as in records made before the setting existed
        shared["grow_opening_mm"] = d.grow_opening_mm
    return shared


def _check_shared(stored: dict, shared: dict) -> None:
    """Every shared setting must be the same in the stored calibration, or a merged record would describe
    some contrasts wrongly."""
    keys = {k for k in (*stored, *shared) if k not in PER_CONTRAST and k not in ("source", "recalibrated")}
    differ = sorted(k for k in keys if stored.get(k) != shared.get(k))
    if differ:
        raise InputError("the stored calibration was made with other settings (" + ", ".join(differ) + "); "
                         "recalibrate every contrast (leave out --contrast)")


def _merge_calibration(stored: dict, new: dict, contrasts: list[str]) -> dict:
    """``new`` (which calibrated only ``contrasts``) merged into the ``stored`` calibration: the other
    contrasts keep their entries, and the contrasts recalibrated alone are listed under ``recalibrated``.
    The shared settings were checked against ``stored`` before the scoring (``_check_shared``)."""
    merged = dict(new)
    for key in PER_CONTRAST:
        if key in stored or key in new:
            merged[key] = {**dict(stored.get(key) or {}), **dict(new.get(key) or {})}
    merged["recalibrated"] = sorted({*stored.get("recalibrated", []), *contrasts})
    merged["source"] = stored.get("source", new["source"])
    return merged


def _hysteresis_masks(score: np.ndarray, seeds: dict, grow_level: float, bright: np.ndarray | None,
                      opening_mm: float = 0.0, spacing_mm: float = 1.0, rims: dict | None = None) -> dict:
    """What ``Predictor._findings`` returns for each seed mask in ``seeds`` (``{seed level: its components
    of at least the minimum volume}``), all growing through one grow region: ``score > grow_level``, joined
    by ``bright`` (the scan's intensity grow region) when given, and opened with a ball of ``opening_mm``
    (``Predictor.open_region``, as ``detect`` does).

    The grow region is labelled once, and each seed takes its own voxels and the components its
    face-connected rim touches (``rims``: ``seeds`` dilated once, ``_rims``, cached by the caller across
    grow regions, or computed here). That is exactly the components of the grow region joined with that
    seed alone, also where an opened region leaves a seed sticking out of it to bridge two components,
    and without one seed level's voxels bridging another's."""
    from medhdiff.tasks.predictor import Predictor

    grow = score > grow_level
    if bright is not None:
        grow |= bright
    grow = Predictor.open_region(grow, (spacing_mm,) * score.ndim, opening_mm)
    labels, n = ndimage.label(grow)
    rims = rims if rims is not None else _rims(seeds)
    out = {}
    for lv, seed in seeds.items():
        hit = np.zeros(n + 1, dtype=bool)
        hit[labels[rims[lv]]] = True
        hit[0] = False
        out[lv] = hit[labels] | seed
    return out


def _rims(seeds: dict) -> dict:
    """Each seed mask grown by one face-connected voxel (``ndimage.label``'s default connectivity)."""
    return {lv: ndimage.binary_dilation(m, structure=ndimage.generate_binary_structure(m.ndim, 1)) if m.any() else m
            for lv, m in seeds.items()}


def seed_levels(score: np.ndarray, voxel_ml: float, volumes) -> dict[float, float]:
    """For each seed volume ``v`` of ``volumes`` (mL), the lowest seed threshold at which ``score`` has no
    seed component of ``v`` or more: ``Predictor._findings(score, thr, voxel_ml, v)`` is empty for every
    ``thr`` at or above it and not empty below it (0 where even ``score > 0`` has no such component).

    Exact: the threshold is bisected over the map's own sorted values, each step labelling only the
    bounding box of the voxels above the lowest level still in question."""
    values = np.unique(score[score > 0])
    levels = np.concatenate([[0.0], values])  # a threshold between two of them seeds as the lower one does
    cache: dict[int, int] = {}

    def largest(k: int) -> int:
        """The largest component (voxels) of ``score > levels[k]``."""
        if k not in cache:
            above = score > levels[k]
            if not above.any():
                cache[k] = 0
            else:
                box = ndimage.find_objects(above.astype(np.uint8))[0]
                labels, n = ndimage.label(above[box])
                cache[k] = int(np.bincount(labels.ravel())[1:].max()) if n else 0
        return cache[k]

    out = {}
    for v in volumes:
        def seeded(k: int) -> bool:
            return largest(k) * voxel_ml >= v  # the comparison Predictor._findings makes

        if not seeded(0):
            out[float(v)] = 0.0
            continue
        lo, hi = 0, len(levels) - 1  # seeded(lo); nothing lies above the maximum, so not seeded(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if seeded(mid) else (lo, mid)
        out[float(v)] = float(levels[hi])
    return out


#: Euler-Mascheroni constant: the mean of a standard Gumbel distribution.
EULER_GAMMA = 0.5772156649015329


def gumbel_quantile(maxima, tail: float) -> float:
    """The level a new draw exceeds with probability ``tail``, from a Gumbel (extreme-value) distribution
    fitted to ``maxima`` by its moments (scale = sd * sqrt(6) / pi, location = mean - gamma * scale)."""
    x = np.asarray(maxima, dtype=np.float64)
    if x.size < 3:
        raise ValueError("a Gumbel fit needs at least 3 maxima")
    scale = float(x.std(ddof=1)) * np.sqrt(6.0) / np.pi
    loc = float(x.mean()) - EULER_GAMMA * scale
    return float(loc - scale * np.log(-np.log1p(-tail)))


def seed_floors(healthy_maps: list, voxel_ml: float, volumes, tail: float) -> dict[float, dict]:
    """Per seed volume: each healthy map's :func:`seed_levels` and the floor a seed threshold keeps to, the
    level a new healthy brain's highest seed level exceeds with probability ``tail``
    (:func:`gumbel_quantile`). A percentile of the pooled healthy scores bounds how much of a typical brain
    lies above it; this bounds how often a whole new brain seeds a finding, which is what a healthy
    false positive is."""
    per_brain = [seed_levels(sc, voxel_ml, volumes) for sc in healthy_maps]
    return {float(v): {"floor": gumbel_quantile([lv[float(v)] for lv in per_brain], tail),
                       "levels": [lv[float(v)] for lv in per_brain]} for v in volumes}


def _pick_hysteresis(values: np.ndarray, healthy_maps: list, lesion_maps: list, d: DetectConfig,
                     voxel_ml: float, healthy_bright: list | None = None, lesion_bright: list | None = None,
                     seed_tail: float | None = None) -> dict:
    """The (seed, grow) pair of healthy-score percentiles for hysteresis findings, and the intensity
    grow percentile that joins the grow region (``None``: the score alone).

    ``healthy_maps`` are score maps, ``lesion_maps`` ``(score, reference)`` pairs; with
    ``d.grow_intensity_percentiles``, ``healthy_bright``/``lesion_bright`` give each map's
    ``{percentile: Predictor.bright_regions(...)}``. Every pair with the grow percentile below the seed
    one, with each intensity option, is scored: its mean and worst false-positive volume over the
    healthy maps (after the component filter) and its pooled Dice on the synthetic tumours. Among the
    options within the budget (mean at most ``d.max_healthy_fp_ml``, worst at most
    ``d.max_healthy_fp_ml_worst`` when set), those within ``d.dice_tie_margin`` of the best Dice tie, and
    the most conservative of them wins (the largest seed volume of ``d.seed_min_volumes_ml``, then the
    highest seed percentile, then grow percentile, then no intensity region before a higher intensity
    percentile); if none fits the budget, the one with the
    fewest false positives (worst brain, then mean). Without tumours the seed is ``d.percentile`` and
    the grow percentile the highest candidate. Where the winner's Dice is below ``d.min_useful_dice``
    (the model does not find tumours in this contrast), the most conservative pair is kept: the highest
    seed and grow percentiles, no intensity region (and the largest seed volume).

    With ``d.seed_min_volumes_ml`` each option is also tried with each of those as the smallest
    volume of a seed component (``Predictor._findings``' ``min_volume_ml``), else ``d.min_volume_ml``
    serves: a bright CSF spot gives a small strong residual, a tumour a larger one.

    With ``seed_tail`` (a probability), every option's seed threshold is at least its seed volume's floor
    (:func:`seed_floors` on ``healthy_maps``): the level a new healthy brain seeds above with that
    probability, by an extreme-value fit to the healthy brains' own highest seed levels. The budget only
    sees the calibration brains, and a seed threshold just above their highest levels leaves no room for
    a new brain's; the floor does. The pick keeps ``seed_floor`` and ``seed_tail``.
    """
    from medhdiff.tasks.predictor import Predictor

    seeds = sorted({d.percentile, *d.seed_percentiles}, reverse=True)
    if isinstance(d.seed_min_volumes_ml, dict):
        raise TypeError("_pick_hysteresis needs one contrast's settings (DetectConfig.for_contrast)")
    volumes = sorted(set(d.seed_min_volumes_ml) or {d.min_volume_ml})
    spacing_mm = (voxel_ml * 1000.0) ** (1.0 / 3.0)  # model space is isotropic
    level = {p: float(np.percentile(values, p)) for p in (*seeds, *d.grow_percentiles)}
    options: list[float | None] = [None]
    if lesion_maps:
        pairs = [(sp, gp) for sp in seeds for gp in d.grow_percentiles if gp < sp]
        options += sorted(d.grow_intensity_percentiles, reverse=True)
    else:
        pairs = [(d.percentile, max(d.grow_percentiles))]
        volumes = volumes[:1]
    grows = sorted({gp for _, gp in pairs}, reverse=True)
    floors = None if seed_tail is None else seed_floors(healthy_maps, voxel_ml, volumes, seed_tail)

    def seed_at(sp: float, v: float) -> float:
        """The seed threshold of seed percentile ``sp`` with seed volume ``v``: its level, or the floor."""
        return level[sp] if floors is None else max(level[sp], floors[float(v)]["floor"])

    def found(sc: np.ndarray, bright: dict | None):
        """Yields ``((seed p, grow p, intensity p, seed volume), finding mask)`` for one map, one at a time."""
        seed_masks = {(seed_at(sp, v), v): Predictor._findings(sc, seed_at(sp, v), voxel_ml, v)
                      for sp in {sp for sp, _ in pairs} for v in volumes}
        rims = _rims(seed_masks)
        for gp in grows:
            mine = {(seed_at(sp, v), v): seed_masks[(seed_at(sp, v), v)]
                    for sp, g in pairs if g == gp for v in volumes}
            for q in options:
                masks = _hysteresis_masks(sc, mine, level[gp], None if q is None else bright[q],
                                          d.grow_opening_mm, spacing_mm, rims)
                for sp, g in pairs:
                    if g == gp:
                        for v in volumes:
                            yield (sp, gp, q, v), masks[(seed_at(sp, v), v)]

    keys = [(sp, gp, q, v) for sp, gp in pairs for q in options for v in volumes]
    fp = {k: [] for k in keys}
    for i, sc in enumerate(healthy_maps):
        for k, mask in found(sc, None if healthy_bright is None else healthy_bright[i]):
            fp[k].append(float(mask.sum()) * voxel_ml)
    inter = {k: 0 for k in keys}
    total = dict(inter)
    for i, (sc, ref) in enumerate(lesion_maps):
        for k, mask in found(sc, None if lesion_bright is None else lesion_bright[i]):
            inter[k] += int((mask & ref).sum())
            total[k] += int(mask.sum() + ref.sum())
    names = ("seed_percentile", "grow_percentile", "grow_intensity_percentile", "seed_min_volume_ml")
    table = [{**dict(zip(names, k)), "healthy_fp_ml": round(float(np.mean(fp[k])), 3),
              "healthy_fp_ml_worst": round(float(np.max(fp[k])), 3),
              "dice": round(2.0 * inter[k] / max(total[k], 1), 4)} for k in keys]

    def conservative(r: dict) -> tuple:
        q = r["grow_intensity_percentile"]
        return r["seed_min_volume_ml"], r["seed_percentile"], r["grow_percentile"], np.inf if q is None else q

    worst_budget = np.inf if d.max_healthy_fp_ml_worst is None else d.max_healthy_fp_ml_worst
    fits = [row for row in table if row["healthy_fp_ml"] <= d.max_healthy_fp_ml
            and row["healthy_fp_ml_worst"] <= worst_budget]
    if fits:
        top = max(row["dice"] for row in fits)
        best = max((row for row in fits if row["dice"] >= top - d.dice_tie_margin), key=conservative)
    else:
        best = min(table, key=lambda r: (r["healthy_fp_ml_worst"], r["healthy_fp_ml"], -r["seed_percentile"]))
    useful = not lesion_maps or best["dice"] >= d.min_useful_dice
    if not useful:  # the most conservative pair: the highest seed, then the highest grow percentile
        best = max(table, key=conservative)
    q = best["grow_intensity_percentile"]
    log.info("hysteresis: seed p%s (components of %s mL or more), grow p%s%s (Dice %.3f on synthetic tumours, "
             "%.2f mL on healthy, %.2f on the worst)%s", best["seed_percentile"], best["seed_min_volume_ml"],
             best["grow_percentile"],
             "" if q is None else f" or the scan's own intensity p{q}", best["dice"], best["healthy_fp_ml"],
             best["healthy_fp_ml_worst"],
             "" if useful else f"; the best pair within the false-positive budget stays below Dice "
                                f"{d.min_useful_dice}, so the most conservative one")
    if lesion_maps:
        best = {**best, "useful": useful}
    if floors is not None:
        floor = floors[float(best["seed_min_volume_ml"])]["floor"]
        best = {**best, "seed_tail": seed_tail, "seed_floor": floor}
        log.info("seed floor %.4f for %s mL seeds (a new healthy brain seeds above it with probability %s); "
                 "the seed level is %.4f", floor, best["seed_min_volume_ml"], seed_tail,
                 seed_at(best["seed_percentile"], best["seed_min_volume_ml"]))

    def key(r: dict) -> str:
        q = r["grow_intensity_percentile"]
        return (f"{r['seed_percentile']}/{r['grow_percentile']}" + ("" if q is None else f"/i{q}")
                + ("" if len(volumes) == 1 else f"/s{r['seed_min_volume_ml']}"))

    return {**best, "threshold": seed_at(best["seed_percentile"], best["seed_min_volume_ml"]),
            "grow_threshold": level[best["grow_percentile"]],
            "table": {key(r): [r["dice"], r["healthy_fp_ml"], r["healthy_fp_ml_worst"]] for r in table}}
