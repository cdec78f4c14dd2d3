"""Calibrating the detection threshold on healthy validation volumes, at training time.

For each contrast the model knows, healthy synthetic brains (seeds that
training never draws) go through exactly the scoring that ``medhdiff detect``
uses; the threshold is a high percentile of their in-brain scores, so that a
healthy scan yields only a small false-positive volume. It is stored in
``model.json`` under ``calibration`` and used by ``--threshold auto``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from medhdiff.diffusion.bundle import update_bundle_meta
from medhdiff.io import Volume
from medhdiff.training.config import TrainConfig

log = logging.getLogger("medhdiff")

DEFAULTS = {"percentile": 99.95, "ensemble": 2, "steps": 2, "strengths": [0.3, 0.4, 0.5], "min_volume_ml": 0.2}


def calibrate_detection(model_dir: str | Path, cfg: TrainConfig, device: torch.device | str = "cpu",
                        volumes_per_contrast: int = 2, percentile: float = DEFAULTS["percentile"],
                        ensemble: int = DEFAULTS["ensemble"], steps: int = DEFAULTS["steps"],
                        strengths: list[float] | None = None, seed: int = 900_000) -> dict:
    from medhdiff.synth.builtin import load_builtin_labelmap
    from medhdiff.synth.generator import HealthyBrainGenerator
    from medhdiff.tasks.predictor import BRIGHT_LESION_CONTRASTS, Predictor

    strengths = list(strengths or DEFAULTS["strengths"])
    dev = torch.device(device)
    predictor = Predictor(model_dir, device=dev.type if dev.type == "cpu" else str(dev),
                          batch_size=32 if dev.type == "cuda" else 4)
    labels, affine = load_builtin_labelmap()
    spacing = cfg.preprocess.spacing[0] if cfg.preprocess.spacing else 1.0
    thresholds, fp_ml = {}, {}
    for contrast in cfg.data.contrasts:
        gen = HealthyBrainGenerator(contrast=contrast, spacing=spacing, noise_range=cfg.data.noise_range)
        label = predictor.class_label(contrast)
        polarity = "bright" if contrast in BRIGHT_LESION_CONTRASTS else "both"
        pooled = []
        for i in range(volumes_per_contrast):
            res = gen.generate(labels, affine, seed=seed + i)
            prep = predictor.prepare(Volume(res.image, res.affine), mask=res.brain_mask > 0)
            score, _ = predictor.anomaly_map(prep, label=label, polarity=polarity, ensemble=ensemble,
                                             strengths=tuple(strengths), steps=steps, seed=seed + i)
            inner = ndimage.binary_erosion(prep.mask, iterations=2)
            pooled.append(score[inner])
        values = np.concatenate(pooled)
        thr = float(np.percentile(values, percentile))
        thresholds[contrast] = thr
        voxel_ml = float(np.prod(prep.record.model_spacing)) / 1000.0
        fp_ml[contrast] = round(float((values > thr).sum()) * voxel_ml / volumes_per_contrast, 3)
        log.info("calibration %s: threshold %.5f (%.2f percentile), healthy false positives %.2f mL before "
                 "the component-size filter", contrast, thr, percentile, fp_ml[contrast])
    calibration = {"threshold": thresholds, "percentile": percentile, "ensemble": ensemble, "steps": steps,
                   "strengths": strengths, "min_volume_ml": DEFAULTS["min_volume_ml"],
                   "healthy_fp_ml_before_filter": fp_ml, "volumes_per_contrast": volumes_per_contrast,
                   "source": "synthetic healthy brains from the built-in label map, held-out seeds"}
    update_bundle_meta(model_dir, calibration=calibration)
    return calibration
