"""``medhdiff train`` as a library call: both stages, a run folder, resume, export."""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from medhdiff.device import resolve_device
from medhdiff.errors import InputError
from medhdiff.io.atomic import atomic_path
from medhdiff.training.checkpoint import find_checkpoint
from medhdiff.training.config import TrainConfig
from medhdiff.training.trainer import STAGES, StageTrainer, export_model, init_distributed

log = logging.getLogger("medhdiff")


def _write_json(path: Path, doc: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2))


def run_training(cfg: TrainConfig, out_dir: str | Path, *, stage: str = "both", device: str = "auto",
                 max_steps: int | None = None, resume: bool = False,
                 progress: Callable[[dict], None] | None = None, argv: list[str] | None = None,
                 time_limit: float | None = None, calibrate: bool = True) -> Path:
    """Train the requested stage(s) into ``out_dir`` and export ``out_dir/model``.

    Refuses to start over a run folder that already has checkpoints unless
    ``resume``. With ``resume`` each stage continues from its last checkpoint
    (step count, learning-rate schedule, optimiser, EMA and RNG state).
    """
    stages = STAGES if stage == "both" else (stage,)
    if any(s not in STAGES for s in stages):
        raise InputError(f"--stage must be global, local or both, got {stage!r}")
    rank, world, dist_device = init_distributed(device)
    dev = dist_device or resolve_device(device)
    run = Path(out_dir)
    has_ckpt = any(find_checkpoint(run / s / "checkpoint") for s in STAGES)
    if has_ckpt and not resume:
        raise InputError(f"{run} already holds checkpoints; pass --resume to continue or choose another --out")
    run.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        saved = run / "config.json"
        if resume and saved.is_file():
            old = json.loads(saved.read_text())
            changed = _changed_keys(old, cfg.to_dict())
            if changed:
                log.warning("the config differs from the one this run started with (%s); continuing with the new "
                            "one", ", ".join(changed))
        _write_json(saved, cfg.to_dict())
        from medhdiff import __version__

        _write_json(run / f"run_{int(time.time())}.json", {
            "medhdiff_version": __version__, "torch_version": torch.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "device": str(dev), "world_size": world,
            "argv": argv if argv is not None else sys.argv, "stage": stage, "resume": resume,
            "max_steps": max_steps, "seed": cfg.optim.seed,
        })
    torch.manual_seed(cfg.optim.seed + rank)
    t0 = time.time()
    # a time limit is shared out between the stages: the patch stage gets the larger part
    weights = {"global": 0.3, "local": 0.7}
    share = sum(weights[s] for s in stages)
    spent = 0.0
    for s in stages:
        deadline = None
        if time_limit is not None:
            spent += weights[s] / share
            deadline = t0 + time_limit * spent
        trainer = StageTrainer(cfg, s, run, dev, max_steps=max_steps, progress=progress, deadline=deadline)
        if resume and trainer.resume():
            log.info("resuming the %s stage at step %d", s, trainer.step)
        trainer.train()
    if rank == 0:
        export_model(cfg, run)
    if world > 1 and torch.distributed.is_initialized():
        # All ranks leave the process group together, once rank 0 has exported: a rank that tore it down
        # and exited while rank 0 was still busy sometimes aborted at exit (SIGABRT, a failed torchrun).
        # Calibration needs no process group, so it comes after, and no rank waits on it.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if rank == 0 and calibrate:
        from medhdiff.training.calibrate import calibrate_detection

        calibrate_detection(run / "model", cfg, device=dev)
    return run / "model"


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix or "(config)"]
    keys = sorted(set(old) | set(new))
    return [k for key in keys for k in _changed_keys(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)]
