"""How often `detect` marks a healthy brain: many fresh synthetic healthy brains of one contrast.

`bench_detect.py --sections healthy` scores 8 brains per contrast; a false-positive rate of a few
per cent needs more. This scores `--n` synthetic healthy brains (1 mm, built-in label map, no noise,
seeds from `--seed`, which neither training, calibration (900000+) nor bench_detect (700000+) draws)
with `detect` at its auto thresholds, and prints, per brain, the false-positive volume, the seeds'
volume alone, and the median of the scan's normalised intensity inside the findings (CSF-bright
findings are near 1), then how many brains got any finding and the worst.

Needs no real data. Results go to benchmarks/results/healthy_fp_<contrast>.json.

    python benchmarks/bench_healthy_fp.py --contrast t2 --n 24
"""

from __future__ import annotations

import argparse

import numpy as np

from bench_detect import healthy_false_positives, healthy_synthetic
from common import machine, save_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contrast", default="t2", choices=["t1", "t2", "flair"])
    ap.add_argument("--n", type=int, default=24, help="healthy brains to score")
    ap.add_argument("--seed", type=int, default=733_000, help="first seed")
    ap.add_argument("--detect-weights", default=None, help="model of detect (default: the bundled detection model)")
    ap.add_argument("--tag", default="", help="suffix of the results file (healthy_fp_<contrast><tag>.json)")
    args = ap.parse_args()

    from medhdiff.preprocess.normalize import fit_normalization, normalize
    from medhdiff.tasks.predictor import Predictor, default_weights

    run = machine()
    predictor = Predictor(args.detect_weights or default_weights("detector"), device="cpu")
    norm_cfg = predictor.preprocessor.config
    # which calibration these brains measured: a later recalibration of the contrast makes them history
    cal_pick = (predictor.bundle.meta.get("calibration") or {}).get("hysteresis", {}).get(args.contrast)
    rows = []
    print("| seed | false-positive mL | seeds only, mL | scan intensity in findings (median) | seconds |")
    print("|---|---|---|---|---|")
    for i in range(args.n):
        vol, brain = healthy_synthetic(args.contrast, i, first=args.seed)
        row, r = healthy_false_positives(predictor, vol, brain, args.contrast)
        found = r.mask > 0
        # the scan normalised as detect normalises it (its brain's upper percentile is 1)
        scan = normalize(vol.data, fit_normalization(vol.data, brain, norm_cfg.upper_percentile,
                                                     norm_cfg.lower_percentile))
        inside = round(float(np.median(scan[found])), 2) if found.any() else None
        row = {"seed": args.seed + i, **row, "intensity_in_findings": inside}
        rows.append(row)
        print(f"| {row['seed']} | {row['false_positive_ml']:.2f} | {row['false_positive_ml_no_grow']:.2f} | "
              f"{'-' if inside is None else inside} | {row['seconds']:.0f} |", flush=True)
    fp = np.array([r["false_positive_ml"] for r in rows])
    print(f"\n{args.contrast}: {int((fp > 0).sum())} of {len(rows)} healthy brains with a finding; "
          f"{int((fp >= 2).sum())} with 2 mL or more; worst {fp.max():.2f} mL; mean {fp.mean():.2f} mL")
    save_results(f"healthy_fp_{args.contrast}{args.tag}", {"runs": [run], "contrast": args.contrast,
                                                          "seed": args.seed, "model_sha256": predictor.sha256,
                                                          "calibration_pick": cal_pick, "rows": rows})


if __name__ == "__main__":
    main()
