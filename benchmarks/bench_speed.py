"""End-to-end speed of `medhdiff denoise` and `medhdiff detect` on a 240x240x155 scan, as a user runs them.

    python benchmarks/bench_speed.py [--repeat 1]

Each job runs as its own `medhdiff` process (model loading, reading and writing included) on
TCGA-DU-7294's T2 (240x240x155, 1 mm); wall seconds and that process's peak RSS are recorded.
Run it on an otherwise idle machine: the targets are <= 60 s (denoise) and <= 180 s (detect)
with peak RSS <= 6 GB on 2 CPU cores. Results go to benchmarks/results/speed.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import TUMOUR, machine, require_data, save_results

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
    args = ap.parse_args()
    if not require_data():
        return
    scan = TUMOUR / "TCGA-DU-7294" / "t2.nii.gz"
    exe = shutil.which("medhdiff") or "medhdiff"
    rows = []
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        for job, target in JOBS.items():
            for k in range(args.repeat):
                out = os.path.join(tmp, f"{job}{k}")
                seconds, rss, rc = run([exe, job, str(scan), "-o", out, "--device", "cpu"])
                if rc:
                    raise SystemExit(f"medhdiff {job} failed with exit code {rc}")
                row = {"job": f"medhdiff {job} (240x240x155 T2)", "seconds": round(seconds, 1),
                       "peak_rss_gb": round(rss, 3), "target_s": target, "load_avg_after": round(os.getloadavg()[0], 2)}
                rows.append(row)
                print(row, flush=True)
    save_results("speed", {"runs": [info], "rows": rows})


if __name__ == "__main__":
    main()
