"""Write benchmarks/RESULTS.md from the JSON files that the benchmarks left in benchmarks/results/.

    python benchmarks/make_results.py

Only measured rows are printed; a table whose benchmark has not been run says so. The targets
of the default-model issue are checked against the measured numbers, met or not.
"""

from __future__ import annotations

import json

import numpy as np

from common import RESULTS_DIR, ROOT, opening_summary

METHOD_NAMES = {
    "noisy": "noisy input",
    "medhdiff-steps1": "medhdiff `--steps 1 --adapt 0`",
    "medhdiff-steps2": "medhdiff `--steps 2 --adapt 0`",
    "medhdiff-steps1-adapt20": "medhdiff `--steps 1 --adapt 20`",
    "medhdiff-steps2-adapt20": "medhdiff `--steps 2 --adapt 20` (default)",
    "dipy-nlmeans": "DIPY nlmeans (Rician, true sigma)",
    "sitk-anisotropic": "SimpleITK gradient anisotropic diffusion (true sigma)",
    "bm4d": "BM4D (true sigma)",
}


#: the method the targets are checked on: `medhdiff denoise` with its defaults (--steps 2 --adapt 20).
DEFAULT = "medhdiff-steps2-adapt20"


def _load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _runs(payload: dict) -> list[str]:
    out = []
    for r in payload.get("runs", []):
        out.append(f"- {r['date']}, commit `{r['commit']}`, {r['cpu']}, {r['cores']} cores, "
                   f"{r['torch_threads']} torch threads, load average at start {r['load_avg_at_start'][0]}")
    return out


SEED_VOLUMES_BEFORE_STOP23 = (0.2, 0.5, 1.0)  # configs/detector.yaml's seed-volume candidates of rows that predate the field


def _table(title: str, header: list[str], rows: list[str]) -> list[str]:
    """A '###' section holding one Markdown table (rows already formatted)."""
    return [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows, ""]


def _fmt(v, nd=2) -> str:
    return "" if v is None else f"{v:.{nd}f}"


#: The columns of a pick scored on development brains, shared by bench_levers' tables (:func:`_development`).
DEVELOPMENT_HEADER = ["calibrated pick", "calibration Dice", "healthy brains with a finding", "worst healthy mL",
                      "worst margins", "tumours reached", "found / reference mL", "pooled Dice"]


def _development(r: dict) -> str:
    """The cells of ``DEVELOPMENT_HEADER`` for one bench_levers row (no leading or closing bar)."""
    return (f"{r['pick']}{'' if r.get('useful', True) else ' (not useful)'} | {r['calibration_dice']:.3f} | "
            f"{r['healthy_with_finding']} of {r['healthy']} | {r['worst_healthy_ml']:.2f} | "
            f"{', '.join(f'{m:.2f}' for m in r.get('healthy_margins_top3', []))} | "
            f"{r['tumours_reached']} of {r['tumours']} | {r['found_ml']:.1f} / {r['reference_ml']:.1f} | "
            f"{r['pooled_dice']:.3f}")


def _candidate(r: dict) -> str:
    """A candidates row's model, and where its brains were drawn another way (``--synthesis``), how and whose
    pick it is (the shipped calibration's, or one made on those brains)."""
    out = f"{r['model']} ({r['sha256']})"
    if r.get("synthesis"):
        out += f"; brains drawn with {json.dumps(r['synthesis'])}; {r.get('pick_source', 'calibrated here')}"
    if r.get("first_seed", 740_000) != 740_000:  # --seed-block: fresh sets, not the seeds the heading names
        first = r["first_seed"]
        out += (f"; fresh seeds (development {first}+, {first + 500}+, {first + 1000}+, {first + 1500}+; "
                f"test {first + 2000}+, {first + 2500}+, {first + 3000}+, {first + 3500}+)")
    if r.get("unreferenced"):
        out += "; found on " + ", ".join(f"{k} {v['found_ml']:.1f} mL (crude {v['crude_hyperintensity_ml']:.1f})"
                                         for k, v in r["unreferenced"].items())
    return out


def _tail(r: dict) -> str:
    """A candidates row's seed floor: ``detect.seed_tail`` and the floor it set (rows before it existed: none)."""
    return "none" if r.get("seed_tail") is None else f"{r['seed_tail']:g} ({r['seed_floor']:.2f})"


def _grid(r: dict) -> str:
    """A candidates row's grow grid: the config's, or the top of the one it was picked from (``--grow-grids``)."""
    g = r.get("grow_percentiles")
    return "config" if g is None else f"from p{max(g):g}"


def _large(r: dict | None) -> str:
    """A candidates row's large tumours (60-150 mL): reached, found / reference mL, pooled Dice ('' where not
    measured)."""
    if not r:
        return ""
    return (f"{r['tumours_reached']} of {r['tumours']}, {r['found_ml']:.1f} / {r['reference_ml']:.1f}, "
            f"{r['pooled_dice']:.3f}")


