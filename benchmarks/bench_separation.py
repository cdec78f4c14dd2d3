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

With the held-out test brains cached too (`--test 32 10 8`, tags tsth/tstt/tsts), they are counted beside the
development ones. Each row also gives the seed floor `detect.seed_tail` would set at 0.01 (a Gumbel fit to the
calibration brains' levels, `calibrate.seed_floors`) and how many brains of each set lie above it.

Results go to benchmarks/results/separation.json; make_results.py adds them to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench_levers import VOXEL_ML, _describe, _scorer
from common import ROOT, machine, save_results

TAGS = {"calh": "calibration healthy", "devh": "development healthy", "devt": "tumours 5-60 mL",
        "devs": "tumours 1-8 mL", "real": "TCGA-DU-7294", "tsth": "test healthy", "tstt": "test tumours 5-60 mL",
        "tsts": "test tumours 1-8 mL"}
OPTIONAL = ("tsth", "tstt", "tsts")  # the held-out test brains, where the candidates section cached them
HEALTHY = ("calh", "devh", "tsth")
TAIL = 0.01


def seed_level(score: np.ndarray, volume_ml: float, near: np.ndarray | None = None) -> float:
    """The lowest level at which ``score`` (restricted to within 2 voxels of ``near`` when given) has no
    component of at least ``volume_ml`` (``calibrate.seed_levels``)."""
    from medhdiff.training.calibrate import seed_levels

    if near is not None:
        score = np.where(ndimage.binary_dilation(near, iterations=2), score, 0.0)
    return seed_levels(score, VOXEL_ML, (volume_ml,))[float(volume_ml)]


def main() -> None:
    from medhdiff.tasks import Predictor
    from medhdiff.training import load_config
    from medhdiff.training.calibrate import gumbel_quantile

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
            if not files and tag in OPTIONAL:
                continue
            if not files:
                sys.exit(f"error: no cached {tag} brains under {root}; run bench_levers' candidates section first")
            levels[tag] = []
            for f in files:
                with np.load(f) as z:
                    item = {k: z[k] for k in ("residual", "mask", "ref")}
                item["inner"] = Predictor.scored_region(item["mask"])
                near = None if tag in HEALTHY else item["ref"]
                levels[tag].append(round(seed_level(scored(item), volume, near), 3))
        top = max(v for tag in HEALTHY for v in levels.get(tag, []))
        cal_top = max(levels["calh"])
        floor = round(gumbel_quantile(levels["calh"], TAIL), 3)
        others = [t for t in levels if t != "calh"]
        row = {"model": spec, "sha256": sha, "contrast": contrast, "seed_volume_ml": volume,
               "calibration_max": cal_top, "healthy_max": top,
               "development_healthy": len(levels["devh"]),
               "development_above_calibration_max": sum(v > cal_top for v in levels["devh"]),
               **{f"{tag}_above_healthy": sum(v > top for v in levels[tag]) for tag in others if tag not in HEALTHY},
               **{f"{tag}_n": len(levels[tag]) for tag in others},
               "floor_tail": TAIL, "floor": floor,
               **{f"{tag}_above_floor": sum(v > floor for v in levels[tag]) for tag in others},
               "levels": levels}
        rows.append(row)
        print(f"{spec} ({sha}): calibration max {cal_top:.2f}, every healthy brain's max {top:.2f}, development "
              f"brains above the calibration max {row['development_above_calibration_max']} of {len(levels['devh'])}; "
              + "; ".join(f"{TAGS[t]} above every healthy brain {row[f'{t}_above_healthy']} of {row[f'{t}_n']}"
                          for t in others if t not in HEALTHY)
              + f"; floor {floor:.2f} (tail {TAIL}): "
              + ", ".join(f"{TAGS[t]} {row[f'{t}_above_floor']} of {row[f'{t}_n']}" for t in others) + " above it")
    path = ROOT / "benchmarks" / "results" / "separation.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    keys = {r["sha256"] for r in rows}
    save_results("separation", {"runs": [*old.get("runs", []), machine()],
                                "rows": [r for r in old.get("rows", []) if r["sha256"] not in keys] + rows})


if __name__ == "__main__":
    main()
