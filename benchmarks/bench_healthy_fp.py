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

from common import machine, measure, save_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contrast", default="t2", choices=["t1", "t2", "flair"])
    ap.add_argument("--n", type=int, default=24, help="healthy brains to score")
    ap.add_argument("--seed", type=int, default=733_000, help="first seed")
    args = ap.parse_args()

    from medhdiff.io import Volume
    from medhdiff.synth import HealthyBrainGenerator, load_builtin_labelmap
    from medhdiff.tasks.predictor import Predictor, default_weights

    run = machine()
    predictor = Predictor(default_weights("detector"), device="cpu")
    labels, affine = load_builtin_labelmap()
    gen = HealthyBrainGenerator(contrast=args.contrast, spacing=1.0, noise_range=(0.0, 0.0))
    rows = []
    print("| seed | false-positive mL | seeds only, mL | scan intensity in findings (median) | seconds |")
    print("|---|---|---|---|---|")
    for seed in range(args.seed, args.seed + args.n):
        res = gen.generate(labels, affine, seed=seed)
        vol = Volume(res.image, res.affine)
        with measure() as m:
            r = predictor.detect(vol, contrast=args.contrast, mask=res.brain_mask > 0)
        _, single = predictor._components(r.score_map, r.report["threshold"], vol, r.report["min_component_ml"])
        found = r.mask > 0
        brain = res.brain_mask > 0
        scale = float(np.percentile(res.image[brain], 99.5))  # the normalisation's upper percentile
        inside = round(float(np.median(res.image[found])) / scale, 2) if found.any() else None
        row = {"seed": seed, "false_positive_ml": r.report["total_lesion_ml"],
               "false_positive_ml_no_grow": round(sum(c["volume_ml"] for c in single), 3),
               "intensity_in_findings": inside, "seconds": round(m.seconds, 1)}
        rows.append(row)
        print(f"| {seed} | {row['false_positive_ml']:.2f} | {row['false_positive_ml_no_grow']:.2f} | "
              f"{'-' if inside is None else inside} | {row['seconds']:.0f} |", flush=True)
    fp = np.array([r["false_positive_ml"] for r in rows])
    print(f"\n{args.contrast}: {int((fp > 0).sum())} of {len(rows)} healthy brains with a finding; "
          f"{int((fp >= 2).sum())} with 2 mL or more; worst {fp.max():.2f} mL; mean {fp.mean():.2f} mL")
    save_results(f"healthy_fp_{args.contrast}", {"runs": [run], "contrast": args.contrast, "seed": args.seed,
                                                 "rows": rows})


if __name__ == "__main__":
    main()