def _peaks(values: list | None) -> str:
    """A size row's per-tumour score peaks, smallest tumour first (blank for rows measured before they were)."""
    return "" if not values else ", ".join(f"{v:.2f}" for v in values)


def _shipped_pick(contrast: str) -> dict | None:
    """The shipped detection model's calibrated pick (seed and grow thresholds) for ``contrast``."""
    path = ROOT / "medhdiff" / "models" / "detector" / "model.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("calibration", {}).get("hysteresis", {}).get(contrast)


def _calibration_summary(cal: dict) -> dict:
    """The detection calibration without its per-candidate tables."""
    out = {k: v for k, v in cal.items() if not k.startswith("healthy_fp_ml") and k not in ("synthetic_tumour", "hysteresis")}
    for contrast, h in cal.get("hysteresis", {}).items():
        q = h.get("grow_intensity_percentile")
        out.setdefault("seed/grow percentile", {})[contrast] = (f"{h['seed_percentile']}/{h['grow_percentile']}"
                                                               + ("" if q is None else f" + intensity p{q}"))
    for contrast, t in cal.get("synthetic_tumour", {}).items():
        out.setdefault("synthetic tumour Dice", {})[contrast] = t.get("dice_at_calibrated", t.get("best_dice"))
    return out


def denoise_section(d: dict) -> tuple[list[str], dict]:
    rows = d["rows"]
    lines = ["## Denoising (real scans, Rician noise added)", "",
             "PSNR (dB) / SSIM inside the brain against the original scan, mean over the case-contrast pairs run "
             "(n per cell). The competitors were given the true sigma; medhdiff estimated it from the scan.", ""]
    levels = sorted({r["level"] for r in rows})
    core = ("noisy", "medhdiff-steps1", "medhdiff-steps2", DEFAULT, "dipy-nlmeans", "sitk-anisotropic")
    have: dict = {}
    for r in rows:
        have.setdefault((r["case"], r["contrast"], r["level"]), set()).add(r["method"])
    complete = {k for k, v in have.items() if set(core) <= v}
    lines[2] = lines[2].replace("mean over the case-contrast pairs run", "mean over the inputs on which every "
                                  "method of the table ran (BM4D: only on its own inputs, listed below)")
    lines.append("| method | " + " | ".join(f"{lv:.0%}" for lv in levels) + " |")
    lines.append("|---" * (len(levels) + 1) + "|")
    means: dict = {}
    for m, label in METHOD_NAMES.items():
        sel = [r for r in rows if r["method"] == m]
        if not sel:
            continue
        cells = []
        for lv in levels:
            s = [r for r in sel if r["level"] == lv and ((r["case"], r["contrast"], lv) in complete or m == "bm4d")]
            if s:
                means[(m, lv)] = float(np.mean([r["psnr"] for r in s]))
                cells.append(f"{means[(m, lv)]:.2f} / {np.mean([r['ssim'] for r in s]):.3f} (n={len(s)})")
            else:
                cells.append("")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Every measured row. Seconds are wall time; most rows were measured while other benchmarks shared "
              "the 2 cores, so they are slower than on an idle machine. `load` is the 1-minute load average when "
              "the row finished (blank: not recorded, a busy run); the speed table below was measured idle.", "",
              "| case | contrast | noise | method | PSNR | SSIM | seconds | peak RSS GB | load |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["case"], r["contrast"], r["level"], list(METHOD_NAMES).index(r["method"]))):
        lines.append(f"| {r['case']} | {r['contrast']} | {r['level']:.0%} | {r['method']} | {r['psnr']:.2f} | "
                     f"{r['ssim']:.3f} | {_fmt(r['seconds'], 1)} | {_fmt(r['peak_rss_gb'])} | "
                     f"{_fmt(r.get('load_avg_1min'), 1)} |")
    return lines, {"rows": rows, "means": means, "complete": complete}


