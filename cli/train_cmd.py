"""``medhdiff train``: fit both stages from a YAML config."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from medhdiff.device import set_threads
from medhdiff.errors import InputError
from medhdiff_cli.common import console, handle_errors


@handle_errors
def train(
    config: Path = typer.Option(..., "--config", "-c", help="YAML training config (see configs/)."),
    data: Path | None = typer.Option(None, "--data", help="Folder of real NIfTI volumes (lesion masks as <stem>_mask.nii.gz)."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Train on synthetic brains (the default source)."),
    labelmaps: Path | None = typer.Option(None, "--labelmaps", help="Folder of label maps for synthesis (default: built-in)."),
    out: Path = typer.Option(Path("runs/medhdiff"), "--out", "-o", help="Run folder (checkpoints, logs, model)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoints."),
    stage: str = typer.Option("both", "--stage", help="global, local or both."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop each stage at this step (the LR schedule keeps the config's length)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads."),
    time_limit: float | None = typer.Option(None, "--time-limit", help="Stop after this many seconds (checkpointed, exported)."),
    init_weights: Path | None = typer.Option(None, "--init-weights", help="Start both stages from this model (folder or model.safetensors): fine-tuning. Overrides optim.init_weights."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate", help="Calibrate the detection threshold on healthy synthetic volumes after training."),
    overrides: list[str] = typer.Option([], "--set", help="Override one config value, SECTION.KEY=VALUE (YAML value; repeatable), e.g. --set optim.lr=1e-4. Repeat them with --resume: a resumed run reads the config file again."),
) -> None:
    """Train the global and patch stages; writes RUN/model/model.safetensors + model.json."""
    from medhdiff.training import load_config, run_training
    from medhdiff.training.trainer import TrainingInterrupted

    if data is not None and synthetic:
        raise InputError("use either --data DIR or --synthetic, not both")
    set_threads(threads)
    cfg = load_config(config, overrides)
    if data is not None:
        if not data.is_dir():
            raise InputError(f"--data {data} is not a folder")
        cfg.data.source, cfg.data.folder = "folder", str(data)
    elif synthetic:
        cfg.data.source = "synthetic"
    if init_weights is not None:
        if not init_weights.exists():
            raise InputError(f"--init-weights {init_weights} does not exist")
        cfg.optim.init_weights = str(init_weights)
    if labelmaps is not None:
        if not labelmaps.is_dir():
            raise InputError(f"--labelmaps {labelmaps} is not a folder")
        cfg.data.labelmaps = str(labelmaps)

    columns = [TextColumn("[bold]{task.fields[stage]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.2f} it/s"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    tasks: dict[str, int] = {}
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        def progress(rec: dict) -> None:
            st = rec["stage"]
            if st not in tasks:
                tasks[st] = bar.add_task(st, total=rec["target"], stage=st, loss=float("nan"), rate=0.0,
                                         completed=rec["step"] - 1)
            if "loss" in rec:
                rate = 1.0 / rec["sec"] if rec.get("sec") else 0.0
                bar.update(tasks[st], completed=rec["step"], loss=rec["loss"], rate=rate)
            if "val_loss" in rec:
                bar.console.print(f"{st} step {rec['step']}: validation loss {rec['val_loss']:.4f}")

        try:
            model_dir = run_training(cfg, out, stage=stage, device=device, max_steps=max_steps, resume=resume,
                                     progress=progress, argv=sys.argv, time_limit=time_limit, calibrate=calibrate)
        except TrainingInterrupted as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(128 + exc.signum) from None
        except KeyboardInterrupt:
            print(f"error: interrupted; the last checkpoint is in {out}; continue with --resume", file=sys.stderr)
            raise typer.Exit(130) from None
    import os

    if os.environ.get("RANK", "0") == "0":
        console.print(f"model written to {model_dir}")
