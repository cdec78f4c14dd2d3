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
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medhdiff.diffusion.bundle import update_bundle_meta
from medhdiff.io import Volume
from medhdiff.training.config import DetectConfig, TrainConfig

log = logging.getLogger("medhdiff")

#: Lesion sizes of the calibration tumours (mL).
LESION_ML = (5.0, 60.0)


def calibrate_detection(model_dir: str | Path, cfg: TrainConfig, device: torch.device | str = "cpu",
                        detect: DetectConfig | None = None, seed: int = 900_000) -> dict:
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

    def score(image: np.ndarray, aff: np.ndarray, brain: np.ndarray, label, polarity: str, s: int):
        """Model-space score (exactly as ``detect`` computes it), the scored region, the preprocessing."""
        prep = predictor.prepare(Volume(image, aff), mask=brain)
        sc, _ = predictor.anomaly_map(prep, label=label, polarity=polarity, ensemble=d.ensemble,
                                      strengths=d.strengths, steps=d.steps, seed=s)
        return sc, ndimage.binary_erosion(prep.mask, iterations=2), prep

    thresholds, fp_ml, lesion_dice, grow_thresholds = {}, {}, {}, {}
    voxel_ml = spacing ** 3 / 1000.0

    def findings(sc: np.ndarray, thr: float, grow: float | None) -> np.ndarray:
        """The mask ``detect`` would return, in model space."""
        return Predictor._findings(sc, thr, voxel_ml, d.min_volume_ml, None if grow is None else sc > grow)

    for contrast in cfg.data.contrasts:
        gen = HealthyBrainGenerator(contrast=contrast, spacing=spacing, noise_range=cfg.data.noise_range)
        label = predictor.class_label(contrast)
        polarity = "bright" if contrast in BRIGHT_LESION_CONTRASTS else "both"
        pooled, healthy_maps = [], []
        for i in range(d.healthy_volumes):
            res = gen.generate(labels, affine, seed=seed + i)
            sc, inner, _ = score(res.image, res.affine, res.brain_mask > 0, label, polarity, seed + i)
            pooled.append(sc[inner])
            healthy_maps.append(sc)
        values = np.concatenate(pooled)
        thr = float(np.percentile(values, d.percentile))
        fp_ml[contrast] = round(float((values > thr).sum()) * voxel_ml / d.healthy_volumes, 3)
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
                sc, inner, prep = score(image, res.affine, brain, label, polarity, s)
                ref = predictor.preprocessor.to_model(lesion.astype(np.float32), prep.record, kind="mask") > 0
                scores.append(sc[inner])
                refs.append(ref[inner])
                maps.append((sc, ref & inner))
            best, thr_dice = best_dice(np.concatenate(scores), np.concatenate(refs))
            lesion_dice[contrast] = {"best_dice": round(float(best), 4), "threshold": float(thr_dice)}
            if thr_dice > thr and not d.grow_percentiles:
                thr = float(thr_dice)
        if d.grow_percentiles:
            choice = _pick_hysteresis(values, healthy_maps, maps, d, findings, voxel_ml)
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
    calibration = {"threshold": thresholds, "percentile": d.percentile, "ensemble": d.ensemble, "steps": d.steps,
                   "strengths": list(d.strengths), "min_volume_ml": d.min_volume_ml,
                   "healthy_fp_ml_at_percentile": fp_ml, "volumes_per_contrast": d.healthy_volumes,
                   "source": "synthetic healthy brains from the built-in label map, held-out seeds"}
    if lesion_dice and not grow_thresholds:
        calibration.update(lesion_volumes=d.lesion_volumes, synthetic_tumour=lesion_dice,
                           source=calibration["source"] + "; threshold raised to the best-Dice one on as many "
                                                          "held-out synthetic tumours where that was higher")
    if grow_thresholds:
        calibration.update(grow_threshold={c: v["grow_threshold"] for c, v in grow_thresholds.items()},
                           hysteresis=grow_thresholds, max_healthy_fp_ml=d.max_healthy_fp_ml,
                           max_healthy_fp_ml_worst=d.max_healthy_fp_ml_worst, dice_tie_margin=d.dice_tie_margin,
                           min_useful_dice=d.min_useful_dice,
                           source=calibration["source"] + "; findings are seeded above one healthy-score percentile "
                                                          "and grow to a lower one: the pair of best Dice on held-out "
                                                          "synthetic tumours within the healthy false-positive budget")
        if lesion_dice:
            calibration.update(lesion_volumes=d.lesion_volumes, synthetic_tumour=lesion_dice)
    update_bundle_meta(model_dir, calibration=calibration)
    return calibration