def levers_section(lv: dict) -> list[str]:
    """The measured levers for missed targets (bench_levers.py)."""
    out = ["## Levers measured for the missed targets (`bench_levers.py`)", ""]
    if lv.get("tta"):
        out += _table("Denoising: averaging over flipped inputs (TCGA-DU-7294 T2, 9 %)",
                      ["input", "steps", "PSNR", "SSIM", "seconds (sum)"],
                      [f"| {r['input']} | {r['steps']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['seconds']:.0f} |"
                       for r in lv["tta"]])
    if lv.get("thick"):
        out += _table("Denoising: test-time adaptation on a thick-slice scan (TCGA-DU-7294 T2 at 1 x 1 x 3 mm)",
                      ["input", "method", "PSNR", "SSIM", "seconds"],
                      [f"| {r['input']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['seconds']:.0f} |"
                       for r in lv["thick"]])
    models = lv.get("models", {})
    if models:
        out += _table("Candidate models", ["model", "sha256", "description", "steps (global / patch)", "started from"],
                      [f"| {spec} | {d['sha256']} | {d['description']} | {d.get('steps', {}).get('global', '')} / "
                       f"{d.get('steps', {}).get('local', '')} | {d.get('init_weights_sha256') or ''} |"
                       for spec, d in models.items()])
    if lv.get("detect"):
        lines = []
        for r in lv["detect"]:
            st = r["settings"]
            desc = (f"steps {st['steps']}, ensemble {st['ensemble']}, strengths {', '.join(map(str, st['strengths']))}, "
                    f"coarse {st.get('coarse', 'matched')}")
            lines.append(f"| {r['model']} | {desc} | {r['input']} | {r['auroc']:.3f} | {r['best_dice']:.3f} | "
                         f"{r['auprc']:.3f} | {r['scan_lesion']:.2f} / {r['scan_healthy']:.2f} | "
                         f"{r['recon_lesion']:.2f} / {r['recon_healthy']:.2f} | {r['seconds']:.0f} |")
        out += _table("Detection score per model (threshold-free; medians in units of the normalisation scale)",
                      ["model", "settings", "input", "AUROC", "best Dice", "AUPRC", "scan lesion / healthy",
                       "reconstruction lesion / healthy", "seconds"], lines)
    if lv.get("coarse"):
        keys = [k for k in lv["coarse"][0] if k.startswith("strength_")]
        out += _table("Global stage alone: medians tumour / healthy of the coarse reconstruction",
                      ["model", "input", "pooled scan", *(k.replace("_", " ") for k in keys)],
                      [f"| {r['model']} | {r['input']} | {r['pooled_scan'][0]:.2f} / {r['pooled_scan'][1]:.2f} | "
                       + " | ".join(f"{r[k][0]:.2f} / {r[k][1]:.2f}" for k in keys) + " |" for r in lv["coarse"]])
    if lv.get("opening"):
        lines = [f"| {r['contrast']} | {r['radius_mm']:g} | {r['healthy_with_finding']} of {r['healthy']} | "
                 f"{r['worst_healthy_ml']:.2f} | {r['tumours_reached']} of {r['tumours']} | {r['found_ml']:.1f} / "
                 f"{r['reference_ml']:.1f} | {r['pooled_dice']:.3f} |" for r in opening_summary(lv["opening"])]
        out += _table("Detection: the grow region opened (`detect.grow_opening_mm`), development brains (seeds 740000+ "
                      "healthy, 740500+ tumours; shipped calibration)",
                      ["contrast", "ball radius mm", "healthy brains with a finding", "worst healthy mL",
                       "tumours reached", "found / reference mL", "pooled Dice"], lines)
    if lv.get("score_scale"):
        out += _table("Detection: the score divided by the scan's own statistic (`detect.score_scale`), each option "
                      "calibrated on the calibration brains, scored on development brains (seeds 740000+ healthy, "
                      "740500+ tumours)",
                      ["contrast", "score scale", "calibrated pick", "calibration Dice", "healthy brains with a finding",
                       "worst healthy mL", "tumours reached", "found / reference mL", "pooled Dice"],
                      [f"| {r['contrast']} | {r['score_scale']} | {r['pick']} | {r['calibration_dice']:.3f} | "
                       f"{r['healthy_with_finding']} of {r['healthy']} | {r['worst_healthy_ml']:.2f} | "
                       f"{r['tumours_reached']} of {r['tumours']} | {r['found_ml']:.1f} / {r['reference_ml']:.1f} | "
                       f"{r['pooled_dice']:.3f} |" for r in lv["score_scale"]])
    if lv.get("score_smooth"):
        out += _table("Detection: the signed residual smoothed inside the brain before its bright part is kept "
                      "(`detect.score_smooth_mm`, Gaussian sigma), each option calibrated on the calibration brains "
                      "with the contrast's shipped score scale, scored on development brains (seeds 740000+ "
                      "healthy, 740500+ tumours)",
                      ["contrast", "sigma mm", "healthy calibration brains", "seed volumes mL", *DEVELOPMENT_HEADER],
                      [f"| {r['contrast']} | {r['smooth_mm']:g} | {r.get('calibration_healthy', 8)} | "
                       f"{', '.join(f'{v:g}' for v in r.get('seed_volumes_ml', SEED_VOLUMES_BEFORE_STOP23))} | "
                       f"{_development(r)} |" for r in lv["score_smooth"]])
    if lv.get("cal_options"):
        out += _table("Detection: T2's calibration set and seed-volume grid (with its 8 mm smoothing), each option "
                      "picked as `medhdiff calibrate` picks and scored on development brains (32 healthy, seeds "
                      "740000+; 10 tumours, 740500+). Margin: the highest score level at which a healthy brain has a "
                      "seed component of the picked volume, over the seed level (1 or more: a finding)",
                      ["option", "healthy calibration brains", "seed volumes mL", *DEVELOPMENT_HEADER],
                      [f"| {r['option']} | {r['calibration_healthy']} | "
                       f"{', '.join(f'{v:g}' for v in r['seed_min_volumes_ml'])} | {_development(r)} |"
                       for r in lv["cal_options"]])
    if lv.get("candidates"):
        out += _table("Detection: candidate detection models, each picked as `medhdiff calibrate` would pick with "
                      "configs/detector.yaml's settings on its own reconstructions of the calibration brains, and "
                      "scored on development brains (healthy 740000+, tumours of 5-60 mL 740500+, small tumours "
                      "of 1-8 mL 741000+) and TCGA-DU-7294 (Dice at the pick, model space). Peaks: each small "
                      "tumour's highest score over the seed level (below 1, no seed starts there)",
                      ["model", "contrast", "seed tail (floor)", "grow grid", "intensity level", *DEVELOPMENT_HEADER,
                       "small tumours reached", "small pooled Dice", "small peaks",
                       "60-150 mL: reached, found / reference mL, pooled Dice", "TCGA-DU-7294 Dice (found mL)"],
                      [f"| {_candidate(r)} | {r['contrast']} | {_tail(r)} | {_grid(r)} | "
                       f"{r.get('grow_intensity_level', 'scan')} | {_development(r)} | "
                       f"{r['small_reached']} of {r['small_tumours']} | {r['small_pooled_dice']:.3f} | "
                       f"{_peaks(sorted(r['small_peaks']))} | {_large(r.get('large'))} | "
                       f"{r['real_dice']:.3f} ({r['real_found_ml']:.1f}) |"
                       for r in lv["candidates"]])
        tested = [r for r in lv["candidates"] if r.get("test")]
        if tested:
            out += _table("Detection: the same picks on held-out test brains no earlier run has seen (healthy "
                          "742000+, tumours of 5-60 mL 742500+, of 1-8 mL 743000+)",
                          ["model", "contrast", "seed tail (floor)", "grow grid", "intensity level", "calibrated pick",
                           "healthy brains with a finding",
                           "worst healthy mL", "worst margins", "tumours 5-60 mL reached", "found / reference mL",
                           "pooled Dice", "tumours 1-8 mL reached", "small pooled Dice",
                           "60-150 mL (745000+): reached, found / reference mL, pooled Dice"],
                          [f"| {_candidate(r)} | {r['contrast']} | {_tail(r)} | {_grid(r)} | "
                           f"{r.get('grow_intensity_level', 'scan')} | {r['pick']} | "
                           f"{t['healthy_with_finding']} of {t['healthy']} | {t['worst_healthy_ml']:.2f} | "
                           f"{', '.join(f'{m:.2f}' for m in t['healthy_margins_top3'])} | "
                           f"{t['tumours_reached']} of {t['tumours']} | {t['found_ml']:.1f} / {t['reference_ml']:.1f} | "
                           f"{t['pooled_dice']:.3f} | {t['small']['tumours_reached']} of {t['small']['tumours']} | "
                           f"{t['small']['pooled_dice']:.3f} | {_large(t.get('large'))} |"
                           for r in tested for t in [r["test"]]])

    def cells(x: dict) -> str:
        large = x.get("large") or {}
        return (f"{x['healthy_with_finding']} of {x['healthy']} | "
                f"{x['tumours']['reached']} of {x['tumours']['n']} | "
                f"{x['tumours']['found_ml']:.1f} / {x['tumours']['reference_ml']:.1f} | "
                f"{x['tumours']['pooled_dice']:.3f} | {x['small']['reached']} of {x['small']['n']} | "
                f"{x['small']['pooled_dice']:.3f} | " + (
                    f"{large['reached']} of {large['n']}, {large['found_ml']:.1f} / {large['reference_ml']:.1f}, "
                    f"{large['pooled_dice']:.3f}" if large.get("n") else ""))

    head = ["healthy with a finding", "5-60 mL reached", "found / reference mL", "pooled Dice",
            "1-8 mL reached", "small pooled Dice", "60-150 mL: reached, found / reference mL, pooled Dice"]
    if lv.get("combine"):
        out += _table("Detection: joining T2 and FLAIR (`detect --t2 --flair --combine`), on paired synthetic brains "
                      "(a seed draws the same brain and tumour in both contrasts), each contrast at the shipped "
                      "calibration; development (healthy 740000+, 5-60 mL 740500+, 1-8 mL 741000+), then test "
                      "(742000+, 742500+, 743000+); 60-150 mL tumours 744000+ and 745000+ (a disclosure added after the rule); "
                      "TCGA-DU-7294 in model space",
                      ["rule", "order", *[f"dev: {h}" for h in head], *[f"test: {h}" for h in head],
                       "TCGA-DU-7294 Dice (found mL)"],
                      [f"| {r['rule']} | {' > '.join(r['order'])} | {cells(r['development'])} | {cells(r['test'])} | "
                       f"{r['real_dice']:.3f} ({r['real_found_ml']:.1f}) |" for r in lv["combine"]])
    if lv.get("outside"):
        out += _table("Detection: FLAIR's intensity grow level taken outside the findings (`bench_levers.py --sections "
                      "outside`; `grow_intensity_level: outside`, iterated up to 8 levels), against the shipped 'scan' "
                      "level, at the shipped FLAIR pick; alone and in the `--t2 --flair` consensus; the same "
                      "development and test brains as above (rule in bench_levers' docstring: not adopted)",
                      ["input", "FLAIR level", *[f"dev: {h}" for h in head], *[f"test: {h}" for h in head],
                       "most levels taken", "TCGA-DU-7294 Dice (found mL, levels)"],
                      [f"| {r['input']} | {r['flair_intensity_level']} | {cells(r['development'])} | "
                       f"{cells(r['test'])} | {max(r['development']['max_levels'], r['test']['max_levels'])} | "
                       f"{_fmt(r['real_dice'], 3)} ({_fmt(r['real_found_ml'], 1)}, {r['real_levels']}) |"
                       for r in lv["outside"]])
    if lv.get("robust_grow"):
        out += _table("Detection: the shipped FLAIR seeds with the intensity grow region at the robust level "
                      "(`bench_levers.py --sections robust-grow`; exploration on seen brains drawn like real tissue, "
                      "not a test): per seed block (740000: stop 29's sets; 770000: stop 30's fresh ones), "
                      "development, then test",
                      ["intensity region", "first seed", *[f"dev: {h}" for h in head], "dev: worst healthy mL",
                       *[f"test: {h}" for h in head], "test: worst healthy mL"],
                      [f"| {r['intensity_level']} p{r['intensity_percentile']:g} | {r['first_seed']} | "
                       f"{cells(r['development'])} | {r['development']['worst_healthy_ml']:.2f} | {cells(r['test'])} | "
                       f"{r['test']['worst_healthy_ml']:.2f} |" for r in lv["robust_grow"]])
    if lv.get("heal_adapt"):
        out += _table("Detection: the patch network adapted to each scan (heal-adapt; shipped calibration)",
                      ["input", "model", "found mL", "Dice @auto", "score p99 / p99.9 in the brain", "AUROC",
                       "best Dice", "AUPRC", "seconds", "peak RSS GB"],
                      [f"| {r['input']} | {r['method']} | {r['found_ml']:.2f} | {_fmt(r.get('dice_auto'), 3)} | "
                       f"{r['score_p99']:.3f} / {r['score_p999']:.3f} | {_fmt(r.get('auroc'), 3)} | {_fmt(r.get('best_dice'), 3)} | "
                       f"{_fmt(r.get('auprc'), 3)} | {r['seconds']:.0f} | {r['peak_rss_gb']:.2f} |"
                       for r in lv["heal_adapt"]])
    return out + ["Runs:"] + _runs(lv) + [""]


