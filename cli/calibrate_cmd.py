"""``medhdiff calibrate``: recalibrate a trained model's detection thresholds, weights untouched."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from medhdiff.device import resolve_device, set_threads
from medhdiff.errors import InputError
from medhdiff_cli.batch import progress_bar
from medhdiff_cli.common import console, handle_errors


@handle_errors
def calibrate(
    model: Path = typer.Argument(..., help="Model folder (model.safetensors + model.json); its model.json is updated."),
    config: Path = typer.Option(..., "--config", "-c", help="YAML config whose detect section (and data.contrasts, "
                                                             "data.noise_range, preprocess.spacing) to calibrate with."),
    overrides: list[str] = typer.Option([], "--set", help="Override one config value, SECTION.KEY=VALUE, e.g. "
                                                          "--set detect.max_healthy_fp_ml=0.2 (repeatable)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads."),
    contrasts: list[str] = typer.Option([], "--contrast", help="Recalibrate only this contrast (repeatable); the "
                                                               "others keep their stored calibration, which must "
                                                               "share the config's other detect settings."),
) -> None:
    """Score held-out synthetic healthy brains and tumours and store new detection thresholds in MODEL/model.json.

    Only the "calibration" entry changes; the weights and their sha256 stay as they are.
    """
    from medhdiff.training import load_config
    from medhdiff.training.calibrate import calibrate_detection

    if not (model.is_dir() and (model / "model.safetensors").is_file() and (model / "model.json").is_file()):
        raise InputError(f"{model} is not a model folder (model.safetensors + model.json)")
    set_threads(threads)
    cfg = load_config(config, overrides)
    dev = resolve_device(device)
    with progress_bar() as bar:
        task = bar.add_task("calibrating on synthetic brains", total=None)

        def progress(contrast: str, done: int, total: int) -> None:
            bar.update(task, description=f"calibrating {contrast}", completed=done, total=total)

        cal = calibrate_detection(model, cfg, device=dev, progress=progress, contrasts=contrasts or None)
    table = Table(title=f"detection calibration written to {model / 'model.json'}", title_justify="left")
    for col in ("contrast", "seed / grow percentile", "threshold / grow", "synthetic-tumour Dice",
                "healthy FP mL (mean / worst)"):
        table.add_column(col)
    for contrast, thr in cal["threshold"].items():
        h = cal.get("hysteresis", {}).get(contrast)
        tumour = cal.get("synthetic_tumour", {}).get(contrast, {})
        dice = tumour.get("dice_at_calibrated", tumour.get("best_dice"))
        if h:
            seeds = f" ({h['seed_min_volume_ml']} mL seeds)" if h.get("seed_min_volume_ml") is not None else ""
            table.add_row(contrast, f"p{h['seed_percentile']}{seeds} / p{h['grow_percentile']}",
                          f"{thr:.4f} / {h['grow_threshold']:.4f}", "-" if dice is None else f"{dice:.3f}",
                          f"{h['healthy_fp_ml']:.2f} / {h.get('healthy_fp_ml_worst', float('nan')):.2f}")
        else:
            table.add_row(contrast, f"p{cal['percentile']}", f"{thr:.4f}", "-" if dice is None else f"{dice:.3f}",
                          f"{cal['healthy_fp_ml_at_percentile'][contrast]:.2f} / -")
    notes = []
    if cal.get("grow_opening_mm"):
        notes.append(f"grow regions opened with a {cal['grow_opening_mm']} mm ball (detect.grow_opening_mm)")
    scaled = {c: v for c, v in (cal.get("score_scale") or {}).items() if v != "none"}
    if scaled:
        notes.append("scores divided by the scan's own " + ", ".join(f"{v} on {c}" for c, v in scaled.items())
                     + " (detect.score_scale)")
    smoothed = {c: v for c, v in (cal.get("score_smooth_mm") or {}).items() if v}
    if smoothed:
        notes.append("residuals smoothed inside the brain, " + ", ".join(f"{v:g} mm on {c}" for c, v in smoothed.items())
                     + " (detect.score_smooth_mm)")
    counts = cal.get("healthy_volumes") or {}
    if any(n != cal.get("volumes_per_contrast") for n in counts.values()):
        notes.append("healthy calibration brains: " + ", ".join(f"{n} on {c}" for c, n in counts.items())
                     + f", {cal.get('volumes_per_contrast')} otherwise (detect.healthy_volumes_by_contrast)")
    if notes:
        table.caption = "; ".join(notes)
    console.print(table)
