"""``medhdiff info``: what is in a scan."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from medhdiff.errors import MedhdiffError
from medhdiff.info import volume_info
from medhdiff.io import expand_inputs, load_volume
from medhdiff_cli.common import console, err_console, handle_errors, one_line


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _table(info: dict) -> Table:
    t = Table(title=str(info["path"]), show_header=False, title_justify="left")
    t.add_column("field", style="bold")
    t.add_column("value")
    t.add_row("format", info["format"])
    t.add_row("shape", " x ".join(str(s) for s in info["shape"]))
    t.add_row("voxel size (mm)", " x ".join(f"{s:.4g}" for s in info["spacing_mm"]))
    t.add_row("orientation", info["orientation"])
    t.add_row("oblique", "yes" if info["oblique"] else "no")
    t.add_row("dtype", info["dtype"])
    if "qform_code" in info:
        t.add_row("qform / sform code", f"{info['qform_code']} / {info['sform_code']}")
    i = info["intensity"]
    t.add_row("intensity min / p1 / p50 / p99 / max",
              " / ".join(_fmt(i[k]) for k in ("min", "p1", "p50", "p99", "max")))
    t.add_row("foreground (mL)", f"{info['foreground_ml']:.1f} ({info['foreground_method']})")
    t.add_row("NaN / Inf voxels", f"{info['nan_voxels']} / {info['inf_voxels']}")
    return t


@handle_errors
def info(
    paths: list[Path] = typer.Argument(..., help="Image files or folders (NIfTI, NRRD, MHA/MHD, DICOM series)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables."),
    max_memory: float | None = typer.Option(None, "--max-memory", help="Refuse volumes needing more than this many GB."),
) -> None:
    """Show format, geometry and intensity statistics of each volume."""
    cases = expand_inputs(paths)
    results, failures = [], 0
    for case in cases:
        try:
            results.append(volume_info(load_volume(case, max_memory_gb=max_memory)))
        except MedhdiffError as exc:
            failures += 1
            err_console.print(f"error: {one_line(exc)}", markup=False, highlight=False, soft_wrap=True)
            if len(cases) == 1:
                raise typer.Exit(exc.exit_code) from None
    if as_json:
        typer.echo(json.dumps(results if len(cases) > 1 else (results[0] if results else None), indent=2))
    else:
        for r in results:
            console.print(_table(r))
    if failures:
        raise typer.Exit(2)
