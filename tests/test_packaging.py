"""The console script works from the editable install and from a built wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _declared_packages() -> set[str]:
    import tomllib  # noqa: PLC0415 - Python >= 3.11; skipped below otherwise

    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib needs Python 3.11")
def test_every_subpackage_is_declared():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "medhdiff").rglob("__init__.py")}
    found |= {"medhdiff_cli." + ".".join(p.parent.relative_to(ROOT / "cli").parts)
              for p in (ROOT / "cli").rglob("__init__.py") if p.parent != ROOT / "cli"}
    found.add("medhdiff_cli")
    assert found <= _declared_packages(), found - _declared_packages()


def test_editable_console_script_runs():
    exe = shutil.which("medhdiff", path=str(Path(sys.executable).parent))
    assert exe, "the medhdiff console script is not installed next to this Python"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("medhdiff")


def test_wheel_in_fresh_venv(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(dist.glob("medhdiff-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "medhdiff_cli/main.py" in names
    assert not any(n.startswith("cli/") for n in names), "cli/ must install as medhdiff_cli, not cli"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # The fresh venv sees this environment's dependencies (torch etc.) through a .pth file,
    # but not the source tree: medhdiff itself must come from the wheel.
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = Path(sysconfig.get_paths()["purelib"])
    (site / "deps.pth").write_text(str(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                    "--no-deps", "--no-index", "--quiet", str(wheel)], check=True, capture_output=True)
    proc = subprocess.run([str(venv / "bin" / "medhdiff"), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import medhdiff_cli, medhdiff; print(medhdiff.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert str(venv) in where, where
