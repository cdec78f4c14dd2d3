"""End-to-end speed of `medhdiff denoise` and `medhdiff detect` on a 240x240x155 scan, as a user runs them.

    python benchmarks/bench_speed.py [--repeat 1] [--jobs denoise detect]

Each job runs as its own `medhdiff` process (model loading, reading and writing included) on
TCGA-DU-7294's T2 (240x240x155, 1 mm): detect on the scan itself, denoise on the scan with Rician
noise at 9 % (on the clean scan the estimated noise is so low that denoise has almost nothing to
do). Wall seconds and that process's peak RSS are recorded.
Run it on an otherwise idle machine: the targets are <= 60 s (denoise) and <= 180 s (detect)
with peak RSS <= 6 GB on 2 CPU cores. Results go to benchmarks/results/speed.json; with --jobs, the
rows of the jobs not run are kept from the previous results.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from common import RESULTS_DIR, TUMOUR, add_rician, machine, noise_seed, require_data, save_results

JOBS = {"denoise": 60, "detect": 180}


def run(cmd: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (GB) and exit code of one child process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.stderr.write(proc.stderr.read().decode(errors="replace"))
    return seconds, usage.ru_maxrss / 1e6, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    args = ap.parse_args()
    if not require_data():
        return
    scan = TUMOUR / "TCGA-DU-7294" / "t2.nii.gz"
    exe = shutil.which("medhdiff") or "medhdiff"
    rows = []
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        from medhdiff.io import Volume, load_volume, save_volume

        vol = load_volume(scan)
        x = vol.data.astype(np.float32)
        noisy, _ = add_rician(x, x != 0, 0.09, noise_seed("TCGA-DU-7294", "t2", 0.09))
        noisy_path = os.path.join(tmp, "t2_noisy9.nii.gz")
        save_volume(Volume(noisy, vol.affine, vol.header), noisy_path)
        inputs = {"denoise": noisy_path, "detect": str(scan)}
        for job, target in JOBS.items():
            if job not in args.jobs:
                continue
            for k in range(args.repeat):
                out = os.path.join(tmp, f"{job}{k}")
                seconds, rss, rc = run([exe, job, inputs[job], "-o", out, "--device", "cpu"])
                if rc:
                    raise SystemExit(f"medhdiff {job} failed with exit code {rc}")
                row = {"job": f"medhdiff {job} (240x240x155 T2{', 9 % noise' if job == 'denoise' else ''})", "seconds": round(seconds, 1),
                       "peak_rss_gb": round(rss, 3), "target_s": target, "load_avg_after": round(os.getloadavg()[0], 2)}
                rows.append(row)
                print(row, flush=True)
    runs = [info]
    previous = RESULTS_DIR / "speed.json"
    if set(args.jobs) != set(JOBS) and previous.is_file():
        import json

        old = json.loads(previous.read_text())
        kept = [r for r in old.get("rows", []) if not any(r["job"].startswith(f"medhdiff {j} ") for j in args.jobs)]
        rows = [r for job in JOBS for r in kept + rows if r["job"].startswith(f"medhdiff {job} ")]
        runs = old.get("runs", []) + runs
    save_results("speed", {"runs": runs, "rows": rows})


if __name__ == "__main__":
    main()