def _above(r: dict, tag: str) -> str:
    """How many of a separation row's ``tag`` brains lie above its seed floor ('' where not measured)."""
    return f"{r[f'{tag}_above_floor']} of {r[f'{tag}_n']}" if f"{tag}_above_floor" in r else ""


def _separation(sep: dict) -> list[str]:
    """bench_separation.py: each model's T2 seed levels, no threshold chosen."""
    out = _table("Detection: T2 separation with no threshold (bench_separation.py). Seed level: the highest score "
                 "level at which a brain has a seed component of T2's largest seed volume (for a tumour brain, at "
                 "the tumour); a tumour above every healthy brain could be found without marking one",
                 ["model", "seed volume mL", "calibration brains' max", "every healthy brain's max",
                  "development healthy above the calibration max", "tumours 5-60 mL above every healthy",
                  "tumours 1-8 mL above every healthy", "TCGA-DU-7294 above every healthy",
                  "floor at tail 0.01", "above the floor: development healthy / test healthy",
                  "above the floor: tumours 5-60 mL, development / test", "above the floor: 1-8 mL, development / test"],
                 [f"| {r['model']} ({r['sha256']}) | {r['seed_volume_ml']:g} | {r['calibration_max']:.2f} | "
                  f"{r['healthy_max']:.2f} | {r['development_above_calibration_max']} of {r['development_healthy']} | "
                  f"{r['devt_above_healthy']} of {r['devt_n']} | {r['devs_above_healthy']} of {r['devs_n']} | "
                  f"{r['real_above_healthy']} of {r['real_n']} | {_fmt(r.get('floor'))} | "
                  + " | ".join(" / ".join(_above(r, t) for t in pair)
                               for pair in (("devh", "tsth"), ("devt", "tstt"), ("devs", "tsts"))) + " |"
                  for r in sep["rows"]])
    return out + ["Runs:"] + _runs(sep) + [""]


