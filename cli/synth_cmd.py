"""``medhdiff synth``: synthetic healthy brains, optionally with lesions."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medhdiff.errors import InputError
from medhdiff.io import Volume, atomic_path, save_volume
from medhdiff.io.atomic import check_output_path
from medhdiff_cli.batch import progress_bar
from medhdiff_cli.common import console, handle_errors


@handle_errors
def synth(
    n: int = typer.Option(1, "--n", help="Number of volumes."),
    out: Path = typer.Option(Path("synth"), "--out", "-o", help="Output folder."),
    contrast: str = typer.Option("t1", "--contrast", help="t1, t2, flair or random."),
    lesions: bool = typer.Option(False, "--lesions", help="Inject a tumour-like lesion into each brain."),
    lesion_kind: str = typer.Option("tumor", "--lesion-kind", help="tumor or focal (small MS-like lesions)."),
    lesion_contrast: str = typer.Option("1", "--lesion-contrast", help="Lesion conspicuity in (0, 1]: a scale on the lesion's departure from the surrounding tissue, one value or LOW,HIGH drawn per lesion (1: the built-in contrast rules; 0.3: faint)."),
    labelmaps: Path | None = typer.Option(None, "--labelmaps", help="Folder of label maps (default: built-in MNI-derived map)."),
    seed: int = typer.Option(0, "--seed", help="Seed; the same seed reproduces the same volumes."),
    spacing: float = typer.Option(2.0, "--spacing", help="Voxel size in mm."),
    png: bool = typer.Option(False, "--png", help="Also write synth_grid.png with slices of every volume."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
) -> None:
    """Write synth_NNNN.nii.gz, synth_NNNN_mask.nii.gz (lesion) and synth_NNNN_brainmask.nii.gz."""
    from medhdiff.synth.cohort import synthesize

    from medhdiff.synth.lesions import contrast_scale_range

    try:
        scale = contrast_scale_range(lesion_contrast.split(","))
    except ValueError as exc:
        raise InputError(f"--lesion-contrast: {exc}") from None
    if scale != (1.0, 1.0) and not lesions:
        raise InputError("--lesion-contrast needs --lesions")
    out.mkdir(parents=True, exist_ok=True)
    names = [(f"synth_{i:04d}.nii.gz", f"synth_{i:04d}_mask.nii.gz", f"synth_{i:04d}_brainmask.nii.gz")
             for i in range(n)]
    for trio in names:
        for name in trio:
            check_output_path(out / name, overwrite=overwrite)
    previews, masks, titles, meta = [], [], [], []
    with progress_bar() as bar:
        task = bar.add_task("synth", total=n)
        for case in synthesize(n, contrast, lesions=lesions, labelmaps=labelmaps, seed=seed, spacing=spacing,
                               lesion_kind=lesion_kind, lesion_contrast=scale):
            ref = Volume(case.image, case.affine)
            img_name, mask_name, brain_name = names[case.index]
            save_volume(case.image, out / img_name, ref, kind="image", overwrite=overwrite)
            save_volume(case.lesion_mask, out / mask_name, ref, kind="mask", overwrite=overwrite)
            save_volume(case.brain_mask, out / brain_name, ref, kind="mask", overwrite=overwrite)
            lesion_ml = float(case.lesion_mask.sum()) * ref.voxel_volume_ml
            meta.append({"image": img_name, "contrast": case.contrast, "labelmap": case.labelmap,
                         "lesion_ml": round(lesion_ml, 3),
                         **({"lesion_contrast": round(case.info["lesion"]["contrast_scale"], 3)} if lesions else {}),
                         "brain_ml": round(float(case.brain_mask.sum()) * ref.voxel_volume_ml, 1)})
            if png:
                previews.append(case.image)
                masks.append(case.lesion_mask if lesions else None)
                titles.append(f"{img_name} ({case.contrast}{f', lesion {lesion_ml:.1f} mL' if lesions else ''})")
            bar.advance(task)
    with atomic_path(out / "synth.json") as tmp:
        tmp.write_text(json.dumps({"seed": seed, "contrast": contrast, "spacing_mm": spacing, "lesions": lesions,
                                   "cases": meta}, indent=2))
    if png:
        from medhdiff.synth.preview import save_slice_grid

        with atomic_path(out / "synth_grid.png") as tmp:
            save_slice_grid(previews, tmp, titles=titles, masks=masks)
    console.print(f"wrote {n} volume(s) to {out}")
