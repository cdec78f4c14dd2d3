"""Detection, healthy false positives and reconstruction, on real and synthetic scans.

    python benchmarks/bench_detect.py [--sections tumour healthy reconstruct inpaint] [--coarse same|matched]
    python benchmarks/bench_detect.py --sections tissue [--tail-n 16] [--tissue-synthesis CONTRAST=JSON ...]

`detect` runs on the bundled detection model (or `--detect-weights`), `reconstruct` and inpainting on the
default model (or `--weights`), as the commands do.

* tumour: `medhdiff detect` on the FLAIR and T2 of TCGA-DU-7294 against seg_consensus > 0, inside
  the brain: Dice at the auto (calibrated) threshold, best-possible Dice, AUPRC, AUROC, seconds,
  peak RSS. Beside it the intensity-threshold baseline: the scan normalised exactly as medhdiff
  normalises it, median-filtered (3^3); it has no auto threshold, so only its threshold-free
  figures are given. With `--also-default`, the default model's reconstruction residual is scored too
  (what `detect` used before the detection model existed).
  Beside `detect`'s Dice, the Dice of the seeds alone (no growth to the grow threshold), and the
  T2 and FLAIR scored together (`detect --t2 --flair`), with each `--combine` rule.
* unreferenced: `detect` on the FLAIR and T2 (alone and together) of the two real tumour scans without a reference segmentation
  (BraTS-example, a large glioma with mass effect; AURORA-example, a metastasis): found and largest component
  mL, seconds, and for context a crude size of each scan's hyperintensity (its largest part above median + 3
  robust SDs; not a segmentation). Overlays for a person to judge go to benchmarks/results/overlays/ (not
  committed: they show the shared data).
* healthy: false-positive volume (mL, after the component filter) of `detect` at the auto threshold
  on the MNI152 2009a T1 (from nilearn; skipped without it) and on `--healthy-n` (8) held-out synthetic
  healthy brains of each contrast (1 mm, built-in label map, seeds training and calibration never draw;
  each seed draws its own tissue intensities, so the worst case matters, not only the typical one).
* conspicuity: `detect` (auto thresholds) on held-out synthetic FLAIR and T2 tumours (1 mm, built-in
  label map, 10-40 mL, seeds neither training nor calibration draws), each injected at full contrast
  and at 0.7 and 0.5 of it (`LesionInjector(contrast_scale=...)`: the same lesion, fainter): Dice and
  found volume, to show how faint a tumour the model still finds.
* tail: where each FLAIR's own intensity grow level (its p98) lies, in robust SDs above its median
  (`Predictor.intensity_tail_sd`), and whether `detect`'s large-lesion warning fires (above 3.09, a
  normal's p99.9): `--tail-n` (16) synthetic healthy brains and half as many tumours of 5-60 and of
  60-150 mL (bench_levers' development seeds), and the three real FLAIRs.
* tissue: how the healthy tissue's median-filtered intensity (model space, scored region, as `detect`'s intensity
  grow region sees it) is spread above its median, in robust SDs (1.4826 MAD): its p90-p99.9, and the share
  above a normal's p95 (what `grow_intensity_level: robust` at p95 takes). The healthy calibration brains
  (`--tail-n`, seeds 900000+ as `medhdiff calibrate` draws them, configs/detector.yaml's noise) against the
  real TCGA-DU-7294, its reference dilated by 5 mm left out, and BraTS-example and AURORA-example, the brain half
  holding the FLAIR's hyperintensity left out (`lesion_hemisphere`), per contrast (T2, FLAIR). A synthetic tail
  lighter than the real one means levels calibrated on it land inside real healthy tissue.
* size: `detect` (auto thresholds) on small held-out synthetic tumours of `--size-contrasts` (T2): `--size-n` (4)
  brains per size range (1-3, 3-8 and 8-20 mL; seeds 760000+ per range, 1-2 % noise): per range, tumours
  reached, found / reference mL and pooled Dice, to show the smallest tumour a contrast's calibration finds
  (its seed-volume candidates). Beside them each tumour's score peak over the seed level, and the peak of the
  rest of its brain (more than 10 voxels away): a tumour whose peak stays below 1 cannot seed whatever seed
  volume calibration picks, so the score, not the calibration, misses it. Rows are kept per model sha256 and
  calibration pick, so a run with `--detect-weights` (another calibration) adds its rows beside the shipped one's.
* reconstruct: PSNR/SSIM of `medhdiff reconstruct` (its defaults) of held-out synthetic healthy
  brains against themselves.
* inpaint: a 12 mm-radius ball of healthy tissue in TCGA-DU-7294's T1, T2 and FLAIR (the brain voxel
  farthest from the tumour and the brain's edge), inpainted and compared with the original inside
  the ball; beside it the trivial fill with the mean of a 3 mm shell around the ball.

Results go to benchmarks/results/detect.json; benchmarks/make_results.py writes RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from rich.console import Console
from scipy import ndimage

from common import (CASES, RESULTS_DIR, TUMOUR, TumourTally, machine, measure, pick_label, require_data,
                    save_results)

CASE = "TCGA-DU-7294"
UNREFERENCED = ("BraTS-example", "AURORA-example")  # real tumour scans without a reference segmentation
HEALTHY_SEED = 700_000
CONSPICUITY_SEED = 710_000
CONSPICUITY_SCALES = (1.0, 0.7, 0.5)
SIZE_SEED = 760_000
SIZE_RANGES_ML = ((1.0, 3.0), (3.0, 8.0), (8.0, 20.0))


def healthy_synthetic(contrast: str, i: int, first: int = HEALTHY_SEED, synthesis: dict | None = None):
    """Synthetic healthy brain number ``i`` (seed ``first + i``; 1 mm, built-in label map, no noise;
    ``synthesis``: further ``HealthyBrainGenerator`` settings)."""
    from medhdiff.io import Volume
    from medhdiff.synth import HealthyBrainGenerator, load_builtin_labelmap

    labels, affine = load_builtin_labelmap()
    res = HealthyBrainGenerator(contrast=contrast, spacing=1.0, noise_range=(0.0, 0.0), **(synthesis or {})).generate(
        labels, affine, seed=first + i)
    return Volume(res.image, res.affine), res.brain_mask > 0


def synthetic_tumours(contrast: str, start: int, n: int, noise_range, volume_ml, synthesis: dict | None = None):
    """``n`` synthetic brains with an injected tumour (1 mm, built-in label map), seeds from ``start`` (a seed
    whose tumour finds no room is skipped, as calibration does): ``(seed, Volume, brain, lesion)``.
    ``synthesis``: further ``HealthyBrainGenerator`` settings."""
    from medhdiff.io import Volume
    from medhdiff.synth import HealthyBrainGenerator, LesionInjector, load_builtin_labelmap
    from medhdiff.synth import labels as synth_labels

    labels, affine = load_builtin_labelmap()
    gen = HealthyBrainGenerator(contrast=contrast, spacing=1.0, noise_range=noise_range, **(synthesis or {}))
    found, s = 0, start
    while found < n:
        res = gen.generate(labels, affine, seed=s)
        brain = res.brain_mask > 0
        try:
            image, lesion, _ = LesionInjector(kind="tumor", volume_ml=volume_ml).inject(
                res.image, brain, res.affine, contrast, seed=s, wm_mask=synth_labels.class_mask(res.labels, "wm"))
        except ValueError:
            s += 1
            continue
        yield s, Volume(image, res.affine), brain, lesion > 0
        found, s = found + 1, s + 1


def healthy_false_positives(det_pred, vol, brain, contrast: str) -> tuple[dict, object]:
    """``detect`` at its auto thresholds on a healthy scan: the false-positive row (mL found, mL of the
    seeds alone, components, seconds) and the DetectResult."""
    with measure() as m:
        r = det_pred.detect(vol, contrast=contrast, mask=brain)
    _, single = det_pred._components(r.score_map, r.report["threshold"], vol, r.report["min_component_ml"])
    row = {"contrast": contrast, "false_positive_ml": r.report["total_lesion_ml"],
           "false_positive_ml_no_grow": round(sum(c["volume_ml"] for c in single), 3),
           "components": r.report["n_components"], "seconds": round(m.seconds, 1)}
    return row, r


def score_peaks(score: np.ndarray, threshold: float, brain: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """The highest score in the tumour ``ref`` and in the brain more than 10 voxels from it, over the seed
    level ``threshold``: below 1 in the tumour, no seed can start there whatever its volume."""
    far = brain & ~ndimage.binary_dilation(ref, iterations=10)
    return (float(score[ref].max()) / threshold if ref.any() else 0.0,
            float(score[far].max()) / threshold if far.any() else 0.0)


def crude_hyperintensity(vol) -> np.ndarray:
    """A scan's crude hyperintensity, for context where no reference segmentation exists: the largest
    connected part of the median-filtered (3^3) scan above its brain's median + 3 robust SDs (1.4826 MAD).
    Not a segmentation: it holds bright healthy tissue too, and misses a dark core."""
    from medhdiff.tasks.predictor import robust_fit

    brain = vol.data != 0
    smooth = ndimage.median_filter(np.asarray(vol.data, np.float32), size=3)
    centre, sigma = robust_fit(smooth[brain])
    labels, n = ndimage.label((smooth > centre + 3.0 * sigma) & brain)
    if not n:
        return np.zeros(brain.shape, bool)
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def bright_extent_ml(vol) -> float:
    """The size of ``crude_hyperintensity`` in mL."""
    return round(float(crude_hyperintensity(vol).sum()) * vol.voxel_volume_ml, 1)


def lesion_hemisphere(vol) -> np.ndarray:
    """Where a scan without a reference segmentation holds its lesion, to leave out of healthy-tissue figures:
    the half of the brain (split left-right at the brain's centroid, on the input grid) holding the centroid
    of its ``crude_hyperintensity``, together with that part dilated by 5 voxels where it crosses the midline."""
    import nibabel as nib

    brain = vol.data != 0
    largest = crude_hyperintensity(vol)
    if not largest.any():
        return np.zeros(brain.shape, bool)
    axis = [c in "LR" for c in nib.aff2axcodes(vol.affine)].index(True)  # the voxel axis along left-right
    coord = np.arange(brain.shape[axis]).reshape([-1 if k == axis else 1 for k in range(3)])
    mid = ndimage.center_of_mass(brain)[axis]
    lesion_side = ndimage.center_of_mass(largest)[axis] >= mid
    half = np.broadcast_to((coord >= mid) if lesion_side else (coord < mid), brain.shape)
    return (half & brain) | ndimage.binary_dilation(largest, iterations=5)


def localisation(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Threshold-free figures of a voxel score against the reference (best-possible Dice, AUPRC, AUROC)."""
    from medhdiff.metrics import auprc, auroc, best_dice

    return {"best_dice": round(best_dice(scores, labels)[0], 4), "auprc": round(auprc(scores, labels), 4),
            "auroc": round(auroc(scores, labels), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", default=["tumour", "healthy", "conspicuity", "reconstruct", "inpaint"])
    ap.add_argument("--coarse", default="matched", choices=["same", "matched"])
    ap.add_argument("--weights", default=None, help="model of reconstruct/inpaint (default: the bundled default)")
    ap.add_argument("--detect-weights", default=None, help="model of detect (default: the bundled detection model)")
    ap.add_argument("--also-default", action="store_true", help="also score the default model's residual")
    ap.add_argument("--contrasts", nargs="+", default=["t1", "t2", "flair"],
                    help="contrasts of the reconstruct and inpaint sections")
    ap.add_argument("--healthy-n", type=int, default=8,
                    help="synthetic healthy brains per contrast in the healthy section (each a fresh contrast draw)")
    ap.add_argument("--healthy-contrasts", nargs="+", default=["t1", "t2", "flair"], choices=["t1", "t2", "flair"],
                    help="healthy section: contrasts to (re)measure (the MNI152 row counts as t1); the stored rows "
                         "of the others are kept, e.g. after recalibrating one contrast")
    ap.add_argument("--size-contrasts", nargs="+", default=["t2"], choices=["t2", "flair"],
                    help="size section: contrasts")
    ap.add_argument("--size-n", type=int, default=4, help="size section: tumours per size range")
    ap.add_argument("--tissue-synthesis", nargs="*", default=[], metavar="CONTRAST=JSON",
                    help="tissue: further HealthyBrainGenerator settings to draw that contrast's calibration brains "
                         "with, e.g. 'flair={\"texture_amplitude\": [0.06, 0.12], \"tissue_ratios\": {\"wm\": [0.8, 0.9]}}'")
    ap.add_argument("--tail-n", type=int, default=16,
                    help="tail section: healthy FLAIR brains (and half as many tumours of each size range)")
    ap.add_argument("--tag", default="", help="suffix of the results file (detect<tag>.json)")
    args = ap.parse_args()
    if not require_data():
        return
    from medhdiff.io import load_volume
    from medhdiff.metrics import dice, psnr, ssim
    from medhdiff.tasks import Predictor
    from medhdiff.tasks.figures import save_overlay_png
    from medhdiff.tasks.predictor import COMBINE_RULES

    console = Console()
    name = f"detect{args.tag}"
    path = RESULTS_DIR / f"{name}.json"
    payload = json.loads(path.read_text()) if path.is_file() else {}
    payload.setdefault("runs", []).append(machine())
    det_pred = Predictor(args.detect_weights, device="cpu", coarse_timestep=args.coarse, model="detector")
    if args.detect_weights is None or set(args.sections) - {"size"}:
        # a size run with another model or calibration adds its rows beside the shipped one's and leaves
        # the file's model record alone
        payload.update(model_sha256=det_pred.sha256, coarse_timestep=args.coarse,
                       calibration=det_pred.bundle.meta.get("calibration", {}))
    detectors = [("medhdiff detect", det_pred)]
    if args.also_default:
        detectors.append(("default model, reconstruction residual",
                          Predictor(args.weights, device="cpu", coarse_timestep=args.coarse)))
    pred = None
    if {"reconstruct", "inpaint"} & set(args.sections):
        pred = Predictor(args.weights, device="cpu", coarse_timestep=args.coarse)

    def log(msg: str) -> None:
        console.print(msg)
        sys.stdout.flush()

    seg = load_volume(TUMOUR / CASE / "seg_consensus.nii.gz").data > 0
    if "tumour" in args.sections:
        rows = []
        for fname, contrast in (("fla", "flair"), ("t2", "t2")):
            vol = load_volume(TUMOUR / CASE / f"{fname}.nii.gz")
            brain = vol.data != 0
            for method, p in detectors:
                with measure() as m:
                    r = p.detect(vol, contrast=contrast)
                s, lab = r.score_map[brain], seg[brain]
                single, _ = p._components(r.score_map, r.report["threshold"], vol, r.report["min_component_ml"])
                row = {"case": CASE, "contrast": contrast, "method": method, "model_sha256": p.sha256[:12],
                       "dice_auto": round(dice(r.mask > 0, seg), 4), "dice_auto_no_grow": round(dice(single, seg), 4),
                       **localisation(s, lab),
                       "found_ml": r.report["total_lesion_ml"],
                       "reference_ml": round(seg.sum() * vol.voxel_volume_ml, 2),
                       "seconds": round(m.seconds, 1), "peak_rss_gb": round(m.peak_rss_gb, 3)}
                rows.append(row)
                log(str(row))
            prep = det_pred.prepare(vol)
            base = det_pred.preprocessor.inverse(ndimage.median_filter(prep.image, size=3), prep.record, kind="map")
            row = {"case": CASE, "contrast": contrast, "method": "intensity threshold (baseline)", "dice_auto": None,
                   **localisation(base[brain], lab)}
            rows.append(row)
            log(str(row))
        vols = {c: load_volume(TUMOUR / CASE / f"{f}.nii.gz") for f, c in (("t2", "t2"), ("fla", "flair"))}
        brain = vols["t2"].data != 0
        for rule in COMBINE_RULES:
            with measure() as m:
                r = det_pred.detect_multi(vols, combine=rule)
            row = {"case": CASE, "contrast": "t2+flair", "method": f"medhdiff detect --t2 --flair --combine {rule}",
                   "model_sha256": det_pred.sha256[:12], "dice_auto": round(dice(r.mask > 0, seg), 4),
                   **localisation(r.score_map[brain], seg[brain]), "found_ml": r.report["total_lesion_ml"],
                   "reference_ml": round(seg.sum() * vols["t2"].voxel_volume_ml, 2),
                   "seconds": round(m.seconds, 1), "peak_rss_gb": round(m.peak_rss_gb, 3)}
            rows.append(row)
            log(str(row))
        payload["tumour"] = rows
        save_results(name, payload)
    if "healthy" in args.sections:
        rows = []
        inputs = []
        chosen = set(args.healthy_contrasts)
        if "t1" in chosen:  # the MNI152 row is a T1 row
            try:
                from nilearn.datasets import load_mni152_template

                from medhdiff.io import Volume

                mni = load_mni152_template(resolution=1)
                inputs.append(("MNI152 2009a T1 (nilearn)", "t1", Volume(np.asarray(mni.get_fdata(), np.float32),
                                                                          mni.affine), None))
            except ImportError:
                log("nilearn is not installed: the MNI152 row is skipped (pip install -e '.[data]')")
        for contrast in [c for c in ("t1", "t2", "flair") if c in chosen]:
            for i in range(args.healthy_n):
                vol, brain = healthy_synthetic(contrast, i)
                inputs.append((f"synthetic healthy {contrast} (seed {HEALTHY_SEED + i})", contrast, vol, brain))
        for label, contrast, vol, brain in inputs:
            row = {"input": label, **healthy_false_positives(det_pred, vol, brain, contrast)[0],
                   "commit": payload["runs"][-1]["commit"]}
            rows.append(row)
            log(str(row))
        kept = [r for r in payload.get("healthy", []) if r.get("contrast") not in chosen]
        order = {"t1": 0, "t2": 1, "flair": 2}
        payload["healthy"] = sorted(kept + rows, key=lambda r: order.get(r.get("contrast"), 3))
        save_results(name, payload)
    if "conspicuity" in args.sections:
        from medhdiff.io import Volume
        from medhdiff.synth import HealthyBrainGenerator, LesionInjector, load_builtin_labelmap
        from medhdiff.synth import labels as synth_labels

        labels, affine = load_builtin_labelmap()
        rows = []
        for contrast in ("flair", "t2"):
            gen = HealthyBrainGenerator(contrast=contrast, spacing=1.0, noise_range=(0.01, 0.02))
            for i in range(2):
                seed = CONSPICUITY_SEED + i
                res = gen.generate(labels, affine, seed=seed)
                brain = res.brain_mask > 0
                for scale in CONSPICUITY_SCALES:
                    image, lesion, info = LesionInjector(kind="tumor", volume_ml=(10.0, 40.0), contrast_scale=scale).inject(
                        res.image, brain, res.affine, contrast, seed=seed, wm_mask=synth_labels.class_mask(res.labels, "wm"))
                    vol = Volume(image, res.affine)
                    with measure() as m:
                        r = det_pred.detect(vol, contrast=contrast, mask=brain)
                    row = {"contrast": contrast, "seed": seed, "contrast_scale": scale,
                           "reference_ml": round(info["volume_ml"], 2), "found_ml": r.report["total_lesion_ml"],
                           "dice_auto": round(dice(r.mask > 0, lesion > 0), 4), "seconds": round(m.seconds, 1)}
                    rows.append(row)
                    log(str(row))
        payload["conspicuity"] = rows
        save_results(name, payload)
    if "unreferenced" in args.sections:
        rows = []
        figures = RESULTS_DIR / "overlays"  # derived from the shared data: kept out of git (.gitignore)
        figures.mkdir(parents=True, exist_ok=True)
        for case in UNREFERENCED:
            for contrast in ("flair", "t2", "t2+flair"):
                vol = load_volume(TUMOUR / case / CASES[case][contrast.split("+")[0]])
                with measure() as m:
                    if "+" in contrast:  # detect --t2 --flair, its default combination
                        r = det_pred.detect_multi({c: load_volume(TUMOUR / case / CASES[case][c])
                                                   for c in contrast.split("+")})
                    else:
                        r = det_pred.detect(vol, contrast=contrast)
                src = r.report.get("per_contrast", {}).get("flair", r.report)  # T2 + FLAIR: FLAIR's intensity grow
                png = figures / f"{case}_{contrast.replace('+', '_')}_overlay.png"
                save_overlay_png(vol.data, r.score_map, r.mask, vol.affine, png,
                                 title=f"{case} {contrast}: {r.report['total_lesion_ml']:.1f} mL")
                row = {"case": case, "contrast": contrast, "model_sha256": det_pred.sha256[:12],
                       "found_ml": r.report["total_lesion_ml"], "components": r.report["n_components"],
                       "largest_ml": max((c["volume_ml"] for c in r.report["components"]), default=0.0),
                       "bright_3mad_ml": bright_extent_ml(vol), "grow_intensity_percentile":
                           src.get("grow_intensity_percentile"), "grow_intensity_level": src.get("grow_intensity_level"),
                       "combine": r.report.get("combine"),
                       "overlay": str(png.relative_to(RESULTS_DIR.parent.parent)),
                       "seconds": round(m.seconds, 1), "peak_rss_gb": round(m.peak_rss_gb, 3)}
                rows.append(row)
                log(str(row))
        payload["unreferenced"] = rows
        save_results(name, payload)
    if "tail" in args.sections:
        # how far each FLAIR's own p98 (its intensity grow level) lies above its median, in robust SDs, and
        # whether detect's large-lesion warning (above LESION_TAIL_SD) fires: synthetic healthy brains, tumours
        # of 5-60 and 60-150 mL (bench_levers' development seeds), and the real scans
        from bench_levers import DEV_SEED, LARGE_ML, LARGE_SEED

        from medhdiff.tasks.predictor import LESION_TAIL_SD

        q = (det_pred.bundle.meta.get("calibration", {}).get("grow_intensity_percentile") or {}).get("flair") or 98.0
        rows = []

        def add(label, vol, brain, lesion_ml=None):
            prep = det_pred.prepare(vol, mask=brain)
            sd = Predictor.intensity_tail_sd(prep.image, prep.mask, q)
            rows.append({"input": label, "lesion_ml": lesion_ml, "tail_sd": round(sd, 2),
                         "warns": bool(sd > LESION_TAIL_SD)})
            log(str(rows[-1]))

        for i in range(args.tail_n):
            vol, brain = healthy_synthetic("flair", i, first=DEV_SEED)
            add(f"synthetic healthy FLAIR {DEV_SEED + i}", vol, brain)
        for start, sizes in ((DEV_SEED + 500, (5.0, 60.0)), (LARGE_SEED, LARGE_ML)):
            for s, vol, brain, lesion in synthetic_tumours("flair", start, args.tail_n // 2, (0.01, 0.02), sizes):
                add(f"synthetic FLAIR tumour {s}", vol, brain, round(float(lesion.sum()) * vol.voxel_volume_ml, 1))
        for case in (CASE, *UNREFERENCED):
            vol = load_volume(TUMOUR / case / CASES[case]["flair"])
            add(f"{case} FLAIR", vol, None,
                round(float(seg.sum()) * vol.voxel_volume_ml, 1) if case == CASE else None)
        payload["tail"] = {"percentile": q, "warn_above_sd": LESION_TAIL_SD, "rows": rows}
        save_results(name, payload)
    if "tissue" in args.sections:
        from statistics import NormalDist

        from common import ROOT

        from medhdiff.io import Volume
        from medhdiff.synth import HealthyBrainGenerator, load_builtin_labelmap
        from medhdiff.tasks.predictor import robust_fit
        from medhdiff.training import load_config

        noise = load_config(ROOT / "configs" / "detector.yaml").data.noise_range
        labels, lab_affine = load_builtin_labelmap()
        qs = (90.0, 95.0, 98.0, 99.0, 99.9)
        z95 = NormalDist().inv_cdf(0.95)
        rows = []

        def spread(label, contrast, vol, brain, leave_out=None):
            prep = det_pred.prepare(vol, mask=brain)
            smooth, inner = Predictor.filtered_region(prep.image, prep.mask)
            if leave_out is not None:
                inner &= ~leave_out(prep)
            values = smooth[inner]
            centre, sd = robust_fit(values)
            rows.append({"input": label, "contrast": contrast,
                         **{f"p{q:g}": round((float(np.percentile(values, q)) - centre) / sd, 2) for q in qs},
                         "share_above_normal_p95": round(float((values > centre + z95 * sd).mean()), 4)})
            log(str(rows[-1]))

        extra = {}  # contrast -> further generator settings to draw the calibration brains with as well
        for spec in args.tissue_synthesis:
            contrast, _, settings = spec.partition("=")
            extra.setdefault(contrast, []).append(json.loads(settings))
        for contrast in ("t2", "flair"):
            for synthesis in (None, *extra.get(contrast, [])):
                gen = HealthyBrainGenerator(contrast=contrast, spacing=1.0, noise_range=noise, **(synthesis or {}))
                how = "" if synthesis is None else f", drawn with {json.dumps(synthesis)}"
                for i in range(args.tail_n):
                    res = gen.generate(labels, lab_affine, seed=900_000 + i)
                    spread(f"calibration brain {900_000 + i}{how}", contrast, Volume(res.image, res.affine),
                           res.brain_mask > 0)
            vol = load_volume(TUMOUR / CASE / CASES[CASE][contrast])

            def tumour_zone(prep):
                ref = det_pred.preprocessor.to_model(seg.astype(np.float32), prep.record, kind="mask") > 0
                return ndimage.binary_dilation(ref, iterations=5)  # model space is 1 mm

            spread(f"{CASE} (reference + 5 mm left out)", contrast, vol, None, tumour_zone)
            for case in UNREFERENCED:  # no reference: the hemisphere of the FLAIR's hyperintensity is left out
                side = lesion_hemisphere(load_volume(TUMOUR / case / CASES[case]["flair"]))
                vol = load_volume(TUMOUR / case / CASES[case][contrast])
                spread(f"{case} (the hyperintensity's hemisphere left out)", contrast, vol, None,
                       lambda prep, side=side: det_pred.preprocessor.to_model(side.astype(np.float32), prep.record,
                                                                              kind="mask") > 0)
        payload["tissue"] = rows
        save_results(name, payload)
    if "size" in args.sections:
        cal = det_pred.bundle.meta.get("calibration", {})
        rows = []
        for contrast in args.size_contrasts:
            h = cal.get("hysteresis", {}).get(contrast)
            pick = "" if h is None else pick_label(h, cal.get("min_volume_ml"))
            for k, (lo, hi) in enumerate(SIZE_RANGES_ML):
                tally, peaks, elsewhere = TumourTally(), [], []
                for seed, vol, brain, ref in synthetic_tumours(contrast, SIZE_SEED + 1000 * k, args.size_n,
                                                               (0.01, 0.02), (lo, hi)):
                    r = det_pred.detect(vol, contrast=contrast, mask=brain)
                    found = r.mask > 0
                    peak, other = score_peaks(r.score_map, r.report["threshold"], brain, ref)
                    peaks.append(peak)
                    elsewhere.append(other)
                    tally.add(found, ref, vol.voxel_volume_ml)
                    log(f"{contrast} {lo:g}-{hi:g} mL seed {seed}: {ref.sum() * vol.voxel_volume_ml:.1f} mL, found "
                        f"{r.report['total_lesion_ml']:.1f} mL, Dice {dice(found, ref):.3f}; score peak over the seed "
                        f"level {peak:.2f} in the tumour, {other:.2f} elsewhere")
                row = {"contrast": contrast, "model_sha256": det_pred.sha256[:12], "pick": pick,
                       "size_ml": [lo, hi], "tumours": args.size_n, "reached": tally.reached,
                       "found_ml": round(tally.found_ml, 1), "reference_ml": round(tally.reference_ml, 1),
                       "pooled_dice": round(tally.pooled_dice, 3),
                       "tumour_peaks": [round(p, 2) for p in peaks], "elsewhere_peaks": [round(p, 2) for p in elsewhere],
                       "commit": payload["runs"][-1]["commit"]}
                rows.append(row)
                log(str(row))
        mine = {(r["contrast"], r["pick"]) for r in rows}
        payload["size"] = [r for r in payload.get("size", []) if (r["contrast"], r["pick"]) not in mine] + rows
        save_results(name, payload)
    if "reconstruct" in args.sections:
        rows = []
        for contrast in args.contrasts:
            vol, brain = healthy_synthetic(contrast, 1)
            x = vol.data
            rng_ = float(x[brain].max() - x[brain].min())
            with measure() as m:
                r = pred.reconstruct(vol, contrast=contrast, mask=brain)
            row = {"input": f"synthetic healthy {contrast}", "strength": r.timestep / 999, "steps": r.steps,
                   "psnr": round(psnr(r.image, x, brain, data_range=rng_), 3),
                   "ssim": round(ssim(r.image, x, brain, data_range=rng_), 4), "seconds": round(m.seconds, 1)}
            rows.append(row)
            log(str(row))
        payload["reconstruct"] = rows
        save_results(name, payload)
    if "inpaint" in args.sections:
        rows = []
        ref = load_volume(TUMOUR / CASE / "t1.nii.gz")
        brain = ref.data != 0
        spacing = np.asarray(ref.spacing, float)
        far = ndimage.distance_transform_edt(~seg, sampling=spacing)
        edge = ndimage.distance_transform_edt(brain, sampling=spacing)
        centre = np.unravel_index(np.argmax(np.minimum(far, edge)), seg.shape)
        grid = np.indices(seg.shape).astype(np.float32)
        dist = np.sqrt(sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3)))
        ball = (dist <= 12.0) & brain
        shell = (dist > 12.0) & (dist <= 15.0) & brain
        for fname, contrast in (("t1", "t1"), ("t2", "t2"), ("fla", "flair")):
            if contrast not in args.contrasts:
                continue
            vol = load_volume(TUMOUR / CASE / f"{fname}.nii.gz")
            x = vol.data.astype(np.float32)
            rng_ = float(x[brain].max() - x[brain].min())
            with measure() as m:
                r = pred.reconstruct(vol, contrast=contrast, region=ball.astype(np.uint8))
            fill = np.where(ball, x[shell].mean(), x)
            row = {"input": f"{CASE} {contrast}, 12 mm ball at voxel {list(map(int, centre))}",
                   "ball_ml": round(ball.sum() * vol.voxel_volume_ml, 2),
                   "psnr": round(psnr(r.image, x, ball, data_range=rng_), 3),
                   "ssim": round(ssim(r.image, x, ball, data_range=rng_), 4),
                   "shell_mean_fill_psnr": round(psnr(fill, x, ball, data_range=rng_), 3),
                   "shell_mean_fill_ssim": round(ssim(fill, x, ball, data_range=rng_), 4),
                   "seconds": round(m.seconds, 1)}
            rows.append(row)
            log(str(row))
        payload["inpaint"] = rows
        save_results(name, payload)


if __name__ == "__main__":
    main()
