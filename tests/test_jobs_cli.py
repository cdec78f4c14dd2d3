"""``medhdiff denoise / reconstruct / detect`` on files and folders: outputs, errors, shards, provenance.

Uses the session's tiny model (trained once, shared with test_tasks.py) and
small oblique scans, so every job runs in well under a second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_nifti
from medhdiff import __version__
from medhdiff.io import load_volume
from medhdiff_cli.main import app
from test_tasks import small_scan

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def model_sha(model: Path) -> str:
    return json.loads((model / "model.json").read_text())["sha256"]


def scan(path: Path, seed: int = 0) -> Path:
    data, aff = small_scan(seed=seed)
    return write_nifti(path, data, aff)


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


def cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real entry point in a fresh process (exit code and stderr exactly as a user sees them)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "medhdiff_cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


# ---------------------------------------------------------------------------- denoise
def test_denoise_writes_next_to_input_with_residual_png_and_run_record(model_dir, tmp_path):
    a = scan(tmp_path / "a.nii.gz")
    res = invoke("denoise", a, "--weights", model_dir, "--residual", "--png", "--device", "cpu", "--contrast", "t2")
    assert res.exit_code == 0, res.output
    den, resid, png = tmp_path / "a_denoised.nii.gz", tmp_path / "a_residual.nii.gz", tmp_path / "a_denoised.png"
    for p in (den, resid, png):
        assert p.is_file(), p
    assert png.read_bytes()[:8] == PNG_MAGIC
    ref = nib.load(str(a))
    for p in (den, resid):
        img = nib.load(str(p))
        assert img.shape == ref.shape and img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    np.testing.assert_allclose(np.asanyarray(nib.load(str(den)).dataobj) + np.asanyarray(nib.load(str(resid)).dataobj),
                               np.asanyarray(ref.dataobj), rtol=1e-5, atol=1e-3)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or "tmp" in p.name]

    record = json.loads((tmp_path / "medhdiff_run.json").read_text())
    assert record["version"] == __version__ and record["command"] == "denoise"
    assert record["model_sha256"] == model_sha(model_dir)
    args = record["arguments"]
    assert args["weights"] == str(model_dir) and args["sigma"] == "auto" and args["steps"] == 2
    assert len(record["cases"]) == 1
    case = record["cases"][0]
    assert case["status"] == "ok" and case["error"] is None and case["input"] == str(a)
    assert case["outputs"] == {"denoised": str(den), "residual": str(resid), "png": str(png)}
    assert case["sigma"] > 0 and case["timestep"] > 0


def test_denoise_refuses_to_overwrite_then_overwrites(model_dir, tmp_path):
    a = scan(tmp_path / "a.nii.gz")
    assert invoke("denoise", a, "-w", model_dir, "--device", "cpu").exit_code == 0
    out = tmp_path / "a_denoised.nii.gz"
    before, stat = out.read_bytes(), out.stat()
    res = invoke("denoise", a, "-w", model_dir, "--device", "cpu")
    assert res.exit_code == 2
    assert "error:" in res.stderr and "a_denoised.nii.gz" in res.stderr and "--overwrite" in res.stderr
    assert "Traceback" not in res.output
    assert out.read_bytes() == before and out.stat().st_mtime_ns == stat.st_mtime_ns
    res = invoke("denoise", a, "-w", model_dir, "--device", "cpu", "--overwrite")
    assert res.exit_code == 0, res.output
    assert out.stat().st_ino != stat.st_ino  # replaced (atomically, by a new file)
    assert nib.load(str(out)).shape == nib.load(str(a)).shape


def test_denoise_folder_with_one_corrupt_case(model_dir, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    scan(src / "a.nii.gz", seed=0)
    (src / "b.nii.gz").write_bytes(b"\x1f\x8b" + b"not a nifti" * 40)
    scan(src / "c.nii.gz", seed=1)
    proc = cli("denoise", src, "-o", f"{out}/", "--weights", model_dir, "--device", "cpu", "--threads", "1")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert any("b.nii.gz" in ln for ln in errors), proc.stderr
    assert not any("a.nii.gz" in ln or "c.nii.gz" in ln for ln in errors)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a_denoised.nii.gz", "c_denoised.nii.gz"]
    assert not (src / "a_denoised.nii.gz").exists()  # -o folder: nothing next to the inputs
    record = json.loads((out / "medhdiff_run.json").read_text())
    status = {Path(c["input"]).name: c["status"] for c in record["cases"]}
    assert status == {"a.nii.gz": "ok", "b.nii.gz": "failed", "c.nii.gz": "ok"}
    bad = next(c for c in record["cases"] if c["status"] == "failed")
    assert bad["error"] and bad["outputs"] == {}
    good = next(c for c in record["cases"] if Path(c["input"]).name == "a.nii.gz")
    assert good["outputs"]["denoised"] == str(out / "a_denoised.nii.gz")


def test_shards_cover_every_case_exactly_once(model_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    names = ["a", "b", "c", "d", "e"]
    for i, n in enumerate(names):
        scan(src / f"{n}.nii.gz", seed=i)
    done = []
    for i in (0, 1):
        out = tmp_path / f"out{i}"
        res = invoke("denoise", src, "-o", out, "-w", model_dir, "--device", "cpu", "--shard", f"{i}/2")
        assert res.exit_code == 0, res.output
        written = sorted(p.name.replace("_denoised.nii.gz", "") for p in out.glob("*_denoised.nii.gz"))
        record = json.loads((out / f"medhdiff_run_shard{i}of2.json").read_text())
        assert sorted(Path(c["input"]).name.replace(".nii.gz", "") for c in record["cases"]) == written
        assert record["arguments"]["weights"] == str(model_dir)
        done.append(written)
    assert done[0] and done[1] and not set(done[0]) & set(done[1])
    assert sorted(done[0] + done[1]) == names
    res = invoke("denoise", src, "-o", tmp_path / "x", "-w", model_dir, "--shard", "2/2")
    assert res.exit_code == 2 and "error:" in res.stderr


# ---------------------------------------------------------------------------- detect, reconstruct
def test_detect_writes_mask_map_report_and_overlay(model_dir, tmp_path):
    a = scan(tmp_path / "a_t2.nii.gz")
    res = invoke("detect", a, "-w", model_dir, "--device", "cpu", "--png", tmp_path, "--ensemble", "2")
    assert res.exit_code == 0, res.output
    mask, amap = tmp_path / "a_t2_mask.nii.gz", tmp_path / "a_t2_anomaly.nii.gz"
    report_path, png = tmp_path / "a_t2_report.json", tmp_path / "a_t2_overlay.png"
    ref = nib.load(str(a))
    m, s = nib.load(str(mask)), nib.load(str(amap))
    assert m.get_data_dtype() == np.uint8 and s.get_data_dtype() == np.float32
    for img in (m, s):
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    assert set(np.unique(np.asanyarray(m.dataobj))) <= {0, 1}
    assert np.isfinite(np.asanyarray(s.dataobj)).all()
    report = json.loads(report_path.read_text())
    for key in ("components", "total_lesion_ml", "threshold", "model_sha256", "n_components", "contrast"):
        assert key in report
    assert report["model_sha256"] == model_sha(model_dir) and report["contrast"] == "t2"
    assert report["threshold_source"].startswith("calibrated")
    note = f"a finding needs a seed component of at least {report['min_component_ml']:g} mL"
    assert (note in " ".join(res.stdout.split())) == (report["n_components"] == 0)
    for c in report["components"]:
        assert {"volume_ml", "centroid_mm", "max_score", "mean_score"} <= set(c)
    assert png.read_bytes()[:8] == PNG_MAGIC
    record = json.loads((tmp_path / "medhdiff_run.json").read_text())
    assert record["command"] == "detect" and record["arguments"]["ensemble"] == 2
    assert set(record["cases"][0]["outputs"]) == {"mask", "map", "report", "png"}


def test_reconstruct_with_region_writes_inpainted(model_dir, tmp_path):
    a = scan(tmp_path / "a.nii.gz")
    vol = load_volume(a)
    region = np.zeros(vol.shape, dtype=np.uint8)
    region[8:18, 8:18, 6:14] = 1
    region_path = write_nifti(tmp_path / "region.nii.gz", region, vol.affine)
    res = invoke("reconstruct", a, "--mask", region_path, "-w", model_dir, "--device", "cpu", "--steps", "3",
                 "--strength", "0.4", "--contrast", "t2")
    assert res.exit_code == 0, res.output
    out = tmp_path / "a_inpainted.nii.gz"
    assert not (tmp_path / "a_reconstructed.nii.gz").exists()
    data = np.asanyarray(nib.load(str(out)).dataobj)
    inside = region > 0
    assert data.dtype == np.float32 and data.shape == vol.shape
    assert np.array_equal(data[~inside], vol.data[~inside])
    assert not np.array_equal(data[inside], vol.data[inside])
    record = json.loads((tmp_path / "medhdiff_run.json").read_text())
    assert record["command"] == "reconstruct" and record["cases"][0]["outputs"] == {"inpainted": str(out)}
    assert record["arguments"]["region"] == str(region_path)


# ---------------------------------------------------------------------------- bad weights
def test_bad_weights_one_error_line_exit_2(model_dir, tmp_path):
    a = scan(tmp_path / "a.nii.gz")
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"PK\x03\x04 pickled weights")
    edited = tmp_path / "edited"
    shutil.copytree(model_dir, edited)
    doc = json.loads((edited / "model.json").read_text())
    doc["sha256"] = "0" * 64
    (edited / "model.json").write_text(json.dumps(doc))
    cases = {"missing": tmp_path / "no_such_model", "pickle": pt, "sha256": edited}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = {k: subprocess.Popen([sys.executable, "-m", "medhdiff_cli.main", "denoise", str(a), "--weights", str(w),
                                  "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env, cwd=ROOT)
             for k, w in cases.items()}
    hints = {"missing": "does not exist", "pickle": "pickle", "sha256": "sha256"}
    for k, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, (k, stderr)
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (k, stderr)
        assert hints[k] in lines[0], (k, lines[0])
        assert "Traceback" not in stderr
    assert not (tmp_path / "a_denoised.nii.gz").exists()
    assert not (tmp_path / "medhdiff_run.json").exists()


def test_detect_one_subject_several_contrasts(model_dir, tmp_path):
    t2 = scan(tmp_path / "subj_t2.nii.gz", seed=1)
    fl = tmp_path / "subj_flair.nii.gz"
    fl.write_bytes(t2.read_bytes())
    res = invoke("detect", "--t2", t2, "--flair", fl, "-w", model_dir, "--device", "cpu", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "subj_t2_report.json").read_text())
    assert report["contrast"] == "t2+flair" and set(report["per_contrast"]) == {"t2", "flair"}
    assert report["combine"] == "consensus"  # the default
    assert report["threshold"] == 1.0
    # each contrast seeds with its own smallest component, and the report names each
    assert report["min_component_ml"] == {c: report["per_contrast"][c]["min_component_ml"] for c in ("t2", "flair")}
    if report["n_components"] == 0:  # an empty result says what it does not rule out
        assert "a finding needs a seed component of at least t2 " in " ".join(res.stdout.split())
    ref = nib.load(str(t2))
    m = nib.load(str(tmp_path / "out" / "subj_t2_mask.nii.gz"))
    assert m.shape == ref.shape and m.get_data_dtype() == np.uint8
    # scans on different grids are refused with one error line
    data, aff = small_scan(seed=2)
    other = write_nifti(tmp_path / "other_flair.nii.gz", data[:-2], aff)
    bad = invoke("detect", "--t2", t2, "--flair", other, "-w", model_dir, "--device", "cpu", "-o", tmp_path / "o2")
    assert bad.exit_code == 2 and "same grid" in bad.stderr
    both = invoke("detect", t2, "--t2", t2, "-w", model_dir)
    assert both.exit_code == 2 and "either" in both.stderr
    rule = invoke("detect", "--t2", t2, "--flair", fl, "-w", model_dir, "--combine", "max", "-o", tmp_path / "o3")
    assert rule.exit_code == 2 and "--combine" in rule.stderr and not (tmp_path / "o3").exists()
    alone = invoke("detect", t2, "-w", model_dir, "--combine", "union", "-o", tmp_path / "o4")
    assert alone.exit_code == 2 and "--t1/--t2/--flair" in alone.stderr and not (tmp_path / "o4").exists()
