"""Synthesis speed: seconds per synthetic brain (healthy, and with a lesion) on this machine.

    python benchmarks/bench_synth.py [--n 5] [--spacing 2.0]

Prints a table; the target of the data-engine issue is <= 3 s per 2 mm volume on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from rich.console import Console
from rich.table import Table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--spacing", type=float, default=2.0)
    args = ap.parse_args()
    import torch

    from medhdiff.synth import HealthyBrainGenerator, LesionInjector, load_builtin_labelmap

    labels, affine = load_builtin_labelmap()
    table = Table(title=f"synthesis at {args.spacing} mm, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    for col in ("contrast", "lesion", "shape", "first call s", "mean s (next calls)", "max s"):
        table.add_column(col)
    for contrast in ("t1", "t2", "flair", "random"):
        for lesion in (False, True):
            gen = HealthyBrainGenerator(contrast=contrast, spacing=args.spacing)
            inj = LesionInjector(kind="tumor")
            times = []
            for i in range(args.n + 1):
                t = time.perf_counter()
                res = gen.generate(labels, affine, seed=i)
                if lesion:
                    inj.inject(res.image, res.brain_mask, res.affine, res.contrast, seed=i)
                times.append(time.perf_counter() - t)
            table.add_row(contrast, "yes" if lesion else "no", "x".join(map(str, res.image.shape)),
                          f"{times[0]:.2f}", f"{np.mean(times[1:]):.2f}", f"{np.max(times[1:]):.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
