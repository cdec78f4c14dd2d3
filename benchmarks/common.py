"""Shared plumbing of the benchmarks: where the real data lives, the test inputs, and measurement.

Benchmarks need ``../shared/data`` (the project's real-data folder beside the
repository); without it they print one line saying so and exit 0.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TUMOUR = DATA / "tumor"
RESULTS_DIR = ROOT / "benchmarks" / "results"

#: case -> contrast -> file name, for the three real tumour cases.
CASES: dict[str, dict[str, str]] = {
    "TCGA-DU-7294": {"t1": "t1.nii.gz", "t2": "t2.nii.gz", "flair": "fla.nii.gz"},
    "BraTS-example": {"t1": "t1n.nii.gz", "t2": "t2w.nii.gz", "flair": "t2f.nii.gz"},
    "AURORA-example": {"t1": "t1.nii.gz", "t2": "t2.nii.gz", "flair": "flair.nii.gz"},
}


def require_data() -> bool:
    """True when the real data is here; otherwise prints why the benchmark is skipped."""
    if TUMOUR.is_dir():
        return True
    print(f"skipped: {DATA} is absent (the real-data folder is not part of the repository)")
    return False


def add_rician(x: np.ndarray, brain: np.ndarray, level: float, seed: int) -> tuple[np.ndarray, float]:
    """Rician noise at ``level`` x the brain's 99th percentile, inside the brain; returns (noisy, sigma)."""
    sigma = level * float(np.percentile(x[brain], 99))
    rng = np.random.default_rng(seed)
    y = np.sqrt((x + rng.normal(0, sigma, x.shape)) ** 2 + rng.normal(0, sigma, x.shape) ** 2)
    return np.where(brain, y, 0).astype(np.float32), sigma


def noise_seed(case: str, contrast: str, level: float) -> int:
    """A fixed seed per (case, contrast, level), stable across runs and machines."""
    return (sum(map(ord, case)) * 31 + sum(map(ord, contrast))) * 1000 + int(round(level * 1000))


def _vm(key: str) -> float:
    """A /proc/self/status memory line (VmHWM, VmRSS) in GB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1e6
    return float("nan")


@dataclass
class Measure:
    seconds: float = 0.0
    peak_rss_gb: float = float("nan")
    extra: dict = field(default_factory=dict)


@contextmanager
def measure():
    """Wall seconds and the process's peak RSS during the block (Linux: the peak is reset first)."""
    m = Measure()
    try:
        with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak-RSS watermark
            f.write("5")
    except OSError:
        pass
    t = time.perf_counter()
    try:
        yield m
    finally:
        m.seconds = time.perf_counter() - t
        m.peak_rss_gb = _vm("VmHWM")


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit + ("+dirty" if dirty else ""),
            "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_avg_at_start": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(), "torch": torch.__version__}


def save_results(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    return path


def opening_summary(rows: list[dict]) -> list[dict]:
    """bench_levers' opening rows (one per brain and ball radius) summed per contrast and radius: healthy
    brains with a finding and the worst one (mL), tumours reached, found and reference mL, pooled Dice."""
    out = []
    for contrast in dict.fromkeys(r["contrast"] for r in rows):
        for radius in dict.fromkeys(r["radius_mm"] for r in rows):
            mine = [r for r in rows if r["contrast"] == contrast and r["radius_mm"] == radius]
            healthy = [r["found_ml"] for r in mine if r["kind"] == "healthy"]
            tumours = [r for r in mine if r["kind"] == "tumour"]
            out.append({"contrast": contrast, "radius_mm": radius, "healthy": len(healthy),
                        "healthy_with_finding": sum(v > 0 for v in healthy), "worst_healthy_ml": max(healthy, default=0.0),
                        "tumours": len(tumours), "tumours_reached": sum(r["dice"] > 0 for r in tumours),
                        "found_ml": sum(r["found_ml"] for r in tumours),
                        "reference_ml": sum(r["reference_ml"] for r in tumours),
                        "pooled_dice": 2.0 * sum(r["intersection"] for r in tumours)
                        / max(sum(r["sizes"] for r in tumours), 1)})
    return out


def pick_label(pick: dict, min_volume_ml: float | None = None) -> str:
    """A calibrated hysteresis pick (``model.json``'s ``calibration.hysteresis[contrast]``, or a pick made as
    ``medhdiff calibrate`` makes it) in one line: seed percentile (seed volume) / grow percentile, and the
    intensity grow region where one was chosen. ``min_volume_ml`` stands in for a record without a seed volume."""
    q = pick.get("grow_intensity_percentile")
    volume = pick.get("seed_min_volume_ml", min_volume_ml)
    floor = pick.get("seed_floor")
    raised = floor is not None and pick.get("threshold", -np.inf) <= floor  # the floor, not the percentile, seeds
    return (f"{f'floor {floor:.2f}' if raised else 'p' + str(pick['seed_percentile'])} ({volume} mL seeds) / "
            f"p{pick['grow_percentile']}" + ("" if q is None else f" + intensity p{q}"))


class TumourTally:
    """Detection on a set of tumour brains pooled: tumours reached, found and reference mL, pooled Dice
    (twice the summed overlap over the summed volumes, so a large tumour weighs more than a small one)."""

    def __init__(self) -> None:
        self.inter = self.sizes = self.reached = 0
        self.found_ml = self.reference_ml = 0.0

    def add(self, found: np.ndarray, ref: np.ndarray, voxel_ml: float) -> None:
        """One brain's finding mask ``found`` against its tumour ``ref`` (boolean, same grid)."""
        overlap = int((found & ref).sum())
        self.inter += overlap
        self.sizes += int(found.sum() + ref.sum())
        self.reached += overlap > 0
        self.found_ml += float(found.sum()) * voxel_ml
        self.reference_ml += float(ref.sum()) * voxel_ml

    @property
    def pooled_dice(self) -> float:
        return 2.0 * self.inter / max(self.sizes, 1)

