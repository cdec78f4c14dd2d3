"""``medhdiff evaluate``: compare a prediction with a reference volume."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.table import Table

from medhdiff.errors import InputError
from medhdiff.io import atomic_path, load_volume
from medhdiff.metrics import evaluate_arrays
from medhdiff_cli.common import console, handle_errors

log = logging.getLogger("medhdiff")

AFFINE_TOL = 1e-3

_LABELS = {
    "mode": "mode",
    "n_voxels": "voxels evaluated",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "mse": "MSE",
    "data_range": "data range",
    "auroc": "AUROC",
    "auprc": "AUPRC (average precision)",
    "best_dice": "best Dice",
    "best_dice_threshold": "best Dice threshold",
    "threshold": "threshold",
    "dice": "Dice @ threshold",
    "ref_volume_voxels": "reference volume (voxels)",
    "ref_volume_ml": "reference volume (mL)",
    "pred_volume_voxels": "predicted volume (voxels)",
    "pred_volume_ml": "predicted volume (mL)",
}


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.6g}"
    return str(value)


def _jsonable(value: Any) -> Any:
    """Strict JSON: NaN becomes null, +-inf the strings "inf" / "-inf"."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(s) for s in shape)


@handle_errors
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Prediction: an image, a score/anomaly map or a mask."),
    ref: Path = typer.Option(..., "--ref", help="Reference: an image (PSNR/SSIM) or a binary mask (AUROC, Dice...)."),
    mask: Path | None = typer.Option(None, "--mask", help="Evaluate only inside this mask (non-zero voxels)."),
    threshold: float | None = typer.Option(
        None, "--threshold", help="Binarise --pred at score >= this value for Dice (default 0.5 for a binary --pred)."),
    json_out: Path | None = typer.Option(None, "--json", help="write JSON here ('-' for stdout, instead of the table)"),
) -> None:
    """Compute image metrics (PSNR, SSIM) or detection metrics (AUROC, AUPRC, Dice) of --pred against --ref."""
    to_stdout = json_out is not None and str(json_out) == "-"
    if json_out is not None and not to_stdout and not json_out.parent.is_dir():
        raise InputError(f"cannot write --json {json_out}: folder {json_out.parent} does not exist")
    pv = load_volume(pred)
    rv = load_volume(ref)
    if pv.shape != rv.shape:
        raise InputError(f"shape mismatch: --pred {pred} is {_shape(pv.shape)} but --ref {ref} is {_shape(rv.shape)}")
    if not np.allclose(pv.affine, rv.affine, rtol=0.0, atol=AFFINE_TOL):
        log.warning(f"--pred and --ref have the same shape but different affines (max difference "
                    f"{np.abs(pv.affine - rv.affine).max():.3g}); comparing voxel by voxel")
    mask_data = None
    if mask is not None:
        mv = load_volume(mask)
        if mv.shape != rv.shape:
            raise InputError(f"shape mismatch: --mask {mask} is {_shape(mv.shape)} "
                             f"but --ref {ref} is {_shape(rv.shape)}")
        if not np.allclose(mv.affine, rv.affine, rtol=0.0, atol=AFFINE_TOL):
            log.warning(f"--mask and --ref have the same shape but different affines (max difference "
                        f"{np.abs(mv.affine - rv.affine).max():.3g}); using the mask voxel by voxel")
        mask_data = mv.data

    try:
        metrics = evaluate_arrays(pv.data, rv.data, mask=mask_data, threshold=threshold)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if threshold is not None and metrics["mode"] == "image":
        log.warning("--threshold is ignored: --ref is not a binary mask, so image metrics were computed")

    ml = rv.voxel_volume_ml  # add mL next to each voxel count
    with_ml: dict = {}
    for key, value in metrics.items():
        with_ml[key] = value
        if key.endswith("_volume_voxels"):
            with_ml[key.replace("_voxels", "_ml")] = value * ml
    metrics = with_ml

    if json_out is not None:
        doc = {"pred": str(pred), "ref": str(ref), "mask": str(mask) if mask is not None else None}
        doc.update({k: _jsonable(v) for k, v in metrics.items()})
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
        if to_stdout:
            typer.echo(text, nl=False)
            return
        with atomic_path(json_out) as tmp:
            tmp.write_text(text)

    table = Table(title=f"{pred} vs {ref}", title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(_LABELS.get(key, key), _fmt(value))
    console.print(table)