def main() -> None:
    den, det, speed = _load("denoise"), _load("detect"), _load("speed")
    out = ["# Benchmark results", "",
           "Written by `python benchmarks/make_results.py` from the JSON files in `benchmarks/results/`, which "
           "`bench_denoise.py`, `bench_detect.py` and `bench_speed.py` write. Nothing here is typed by hand.", ""]
    targets: list[str] = []
    if den:
        lines, info = denoise_section(den)
        out += lines + ["", "Runs:"] + _runs(den) + [""]
        rows = info["rows"]
        pairs = {(r["case"], r["contrast"], r["level"]) for r in rows if r["method"] == "bm4d"}
        for case, contrast, lv in sorted(pairs):
            get = {r["method"]: r for r in rows if (r["case"], r["contrast"], r["level"]) == (case, contrast, lv)}
            b, m = get.get("bm4d"), get.get(DEFAULT)
            if b and m:
                ok = m["psnr"] >= b["psnr"] and m["seconds"] <= b["seconds"] / 5
                targets.append(f"| denoise {case} {contrast} {lv:.0%}: PSNR >= BM4D at <= 1/5 of its time | "
                               f"medhdiff {m['psnr']:.2f} dB in {m['seconds']:.0f} s; BM4D {b['psnr']:.2f} dB in "
                               f"{b['seconds']:.0f} s{'' if b.get('load_avg_1min') else ' (BM4D timed with other jobs running)'}"
                               f" | {'met' if ok else 'NOT met'}{'' if m['psnr'] >= b['psnr'] else ' (PSNR)'} |")
        means = info["means"]
        for lv in sorted({r["level"] for r in rows}):
            if lv < 0.05 or ("dipy-nlmeans", lv) not in means or (DEFAULT, lv) not in means:
                continue
            sel = {(r["case"], r["contrast"]): r for r in rows if r["level"] == lv and r["method"] == "dipy-nlmeans"}
            ours = {(r["case"], r["contrast"]): r for r in rows if r["level"] == lv and r["method"] == DEFAULT}
            both = sorted(set(sel) & set(ours))
            wins = sum(ours[k]["psnr"] > sel[k]["psnr"] for k in both)
            a, b = means[(DEFAULT, lv)], means[("dipy-nlmeans", lv)]
            targets.append(f"| denoise {lv:.0%}: above DIPY nlmeans | medhdiff (defaults) {a:.2f} vs {b:.2f} dB mean PSNR; above on "
                           f"{wins} of {len(both)} inputs | {('met' if wins == len(both) else 'met on the mean, not on every input') if a > b else 'NOT met'} |")
    else:
        out += ["## Denoising", "", "not run yet (`python benchmarks/bench_denoise.py`)", ""]
    if det:
        out += ["## Detection (TCGA-DU-7294 against seg_consensus > 0, inside the brain)", "",
                f"Reconstruction coarse stage: `{det.get('coarse_timestep')}`; calibration: "
                f"`{json.dumps(_calibration_summary(det.get('calibration', {})))}`", "",
                "| contrast | method | Dice @auto | Dice @auto, seeds only | best Dice | AUPRC | AUROC | found / reference mL | seconds | peak RSS GB |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in det.get("tumour", []):
            out.append(f"| {r['contrast']} | {r['method']} | {_fmt(r['dice_auto'], 3)} | {_fmt(r.get('dice_auto_no_grow'), 3)} | {r['best_dice']:.3f} | "
                       f"{r['auprc']:.3f} | {r['auroc']:.3f} | "
                       f"{'' if 'found_ml' not in r else str(r['found_ml']) + ' / ' + str(r['reference_ml'])} | "
                       f"{_fmt(r.get('seconds'), 0)} | {_fmt(r.get('peak_rss_gb'))} |")
            if r["method"] == "medhdiff detect" and r["contrast"] in ("flair", "t2"):
                goal = 0.75 if r["contrast"] == "flair" else 0.5
                targets.append(f"| detect {r['contrast']}: Dice @auto >= {goal} | {r['dice_auto']:.3f} | "
                               f"{'met' if r['dice_auto'] >= goal else 'NOT met'} |")
        out += ["", "Published 2D anchors on BraTS (Behrendt et al.), for context only (other data, 2D): "
                "cDDPM Dice 0.53 / AUPRC 0.59, pDDPM 0.49 / 0.55, AnoDDPM-style DDPM 0.44 / 0.50.", ""]
        if det.get("tail"):
            t = det["tail"]
            out += _table(f"Where each FLAIR's own intensity grow level (p{t['percentile']:g}) lies, in robust SDs above "
                          f"its median (`bench_detect.py --sections tail`); `detect` warns above {t['warn_above_sd']} "
                          "(a normal's p99.9) that a large bright lesion may have lifted it",
                          ["input", "lesion mL", "robust SDs", "warns"],
                          [f"| {r['input']} | {_fmt(r['lesion_ml'], 1)} | {r['tail_sd']:.2f} | "
                           f"{'yes' if r['warns'] else 'no'} |" for r in t["rows"]])
        if det.get("tissue"):
            groups: dict = {}  # calibration brains by (contrast, how they were drawn): ranges; real scans: as they are
            for r in det["tissue"]:
                label, _, how = r["input"].partition(", drawn with ")
                calibration = label.startswith("calibration brain")
                groups.setdefault((r["contrast"], calibration, how if calibration else r["input"]), []).append(r)

            def name(calibration: bool, what: str, rows: list) -> str:
                if not calibration:
                    return what
                return f"{len(rows)} calibration brains" + (f", drawn with {what}" if what else "")

            qs = ("p90", "p95", "p98", "p99", "p99.9")

            def span(rows: list, q: str, pct: bool = False) -> str:
                lo, hi = min(r[q] for r in rows), max(r[q] for r in rows)
                f = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:.2f}")  # noqa: E731
                return f(lo) if lo == hi else f"{f(lo)}-{f(hi)}"

            out += _table("Healthy tissue's median-filtered intensity above its median, in robust SDs (`bench_detect.py "
                          "--sections tissue`): the healthy calibration brains (the range over them; drawn as training "
                          "draws them, or with other generator settings) against the real scans' healthy parts. "
                          "A normal puts p95 at 1.64, p98 at 2.05, p99.9 at 3.09 and 5 % above its p95",
                          ["contrast", "input", *qs, "share above a normal's p95"],
                          [f"| {c} | {name(cal, what, rows)} | " + " | ".join(span(rows, q) for q in qs)
                           + f" | {span(rows, 'share_above_normal_p95', True)} |"
                           for (c, cal, what), rows in groups.items()])
        if det.get("unreferenced"):
            out += _table("Real tumour scans without a reference segmentation (`bench_detect.py --sections "
                          "unreferenced`): what `detect` finds, beside a crude size of the scan's hyperintensity "
                          "(its largest part above median + 3 robust SDs: not a segmentation, it holds bright healthy "
                          "tissue and misses a dark core; the T2's for T2 + FLAIR). Overlays: benchmarks/results/overlays/ "
                          "(not committed)",
                          ["case", "contrast", "found mL", "components", "largest mL", "hyperintensity mL (crude)",
                           "intensity grow", "seconds", "peak RSS GB"],
                          [f"| {r['case']} | {r['contrast']} | {r['found_ml']:.1f} | {r['components']} | "
                           f"{r['largest_ml']:.1f} | {r['bright_3mad_ml']:.1f} | "
                           f"{'none' if r['grow_intensity_percentile'] is None else 'p%g (%s)' % (r['grow_intensity_percentile'], r['grow_intensity_level'])} | "
                           f"{r['seconds']:.0f} | {r['peak_rss_gb']:.2f} |" for r in det["unreferenced"]])
        if det.get("healthy"):
            out += ["### False positives on healthy scans (auto threshold, after the component filter)", "",
                    "| input | contrast | false-positive mL | seeds only, mL | components | seconds |",
                    "|---|---|---|---|---|---|"]
            for r in det["healthy"]:
                out.append(f"| {r['input']} | {r['contrast']} | {r['false_positive_ml']:.2f} | "
                           f"{_fmt(r.get('false_positive_ml_no_grow'))} | {r['components']} | "
                           f"{r['seconds']:.0f} |")
            out.append("")
            worst = max(r["false_positive_ml"] for r in det["healthy"])
            where = "bench_detect"
            # bench_healthy_fp's runs: one file per contrast, and tagged ones (--tag) beside them
            names = [p.stem for c in ("t1", "t2", "flair")
                     for p in sorted(RESULTS_DIR.glob(f"healthy_fp_{c}*.json"), key=lambda p: (len(p.stem), p.stem))]
            for name in names:
                contrast = name.split("_")[2]
                many = _load(name)
                if not many:
                    continue
                rows = many["rows"]
                fp = [r["false_positive_ml"] for r in rows]
                shipped = _shipped_pick(contrast)
                stale = many.get("calibration_pick") is not None and shipped is not None and any(
                    many["calibration_pick"].get(k) != shipped.get(k) for k in ("threshold", "grow_threshold"))
                out += _table(f"False positives on {len(rows)} more healthy synthetic {contrast.upper()} brains "
                              f"(`bench_healthy_fp.py --contrast {contrast}`, seeds {rows[0]['seed']}-{rows[-1]['seed']}; "
                              f"{sum(v > 0 for v in fp)} with a finding, {sum(v >= 2 for v in fp)} of 2 mL or more)"
                              + (" with an earlier calibration of this contrast, not the shipped one" if stale else ""),
                              ["seed", "false-positive mL", "seeds only, mL", "scan intensity in findings (median)",
                               "seconds"],
                              [f"| {r['seed']} | {r['false_positive_ml']:.2f} | {r['false_positive_ml_no_grow']:.2f} | "
                               f"{_fmt(r['intensity_in_findings'])} | {r['seconds']:.0f} |" for r in rows])
                out += _runs(many) + [""]
                if max(fp) > worst and not stale:
                    worst, where = max(fp), f"bench_healthy_fp {contrast}"
            targets.append(f"| healthy false-positive volume < 2 mL | worst {worst:.2f} mL ({where}) | "
                           f"{'met' if worst < 2 else 'NOT met'} |")
        if det.get("conspicuity"):
            out += _table("How faint a tumour `detect` finds: held-out synthetic tumours at full contrast and fainter "
                          "(the same lesion, its departure from the surrounding tissue scaled; auto thresholds)",
                          ["contrast", "seed", "contrast scale", "reference mL", "found mL", "Dice @auto", "seconds"],
                          [f"| {r['contrast']} | {r['seed']} | {r['contrast_scale']:.1f} | {r['reference_ml']:.1f} | "
                           f"{r['found_ml']:.1f} | {r['dice_auto']:.3f} | {r['seconds']:.0f} |"
                           for r in det["conspicuity"]])
        if det.get("size"):
            out += _table("The smallest tumours `detect` finds: held-out synthetic tumours by size (auto thresholds; "
                          "each calibration's pick named)",
                          ["contrast", "calibration pick", "model", "tumour size mL", "reached", "found / reference mL",
                           "pooled Dice", "score peak over the seed level: in each tumour", "elsewhere in its brain"],
                          [f"| {r['contrast']} | {r['pick']} | {r['model_sha256']} | {r['size_ml'][0]:g}-{r['size_ml'][1]:g} | "
                           f"{r['reached']} of {r['tumours']} | {r['found_ml']:.1f} / {r['reference_ml']:.1f} | "
                           f"{r['pooled_dice']:.3f} | {_peaks(r.get('tumour_peaks'))} | {_peaks(r.get('elsewhere_peaks'))} |"
                           for r in det["size"]])
        if det.get("reconstruct"):
            out += _table("Healthy reconstruction of healthy synthetic brains (`reconstruct` defaults)",
                          ["input", "strength", "steps", "PSNR", "SSIM", "seconds"],
                          [f"| {r['input']} | {r['strength']:.2f} | {r['steps']} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                           f"{r['seconds']:.0f} |" for r in det["reconstruct"]])
        if det.get("inpaint"):
            out += _table("Inpainting a healthy region of a real scan",
                          ["input", "ball mL", "medhdiff PSNR / SSIM", "shell-mean fill PSNR / SSIM", "seconds"],
                          [f"| {r['input']} | {r['ball_ml']} | {r['psnr']:.2f} / {r['ssim']:.3f} | "
                           f"{r['shell_mean_fill_psnr']:.2f} / {r['shell_mean_fill_ssim']:.3f} | {r['seconds']:.0f} |"
                           for r in det["inpaint"]])
        out += ["Runs:"] + _runs(det) + [""]
    else:
        out += ["## Detection", "", "not run yet (`python benchmarks/bench_detect.py`)", ""]
    if speed:
        out += ["## Speed on a 240x240x155 scan (idle machine)", "",
                "| job | seconds | peak RSS GB | target |", "|---|---|---|---|"]
        for r in speed["rows"]:
            out.append(f"| {r['job']} | {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} | <= {r['target_s']} s, <= 6 GB |")
            ok = r["seconds"] <= r["target_s"] and r["peak_rss_gb"] <= 6
            targets.append(f"| speed: {r['job']} <= {r['target_s']} s, peak RSS <= 6 GB | {r['seconds']:.0f} s, "
                           f"{r['peak_rss_gb']:.2f} GB | {'met' if ok else 'NOT met'} |")
        out += ["", "Runs:"] + _runs(speed) + [""]
    levers = _load("levers")
    if levers:
        out += levers_section(levers)
    separation = _load("separation")
    if separation:
        out += _separation(separation)
    out[4:4] = ["## Targets", "", "| target | measured | status |", "|---|---|---|", *targets, ""]
    (ROOT / "benchmarks" / "RESULTS.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