def _pick_hysteresis(values: np.ndarray, healthy_maps: list, lesion_maps: list, d: DetectConfig, findings,
                     voxel_ml: float) -> dict:
    """The (seed, grow) pair of healthy-score percentiles for hysteresis findings.

    Every pair with the grow percentile below the seed one is scored: its mean
    and worst false-positive volume over the healthy maps (after the component
    filter) and its pooled Dice on the synthetic tumours. Among the pairs within
    the budget (mean at most ``d.max_healthy_fp_ml``, worst at most
    ``d.max_healthy_fp_ml_worst`` when set), those within ``d.dice_tie_margin``
    of the best Dice tie, and the most conservative of them wins (the highest
    seed, then grow, percentile); if none fits the budget, the one with the
    fewest false positives (worst brain, then mean). Without tumours the seed is ``d.percentile`` and the grow
    percentile the highest candidate. Where the winner's Dice is below
    ``d.min_useful_dice`` (the model does not find tumours in this contrast),
    the most conservative pair is kept: the highest seed and grow percentiles.
    """
    seeds = sorted({d.percentile, *d.seed_percentiles}, reverse=True)
    level = {p: float(np.percentile(values, p)) for p in (*seeds, *d.grow_percentiles)}
    if not lesion_maps:
        pairs = [(d.percentile, max(d.grow_percentiles))]
    else:
        pairs = [(sp, gp) for sp in seeds for gp in d.grow_percentiles if gp < sp]
    table = []
    for sp, gp in pairs:
        per_brain = [float(findings(sc, level[sp], level[gp]).sum()) * voxel_ml for sc in healthy_maps]
        fp, worst = float(np.mean(per_brain)), float(np.max(per_brain))
        inter = total = 0
        for sc, ref in lesion_maps:
            found = findings(sc, level[sp], level[gp])
            inter, total = inter + int((found & ref).sum()), total + int(found.sum() + ref.sum())
        table.append({"seed_percentile": sp, "grow_percentile": gp, "healthy_fp_ml": round(fp, 3),
                      "healthy_fp_ml_worst": round(worst, 3), "dice": round(2.0 * inter / max(total, 1), 4)})
    worst_budget = np.inf if d.max_healthy_fp_ml_worst is None else d.max_healthy_fp_ml_worst
    fits = [row for row in table if row["healthy_fp_ml"] <= d.max_healthy_fp_ml
            and row["healthy_fp_ml_worst"] <= worst_budget]
    if fits:
        top = max(row["dice"] for row in fits)
        tied = [row for row in fits if row["dice"] >= top - d.dice_tie_margin]
        best = max(tied, key=lambda r: (r["seed_percentile"], r["grow_percentile"], r["dice"]))
    else:
        best = min(table, key=lambda r: (r["healthy_fp_ml_worst"], r["healthy_fp_ml"], -r["seed_percentile"]))
    useful = not lesion_maps or best["dice"] >= d.min_useful_dice
    if not useful:  # the most conservative pair: the highest seed, then the highest grow percentile
        best = max(table, key=lambda r: (r["seed_percentile"], r["grow_percentile"]))
    log.info("hysteresis: seed p%s, grow p%s (Dice %.3f on synthetic tumours, %.2f mL on healthy)%s",
             best["seed_percentile"], best["grow_percentile"], best["dice"], best["healthy_fp_ml"],
             "" if useful else f"; the best pair within the false-positive budget stays below Dice "
                                f"{d.min_useful_dice}, so the most conservative one")
    if lesion_maps:
        best = {**best, "useful": useful}
    return {**best, "threshold": level[best["seed_percentile"]], "grow_threshold": level[best["grow_percentile"]],
            "table": {f"{r['seed_percentile']}/{r['grow_percentile']}": [r["dice"], r["healthy_fp_ml"],
                                                                         r["healthy_fp_ml_worst"]] for r in table}}
