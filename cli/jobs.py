"""``medhdiff denoise``, ``reconstruct`` and ``detect``: thin wrappers over :class:`Predictor`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.progress import Progress

from medhdiff.device import set_threads
from medhdiff.errors import InputError
from medhdiff.io import atomic_path, full_suffix, load_volume, save_volume, stem
from medhdiff_cli.batch import CaseOutcome, check_outputs, resolve_output, run_cases, sampler_progress
from medhdiff_cli.common import handle_errors

WEIGHTS = typer.Option(None, "--weights", "-w", help="Model folder or model.safetensors (default: the bundled model).")
DETECT_WEIGHTS = typer.Option(None, "--weights", "-w", help="Model folder or model.safetensors (default: the bundled "
                              "detection model).")
DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda.")
THREADS = typer.Option(None, "--threads", help="CPU threads (default: all).")
BATCH = typer.Option(4, "--batch-size", help="Windows per network call; lower it if memory runs out.")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing outputs.")
SHARD = typer.Option(None, "--shard", help="i/n: process every n-th case starting at i (0-based).")
CONTRAST = typer.Option(None, "--contrast", help="t1, t2 or flair (default: guessed from the file name).")
SEED = typer.Option(0, "--seed", help="Random seed (reconstructions are reproducible for a seed).")
MASK = typer.Option(None, "--mask", "--brain-mask", help="Brain mask file (default: non-zero voxels or automatic).")
BRAIN_MASK = typer.Option(None, "--brain-mask", help="Brain mask file (default: non-zero voxels or automatic).")
MAX_MEM = typer.Option(None, "--max-memory", help="Refuse volumes needing more than this many GB.")


def _predictor(weights, device, batch_size, threads, model: str = "default"):
    from medhdiff.tasks import Predictor

    set_threads(threads)
    if batch_size < 1:
        raise InputError("--batch-size must be >= 1")
    return Predictor(weights, device=device, batch_size=batch_size, model=model)


def _load_mask(mask: Path | None, max_memory):
    return load_volume(mask, max_memory_gb=max_memory) if mask is not None else None


def _record_dir(first_output_key: str):
    def pick(outcomes: list[CaseOutcome]) -> Path | None:
        for o in outcomes:
            if first_output_key in o.outputs:
                return Path(o.outputs[first_output_key]).parent
        return None

    return pick


@handle_errors
def denoise(
    inputs: list[Path] = typer.Argument(..., help="Scans: files, folders, or both."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output file (one input) or folder."),
    weights: Path | None = WEIGHTS,
    sigma: str = typer.Option("auto", "--sigma", help="Noise sigma in the image's units, or auto (estimated)."),
    steps: int = typer.Option(2, "--steps", help="Sampling steps, the speed knob: 1 = one Tweedie (MMSE) pass, "
                              "twice as fast; 2 (default) measured 0.1-1.3 dB better on real scans."),
    adapt: int = typer.Option(20, "--adapt", help="Test-time adaptation: first fit a copy of the patch network to "
                              "this scan's own noise for this many steps (self-supervised, about 0.9 s each on "
                              "2 CPU cores); the default 20 measured 0.5-1.9 dB better on real scans. 0 = off."),
    mask: Path | None = MASK,
    residual: bool = typer.Option(False, "--residual", help="Also write <stem>_residual.nii.gz (input - denoised)."),
    png: bool = typer.Option(False, "--png", help="Also write <stem>_denoised.png (input, denoised, residual)."),
    contrast: str | None = CONTRAST,
    device: str = DEVICE,
    threads: int | None = THREADS,
    batch_size: int = BATCH,
    overwrite: bool = OVERWRITE,
    shard: str | None = SHARD,
    max_memory: float | None = MAX_MEM,
) -> None:
    """Remove noise: estimate its level, then run the reverse diffusion from the matching step."""
    if adapt < 0:
        raise InputError("--adapt must be >= 0")
    predictor = _predictor(weights, device, batch_size, threads)
    mask_vol = _load_mask(mask, max_memory)
    n = len(inputs) if len(inputs) > 1 or not inputs[0].is_dir() else 2

    def process(case: Path, bar: Progress) -> CaseOutcome:
        paths = {"denoised": resolve_output(case, out, "denoised", ".nii.gz", n, None)}
        folder, ext = paths["denoised"].parent, full_suffix(paths["denoised"])
        # <input stem>_residual next to the output; an explicit output file name lends its stem instead
        base = stem(case) if paths["denoised"].name == f"{stem(case)}_denoised{ext}" else stem(paths["denoised"])
        if residual:
            paths["residual"] = folder / f"{base}_residual{ext}"
        if png:
            paths["png"] = folder / f"{stem(paths['denoised'])}.png"
        check_outputs(paths, case, overwrite)
        vol = load_volume(case, max_memory_gb=max_memory)
        predictor.set_progress(sampler_progress(bar))
        res = predictor.denoise(vol, sigma=sigma, steps=steps, mask=mask_vol, contrast=contrast, adapt=adapt)
        save_volume(res.image, paths["denoised"], vol, kind="image", overwrite=overwrite)
        if residual:
            save_volume(res.residual, paths["residual"], vol, kind="image", overwrite=overwrite)
        if png:
            from medhdiff.tasks.figures import save_panels_png

            save_panels_png([vol.data, res.image, np.abs(res.residual)], vol.affine, paths["png"],
                            ["input", "denoised", "|residual|"])
        adapted = f", adapted {res.info['adapt_iterations']} steps" if res.info["adapt_iterations"] else ""
        print(f"{case}: sigma {res.sigma:.4g} ({res.sigma_method}), timestep {res.timestep}, "
              f"{res.steps} step(s){adapted}, {res.seconds:.1f} s -> {paths['denoised']}")
        return CaseOutcome(case, outputs={k: str(v) for k, v in paths.items()},
                           numbers={"sigma": res.sigma, "sigma_method": res.sigma_method, "timestep": res.timestep,
                                    "steps": res.steps, "adapt_iterations": res.info["adapt_iterations"],
                                    "seconds": round(res.seconds, 2)})

    run_cases("denoise", inputs, shard, dict(weights=weights, sigma=sigma, steps=steps, adapt=adapt, mask=mask,
                                             device=device, contrast=contrast, batch_size=batch_size),
              process, _record_dir("denoised"), predictor.sha256)


@handle_errors
def reconstruct(
    inputs: list[Path] = typer.Argument(..., help="Scans: files, folders, or both."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output file (one input) or folder."),
    weights: Path | None = WEIGHTS,
    strength: float = typer.Option(0.5, "--strength", help="0..1: how far to noise the input before reconstructing."),
    region: Path | None = typer.Option(None, "--mask", "--region", help="Inpaint only this region (a mask on the input grid)."),
    steps: int = typer.Option(10, "--steps", help="Sampling steps."),
    mask: Path | None = BRAIN_MASK,
    contrast: str | None = CONTRAST,
    seed: int = SEED,
    device: str = DEVICE,
    threads: int | None = THREADS,
    batch_size: int = BATCH,
    overwrite: bool = OVERWRITE,
    shard: str | None = SHARD,
    max_memory: float | None = MAX_MEM,
) -> None:
    """Pseudo-healthy reconstruction (SDEdit-style), or inpainting of --region (RePaint-style)."""
    predictor = _predictor(weights, device, batch_size, threads)
    mask_vol = _load_mask(mask, max_memory)
    region_vol = load_volume(region, max_memory_gb=max_memory) if region is not None else None
    n = len(inputs) if len(inputs) > 1 or not inputs[0].is_dir() else 2
    suffix = "inpainted" if region is not None else "reconstructed"

    def process(case: Path, bar: Progress) -> CaseOutcome:
        paths = {suffix: resolve_output(case, out, suffix, ".nii.gz", n, None)}
        check_outputs(paths, case, overwrite)
        vol = load_volume(case, max_memory_gb=max_memory)
        predictor.set_progress(sampler_progress(bar))
        reg = None
        if region_vol is not None:
            if region_vol.shape != vol.shape:
                raise InputError(f"--mask {region} has shape {region_vol.shape}, the scan {vol.shape}")
            reg = region_vol.data > 0
        res = predictor.reconstruct(vol, strength=strength, steps=steps, region=reg, mask=mask_vol,
                                    contrast=contrast, seed=seed)
        save_volume(res.image, paths[suffix], vol, kind="image", overwrite=overwrite)
        print(f"{case}: timestep {res.timestep}, {res.steps} step(s), {res.seconds:.1f} s -> {paths[suffix]}")
        return CaseOutcome(case, outputs={k: str(v) for k, v in paths.items()},
                           numbers={"timestep": res.timestep, "steps": res.steps, "seconds": round(res.seconds, 2)})

    run_cases("reconstruct", inputs, shard, dict(weights=weights, strength=strength, region=region, steps=steps,
                                                 seed=seed, device=device, contrast=contrast),
              process, _record_dir(suffix), predictor.sha256)


def _seed_note(min_ml: float | dict) -> str:
    """What an empty detect result does not rule out: lesions whose score component above the seed level
    is smaller than the (per-contrast) seed volume."""
    sizes = (", ".join(f"{c} {v:g}" for c, v in min_ml.items()) if isinstance(min_ml, dict) else f"{min_ml:g}")
    return f"a finding needs a seed component of at least {sizes} mL; smaller or fainter lesions go unreported"


@handle_errors
def detect(
    inputs: list[Path] | None = typer.Argument(None, help="Scans: files, folders, or both."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Mask file (one input) or folder for all outputs."),
    map_out: Path | None = typer.Option(None, "--map", help="Anomaly map file or folder (default: next to the mask)."),
    report: Path | None = typer.Option(None, "--report", help="JSON report file or folder (default: next to the mask)."),
    png: Path | None = typer.Option(None, "--png", help="PNG overlay file or folder (three slices through the largest finding)."),
    weights: Path | None = DETECT_WEIGHTS,
    threshold: str = typer.Option("auto", "--threshold", help="auto (calibrated on synthetic scans) or a score value (in the units of the report's threshold: divided by the scan's own statistic where the report gives a score_scale); findings are seeded above it. With --t1/--t2/--flair, a factor on each contrast's calibrated threshold."),
    grow: str = typer.Option("auto", "--grow", help="auto (calibrated: the grow threshold, plus the scan's own bright voxels where the model calibrated that), off, or a score value: findings grow through connected voxels down to this lower threshold (a value: the score alone). With --t1/--t2/--flair: auto or off."),
    ensemble: int | None = typer.Option(None, "--ensemble", help="Reconstructions per scan (default: the model's calibrated setting)."),
    steps: int | None = typer.Option(None, "--steps", help="Sampling steps per reconstruction (default: the model's)."),
    min_volume: float | None = typer.Option(None, "--min-volume", help="Smallest seed a finding grows from (mL); "
                                                                       "default: the model's calibrated one for the "
                                                                       "contrast, which each report gives as "
                                                                       "min_component_ml."),
    polarity: str = typer.Option("auto", "--polarity", help="auto, bright, dark or both."),
    mask: Path | None = BRAIN_MASK,
    contrast: str | None = CONTRAST,
    seed: int = SEED,
    device: str = DEVICE,
    threads: int | None = THREADS,
    batch_size: int = BATCH,
    overwrite: bool = OVERWRITE,
    shard: str | None = SHARD,
    max_memory: float | None = MAX_MEM,
    t1: Path | None = typer.Option(None, "--t1", help="One subject's T1 (with --t2/--flair: scored together)."),
    t2: Path | None = typer.Option(None, "--t2", help="One subject's T2 (co-registered with the others)."),
    flair: Path | None = typer.Option(None, "--flair", help="One subject's FLAIR (co-registered with the others)."),
    combine: str | None = typer.Option(None, "--combine", help="With --t1/--t2/--flair, how the contrasts' "
                                       "findings join: consensus (the default; seeded by any contrast, grown only "
                                       "where every contrast's grow region agrees), union (each grown through its "
                                       "own contrast's region) or lead (the contrast the calibration found tumours "
                                       "best in keeps its findings; another's join only where they touch none of "
                                       "them)."),
) -> None:
    """Anomaly (e.g. tumour) detection: a score map, a mask and a JSON report per scan.

    With --t1/--t2/--flair, one subject's co-registered scans are scored together: the map is the
    maximum of each contrast's map divided by its calibrated threshold, and the mask holds each
    contrast's findings, seeded at that contrast's calibrated level and grown (--combine consensus)
    only where every contrast's calibrated grow region agrees.
    """
    multi = {name: path for name, path in (("t1", t1), ("t2", t2), ("flair", flair)) if path is not None}
    if multi and inputs:
        raise InputError("give either INPUT files or --t1/--t2/--flair for one subject, not both")
    if not multi and not inputs:
        raise InputError("no input: give scans, or --t1/--t2/--flair for one subject")
    if combine is not None and not multi:
        raise InputError("--combine joins one subject's --t1/--t2/--flair scans; give those, or leave it out")
    from medhdiff.tasks.predictor import COMBINE_RULES

    combine = combine or "consensus"
    if combine not in COMBINE_RULES:  # checked before a model loads
        raise InputError(f"--combine must be one of {', '.join(COMBINE_RULES)}, got {combine!r}")
    predictor = _predictor(weights, device, batch_size, threads, model="detector")
    if ensemble is not None and ensemble < 1:
        raise InputError("--ensemble must be >= 1")
    mask_vol = _load_mask(mask, max_memory)
    if multi:
        inputs = [next(iter(multi.values()))]
    n = len(inputs) if len(inputs) > 1 or not inputs[0].is_dir() else 2

    def process(case: Path, bar: Progress) -> CaseOutcome:
        paths = {"mask": resolve_output(case, out, "mask", ".nii.gz", n, None)}
        folder = paths["mask"].parent
        paths["map"] = resolve_output(case, map_out, "anomaly", ".nii.gz", n, folder)
        paths["report"] = resolve_output(case, report, "report", ".json", n, folder)
        if png is not None:
            paths["png"] = resolve_output(case, png, "overlay", ".png", n, folder)
        protected = tuple(multi.values()) if multi else (case,)
        check_outputs(paths, protected, overwrite)
        predictor.set_progress(sampler_progress(bar))
        if multi:
            vols = {name: load_volume(p, max_memory_gb=max_memory) for name, p in multi.items()}
            vol = next(iter(vols.values()))
            res = predictor.detect_multi(vols, threshold=threshold, ensemble=ensemble, steps=steps, mask=mask_vol,
                                         min_volume_ml=min_volume, seed=seed, grow=grow, combine=combine)
        else:
            vol = load_volume(case, max_memory_gb=max_memory)
            res = predictor.detect(vol, threshold=threshold, ensemble=ensemble, steps=steps, mask=mask_vol,
                                   contrast=contrast, polarity=polarity, min_volume_ml=min_volume, seed=seed,
                                   grow=grow)
        save_volume(res.mask, paths["mask"], vol, kind="mask", overwrite=overwrite, inputs=protected)
        save_volume(res.score_map, paths["map"], vol, kind="image", overwrite=overwrite, inputs=protected)
        with atomic_path(paths["report"]) as tmp:
            tmp.write_text(json.dumps(res.report, indent=2))
        if "png" in paths:
            from medhdiff.tasks.figures import save_overlay_png

            comps = res.report["components"]
            centre = comps[0]["centroid_voxel"] if comps else None
            save_overlay_png(vol.data, res.score_map, res.mask, vol.affine, paths["png"], centre,
                             title=f"{case.name}: {res.report['total_lesion_ml']:.1f} mL")
        print(f"{case}: {res.report['n_components']} finding(s), {res.report['total_lesion_ml']:.2f} mL, "
              f"threshold {res.report['threshold']:.4g}, {res.seconds:.1f} s -> {paths['mask']}"
              + ("" if res.report["n_components"] else f" ({_seed_note(res.report['min_component_ml'])})"))
        return CaseOutcome(case, outputs={k: str(v) for k, v in paths.items()},
                           numbers={"total_lesion_ml": res.report["total_lesion_ml"],
                                    "n_components": res.report["n_components"], "seconds": round(res.seconds, 2)})

    run_cases("detect", inputs, shard, dict(weights=weights, threshold=threshold, grow=grow, ensemble=ensemble, steps=steps,
                                            seed=seed, device=device, contrast=contrast, polarity=polarity),
              process, _record_dir("mask"), predictor.sha256)
