"""medhdiff on real scans: denoising (PSNR/SSIM/seconds) and detection (AUROC/AUPRC/Dice/seconds).

    python benchmarks/bench_real.py [--levels 0.09] [--steps 1 2] [--skip-detect] [--weights DIR]

Needs ../shared/data (the project's real data folder) and skips with a message without it.
Denoising: TCGA-DU-7294 T2 with Rician noise at each level (fraction of the brain's 99th
percentile, fixed seed), scored inside the brain against the original. Detection: the case's
FLAIR and T2 against seg_consensus > 0, scored inside the brain. Prints tables; the competitor
baselines (DIPY, BM4D) belong to the default-model benchmark and are not run here.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tumor" / "TCGA-DU-7294"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--levels", type=float, nargs="+", default=[0.09])
    ap.add_argument("--steps", type=int, nargs="+", default=[1])
    ap.add_argument("--skip-detect", action="store_true")
    ap.add_argument("--skip-denoise", action="store_true")
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent (the real-data folder is not part of the repository)")
        return
    import torch

    from medhdiff.io import Volume, load_volume
    from medhdiff.metrics import auroc, auprc, best_dice, dice, psnr, ssim
    from medhdiff.tasks import Predictor

    console = Console()
    pred = Predictor(args.weights, device=args.device)
    console.print(f"model sha256 {pred.sha256[:12]}, device {pred.device}, {torch.get_num_threads()} threads")
    if not args.skip_denoise:
        vol = load_volume(DATA / "t2.nii.gz")
        x, brain = vol.data, vol.data != 0
        rng_ = float(x[brain].max() - x[brain].min())
        table = Table(title="denoising TCGA-DU-7294 T2 (inside the brain)")
        for col in ("noise", "method", "PSNR dB", "SSIM", "seconds", "sigma est / true"):
            table.add_column(col)
        for level in args.levels:
            s = level * float(np.percentile(x[brain], 99))
            rng = np.random.default_rng(int(level * 1000))
            y = np.sqrt((x + rng.normal(0, s, x.shape)) ** 2 + rng.normal(0, s, x.shape) ** 2)
            y = np.where(brain, y, 0).astype(np.float32)
            table.add_row(f"{level:.0%}", "noisy input", f"{psnr(y, x, brain, data_range=rng_):.2f}",
                          f"{ssim(y, x, brain, data_range=rng_):.3f}", "", "")
            for steps in args.steps:
                t = time.time()
                r = pred.denoise(Volume(y, vol.affine, vol.header), steps=steps, contrast="t2")
                dt = time.time() - t
                table.add_row(f"{level:.0%}", f"medhdiff steps={steps}", f"{psnr(r.image, x, brain, data_range=rng_):.2f}",
                              f"{ssim(r.image, x, brain, data_range=rng_):.3f}", f"{dt:.1f}", f"{r.sigma:.0f} / {s:.0f}")
        console.print(table)
    if not args.skip_detect:
        seg = load_volume(DATA / "seg_consensus.nii.gz").data > 0
        table = Table(title="detection TCGA-DU-7294 vs seg_consensus > 0 (inside the brain)")
        for col in ("contrast", "AUROC", "AUPRC", "best Dice", "Dice @auto", "found mL / ref mL", "seconds"):
            table.add_column(col)
        for name, contrast in (("fla", "flair"), ("t2", "t2")):
            vol = load_volume(DATA / f"{name}.nii.gz")
            t = time.time()
            r = pred.detect(vol, contrast=contrast)
            dt = time.time() - t
            brain = vol.data != 0
            s, lab = r.score_map[brain], seg[brain]
            table.add_row(contrast, f"{auroc(s, lab):.3f}", f"{auprc(s, lab):.3f}", f"{best_dice(s, lab)[0]:.3f}",
                          f"{dice(r.mask > 0, seg):.3f}", f"{r.report['total_lesion_ml']:.1f} / {seg.sum() / 1000:.1f}",
                          f"{dt:.0f}")
        console.print(table)
    console.print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
