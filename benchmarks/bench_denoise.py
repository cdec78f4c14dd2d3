"""Denoising on real scans: medhdiff against DIPY non-local means, BM4D and SimpleITK, same inputs, same run.

    python benchmarks/bench_denoise.py                      # everything except BM4D's slow rows
    python benchmarks/bench_denoise.py --bm4d TCGA-DU-7294:t2:0.09 --methods bm4d
    python benchmarks/bench_denoise.py --cases TCGA-DU-7294 --contrasts t2 --levels 0.09

Inputs: each real case's T1, T2 and FLAIR (skull-stripped, 1 mm) with Rician noise at 3, 5, 7 and
9 % of the brain's 99th percentile, one fixed seed per (case, contrast, level). Scores: PSNR and
SSIM inside the brain against the original scan (data range = the brain's max - min), wall
seconds and the process's peak RSS while the method ran.

Fairness: the competitors are given the TRUE noise sigma (their best case); medhdiff estimates
sigma from the noisy scan itself, as `medhdiff denoise` does. BM4D (about 8 minutes per volume on
2 cores) runs only on the (case, contrast, level) triples given with --bm4d.

Results accumulate in benchmarks/results/denoise.json (rows already there are not re-run unless
--rerun); benchmarks/make_results.py turns them into RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np
from rich.console import Console
from rich.table import Table

from common import CASES, RESULTS_DIR, TUMOUR, add_rician, machine, measure, noise_seed, require_data, save_results

METHODS = ("noisy", "medhdiff-steps1", "medhdiff-steps2", "medhdiff-steps1-adapt20", "medhdiff-steps2-adapt20",
           "dipy-nlmeans", "sitk-anisotropic", "bm4d")


def medhdiff_settings(method: str) -> dict:
    """``medhdiff-steps2-adapt20`` -> ``{"steps": 2, "adapt": 20}`` (no ``-adapt``: 0, adaptation off)."""
    m = re.fullmatch(r"medhdiff-steps(\d+)(?:-adapt(\d+))?", method)
    if m is None:
        raise ValueError(f"not a medhdiff method: {method}")
    return {"steps": int(m.group(1)), "adapt": int(m.group(2) or 0)}


def dipy_nlmeans(y: np.ndarray, sigma: float, brain: np.ndarray) -> np.ndarray:
    from dipy.denoise.nlmeans import nlmeans

    # DIPY's defaults (3^3 patches, 11^3 search) with its Rician bias handling, given the true sigma.
    return nlmeans(y.astype(np.float64), sigma=sigma, mask=brain, patch_radius=1, block_radius=5, rician=True)


def sitk_anisotropic(y: np.ndarray, sigma: float, brain: np.ndarray) -> np.ndarray:
    import SimpleITK as sitk

    # Perona-Malik diffusion on the image in noise units, so the conductance means "3 sigma".
    img = sitk.GetImageFromArray((y / sigma).astype(np.float32))
    out = sitk.GradientAnisotropicDiffusion(img, timeStep=0.0625, conductanceParameter=3.0, numberOfIterations=8)
    return np.where(brain, sitk.GetArrayFromImage(out) * sigma, 0).astype(np.float32)


def bm4d_denoise(y: np.ndarray, sigma: float, brain: np.ndarray) -> np.ndarray:
    import bm4d

    return np.where(brain, bm4d.bm4d(y.astype(np.float64), sigma_psd=sigma), 0).astype(np.float32)


def key(row: dict) -> str:
    return f"{row['case']}|{row['contrast']}|{row['level']:.2f}|{row['method']}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--contrasts", nargs="+", default=["t1", "t2", "flair"])
    ap.add_argument("--levels", type=float, nargs="+", default=[0.03, 0.05, 0.07, 0.09])
    ap.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "medhdiff-steps1-adapt20"],
                    choices=METHODS)
    ap.add_argument("--bm4d", nargs="*", default=["TCGA-DU-7294:t2:0.09"],
                    help="CASE:CONTRAST:LEVEL triples on which BM4D runs (slow)")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--rerun", action="store_true", help="re-measure rows that are already in the results file")
    args = ap.parse_args()
    if not require_data():
        return
    from medhdiff.io import Volume, load_volume
    from medhdiff.metrics import psnr, ssim
    from medhdiff.tasks import Predictor

    console = Console()
    path = RESULTS_DIR / "denoise.json"
    payload = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    rows = {key(r): r for r in payload["rows"]}
    payload.setdefault("runs", []).append(machine())
    pred = Predictor(args.weights, device="cpu") if any(m.startswith("medhdiff") for m in args.methods) else None
    if pred is not None:
        payload["model_sha256"] = pred.sha256
    bm4d_on = {tuple(s.split(":")[:2]) + (round(float(s.split(":")[2]), 2),) for s in args.bm4d}
    for case in args.cases:
        for contrast in args.contrasts:
            vol = load_volume(TUMOUR / case / CASES[case][contrast])
            x = np.nan_to_num(vol.data.astype(np.float32))
            brain = x != 0
            rng_ = float(x[brain].max() - x[brain].min())
            for level in args.levels:
                y, sigma = add_rician(x, brain, level, noise_seed(case, contrast, level))
                for method in args.methods:
                    row = {"case": case, "contrast": contrast, "level": round(level, 2), "method": method}
                    if method == "bm4d" and (case, contrast, round(level, 2)) not in bm4d_on:
                        continue
                    if key(row) in rows and not args.rerun:
                        continue
                    extra = {}
                    with measure() as m:
                        if method == "noisy":
                            out = y
                        elif method.startswith("medhdiff"):
                            r = pred.denoise(Volume(y, vol.affine, vol.header), contrast=contrast,
                                             **medhdiff_settings(method))
                            out, extra = r.image, {"sigma_estimated": round(r.sigma, 2), "timestep": r.timestep}
                        elif method == "dipy-nlmeans":
                            out = dipy_nlmeans(y, sigma, brain)
                        elif method == "sitk-anisotropic":
                            out = sitk_anisotropic(y, sigma, brain)
                        else:
                            out = bm4d_denoise(y, sigma, brain)
                    row.update(psnr=round(psnr(out, x, brain, data_range=rng_), 3),
                               ssim=round(ssim(out, x, brain, data_range=rng_), 4),
                               seconds=None if method == "noisy" else round(m.seconds, 2),
                               peak_rss_gb=None if method == "noisy" else round(m.peak_rss_gb, 3),
                               sigma_true=round(sigma, 2), load_avg_1min=round(os.getloadavg()[0], 2), **extra)
                    rows[key(row)] = row
                    payload["rows"] = list(rows.values())
                    save_results("denoise", payload)
                    console.print(f"{case} {contrast} {level:.0%} {method:17s} PSNR {row['psnr']:.2f} "
                                  f"SSIM {row['ssim']:.3f} {row['seconds'] or 0:.1f} s {row['peak_rss_gb'] or 0:.2f} GB")
                    sys.stdout.flush()
    table = Table(title="denoising, mean over the cases and contrasts run (PSNR dB / SSIM inside the brain)")
    table.add_column("method")
    levels = sorted({r["level"] for r in rows.values()})
    for lv in levels:
        table.add_column(f"{lv:.0%}")
    table.add_column("mean s")
    for method in METHODS:
        sel = [r for r in rows.values() if r["method"] == method]
        if not sel:
            continue
        cells = []
        for lv in levels:
            s = [r for r in sel if r["level"] == lv]
            cells.append(f"{np.mean([r['psnr'] for r in s]):.2f} / {np.mean([r['ssim'] for r in s]):.3f} (n={len(s)})"
                         if s else "")
        secs = [r["seconds"] for r in sel if r["seconds"] is not None]
        table.add_row(method, *cells, f"{np.mean(secs):.1f}" if secs else "")
    console.print(table)


if __name__ == "__main__":
    main()
