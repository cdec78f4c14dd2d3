"""How well a detection model's T2 score separates tumours from healthy brains, with no threshold chosen.

For each brain that `bench_levers.py --sections candidates` reconstructed with a model (its cached signed
residuals, `--cache`/<the model's sha256, first 12 characters>), the score is formed as `detect` forms it
(configs/detector.yaml's T2 scale and smoothing), and its *seed level* is found: the highest score level at
which the brain has a seed component of the contrast's largest seed volume (T2: 4 mL); for a tumour brain,
one within 2 voxels of the tumour. A tumour whose level lies above every healthy brain's could be found
by some seed threshold without marking any of them; calibration still has to find that threshold from its
own healthy brains, so the table also gives the calibration brains' highest level and how many development
brains exceed it.

    python benchmarks/bench_levers.py --sections candidates --models detector DIR --contrasts t2 \\
        --dev-healthy 32 --cache /tmp/residuals
    python benchmarks/bench_separation.py --models detector DIR --cache /tmp/residuals

Results go to benchmarks/results/separation.json; make_results.py adds them to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench_levers import VOXEL_ML, _describe, _scorer, _seed_margin
from common import ROOT, machine, save_results

TAGS = {"calh": "calibration healthy", "devh": "development healthy", "devt": "tumours 5-60 mL",
        "devs": "tumours 1-8 mL", "real": "TCGA-DU-7294"}


def seed_level(score: np.ndarray, volume_ml: float, near: np.ndarray | None = None) -> float:
    """The highest level at which ``score`` (restricted to within 2 voxels of ``near`` when given) has a
    component of at least ``volume_ml``."""
    if near is not None:
        score = np.where(ndimage.binary_dilation(near, iterations=2), score, 0.0)
    return _seed_margin(score, 1.0, VOXEL_ML, volume_ml)


def main() -> None:
    from medhdiff.tasks import Predictor
    from medhdiff.training import load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["detector"], help="'detector' (shipped) or model folders")
    ap.add_argument("--cache", required=True, help="bench_levers' candidates cache")
    args = ap.parse_args()
    d = load_config(ROOT / "configs" / "detector.yaml").detect
    contrast = "t2"
    scored = _scorer(d, contrast)
    volume = max(d.seed_volumes(contrast) or (d.min_volume_ml,))
    rows = []
    for spec in args.models:
        sha = _describe(spec)["sha256"]
        root = Path(args.cache) / sha
        levels: dict[str, list[float]] = {}
        for tag in TAGS:
            files = sorted(root.glob(f"{contrast}_{tag}_*.npz"))
            if not files:
                sys.exit(f"error: no cached {tag} brains under {root}; run bench_levers' candidates section first")
            levels[tag] = []
            for f in files:
                with np.load(f) as z:
                    item = {k: z[k] for k in ("residual", "mask", "ref")}
                item["inner"] = Predictor.scored_region(item["mask"])
                near = None if tag in ("calh", "devh") else item["ref"]
                levels[tag].append(round(seed_level(scored(item), volume, near), 3))
        top = max(levels["calh"] + levels["devh"])
        cal_top = max(levels["calh"])
        row = {"model": spec, "sha256": sha, "contrast": contrast, "seed_volume_ml": volume,
               "calibration_max": cal_top, "healthy_max": top,
               "development_healthy": len(levels["devh"]),
               "development_above_calibration_max": sum(v > cal_top for v in levels["devh"]),
               **{f"{tag}_above_healthy": sum(v > top for v in levels[tag]) for tag in ("devt", "devs", "real")},
               **{f"{tag}_n": len(levels[tag]) for tag in ("devt", "devs", "real")},
               "levels": levels}
        rows.append(row)
        print(f"{spec} ({sha}): calibration max {cal_top:.2f}, every healthy brain's max {top:.2f}, development "
              f"brains above the calibration max {row['development_above_calibration_max']} of {len(levels['devh'])}; "
              + "; ".join(f"{TAGS[t]} above every healthy brain {row[f'{t}_above_healthy']} of {row[f'{t}_n']}"
                          for t in ("devt", "devs", "real")))
    path = ROOT / "benchmarks" / "results" / "separation.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    keys = {r["sha256"] for r in rows}
    save_results("separation", {"runs": [*old.get("runs", []), machine()],
                                "rows": [r for r in old.get("rows", []) if r["sha256"] not in keys] + rows})


if __name__ == "__main__":
    main()
