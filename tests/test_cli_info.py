"""``medhdiff info`` and the CLI's error contract."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_affine, smooth_brain, write_nifti
from medhdiff_cli.main import app

runner = CliRunner()


def test_info_table_and_json(tmp_path):
    aff = make_affine("LPS", spacing=(0.9, 1.3, 2.5))
    data = smooth_brain()
    data[0, 0, 0] = np.nan
    path = write_nifti(tmp_path / "scan.nii.gz", data, aff)
    res = runner.invoke(app, ["info", str(path)])
    assert res.exit_code == 0, res.output
    assert "LPS" in res.output and "oblique" in res.output
    res = runner.invoke(app, ["info", "--json", str(path)])
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert info["shape"] == list(data.shape)
    assert info["orientation"] == "".join(nib.aff2axcodes(aff))
    assert info["oblique"] is True
    np.testing.assert_allclose(info["spacing_mm"], [0.9, 1.3, 2.5], atol=1e-5)
    assert info["nan_voxels"] == 1 and info["inf_voxels"] == 0
    brain_ml = float((data[np.isfinite(data)] > 0).sum()) * abs(np.linalg.det(aff[:3, :3])) / 1000
    assert info["foreground_ml"] == pytest.approx(brain_ml, rel=0.05)


def test_info_folder_with_one_bad_case_reports_and_continues(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", smooth_brain(), make_affine())
    (tmp_path / "b.nii.gz").write_bytes(b"not a nifti")
    res = runner.invoke(app, ["info", "--json", str(tmp_path)])
    assert res.exit_code == 2
    assert "error:" in res.stderr and "b.nii.gz" in res.stderr
    assert len(json.loads(res.stdout)) == 1


@pytest.mark.parametrize("make_bad", ["missing", "corrupt", "extension", "2d", "5d"])
def test_bad_input_one_error_line_exit_2(tmp_path, make_bad):
    if make_bad == "missing":
        path = tmp_path / "missing.nii.gz"
    elif make_bad == "corrupt":
        path = tmp_path / "bad.nii.gz"
        path.write_bytes(b"\x1f\x8b" + b"garbage" * 50)
    elif make_bad == "extension":
        path = tmp_path / "scan.jpg"
        path.write_bytes(b"xx")
    else:
        shape = (16, 16) if make_bad == "2d" else (8, 8, 8, 2, 2)
        path = tmp_path / f"{make_bad}.nii.gz"
        nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)).to_filename(str(path))
    proc = subprocess.run([sys.executable, "-m", "medhdiff_cli.main", "info", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_error_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "medhdiff_cli.main", "info", "--no-such-flag", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and "medhdiff" in res.stdout


def test_info_on_real_tumour_scans(shared_data):
    files = sorted((shared_data / "tumor").glob("*/*.nii.gz"))
    files = [f for f in files if "algorithm_segs" not in str(f)]
    assert files
    res = runner.invoke(app, ["info", "--json", *map(str, files)])
    assert res.exit_code == 0, res.output
    infos = json.loads(res.stdout)
    for f, info in zip(files, infos):
        img = nib.load(str(f))
        assert info["shape"] == list(img.shape[:3])
        np.testing.assert_allclose(info["spacing_mm"], img.header.get_zooms()[:3], atol=1e-4)
        assert info["orientation"] == "".join(nib.aff2axcodes(img.affine))
        assert info["dtype"] == str(img.get_data_dtype())
    orientations = {i["orientation"] for i in infos}
    assert {"LPS", "RAS"} <= orientations
