"""The robustness matrix: bad inputs, bad outputs, untrusted weights, interruptions, the form of refusals.

Every row runs the real entry point (``medhdiff_cli.main.main``), in this
process where it can (fast, and monkeypatching can simulate a full disk or a
crash), in a fresh process where the row is about the process itself
(signals, file-size limits, another user). Each row checks the exit code, that
stderr holds exactly one ``error:`` line (and nothing else for a refusal), that
no Python traceback is shown, and that no partial or temporary file is left.

docs/ROBUSTNESS.md records the matrix; set ``MEDHDIFF_MATRIX_LOG=file.jsonl``
to have every row append what it observed (exit code and stderr lines).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import make_affine, smooth_brain, write_dicom_series, write_nifti
from medhdiff.errors import InputError
from medhdiff.io import load_volume
from medhdiff_cli.main import main
from test_tasks import small_scan

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MATRIX_LOG = os.environ.get("MEDHDIFF_MATRIX_LOG")


# ---------------------------------------------------------------------------- running the command
@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("error:")]

    @property
    def warnings(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("warning:")]


def record(case: str, run: Run) -> None:
    """Append what a row observed to $MEDHDIFF_MATRIX_LOG (for docs/ROBUSTNESS.md)."""
    if MATRIX_LOG:
        lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
        with open(MATRIX_LOG, "a") as fh:
            fh.write(json.dumps({"case": case, "code": run.code, "stderr": lines[-3:]}) + "\n")


@pytest.fixture
def medhdiff(capsys, monkeypatch, request) -> Callable[..., Run]:
    """``medhdiff ARGS`` through the console-script entry point, in this process."""

    def invoke(*args: str | Path) -> Run:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["medhdiff", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        run = Run(code, out.out, out.err)
        record(request.node.callspec.id if hasattr(request.node, "callspec") else request.node.name, run)
        return run

    return invoke


def popen(*args: str | Path, **kwargs) -> subprocess.Popen:
    """``medhdiff ARGS`` in a fresh process, stderr kept in a file (no pipe to fill)."""
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, "-m", "medhdiff_cli.main", *map(str, args)], cwd=ROOT,
                            env=kwargs.pop("env", ENV), stdout=subprocess.DEVNULL, stderr=err, text=True, **kwargs)
    proc.err_file = err  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float = 120) -> Run:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("medhdiff hung")
    proc.err_file.seek(0)  # type: ignore[attr-defined]
    return Run(proc.returncode, "", proc.err_file.read())  # type: ignore[attr-defined]


def assert_refused(run: Run, code: int, *hints: str) -> None:
    """Exit ``code``, one ``error:`` line naming ``hints``, at most ``warning:`` lines besides, no traceback."""
    assert "Traceback" not in run.stderr, run.stderr
    assert run.code == code, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(run.errors) == 1 and all(ln.startswith(("error:", "warning:")) for ln in lines), run.stderr
    for hint in hints:
        assert hint in run.errors[0], (hint, run.errors[0])


def assert_processed(run: Run, *warning_hints: str) -> None:
    """Exit 0, no error line, no traceback, and a ``warning:`` line for each hint."""
    assert "Traceback" not in run.stderr, run.stderr
    assert run.code == 0 and not run.errors, run.stderr
    for hint in warning_hints:
        assert any(hint in w for w in run.warnings), (hint, run.stderr)


def leftovers(folder: Path) -> list[str]:
    """Temporary files of an atomic write (``.<name>.<random>.part<ext>``) anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".part" in p.name or p.name.startswith("."))


# ---------------------------------------------------------------------------- fixtures and scans
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def scan(path: Path, seed: int = 0, orientation: str = "LPS", data: np.ndarray | None = None, **kwargs) -> Path:
    base, _ = small_scan(seed=seed)
    aff = make_affine(orientation, spacing=(3.0, 3.5, 4.0), oblique=True)
    return write_nifti(path, base if data is None else data, aff, **kwargs)


def dicom_series(folder: Path, uid: str, skip: tuple[int, ...] = (), z0: float = 0.0, depth: int = 10) -> Path:
    """A DICOM series of ``depth`` axial slices 2 mm apart (minus ``skip``) written by SimpleITK."""
    data = smooth_brain((24, 20, depth)).astype(np.int16)
    return write_dicom_series(folder, data, uid, origin=(0.0, 0.0, z0), skip=skip)


def huge_header(path: Path, shape=(10000, 10000, 10000)) -> Path:
    """A NIfTI header declaring ``shape`` (int16) followed by a few bytes of data."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    path.write_bytes(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 1000)
    return path


# ---------------------------------------------------------------------------- 1. inputs: refused
def _missing(tmp: Path) -> list:
    return [tmp / "missing_t2.nii.gz"]


def _empty_folder(tmp: Path) -> list:
    (tmp / "empty").mkdir()
    return [tmp / "empty"]


def _folder_without_images(tmp: Path) -> list:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "readme.txt").write_text("no scans here")
    (tmp / "notes" / "table.csv").write_text("a,b\n")
    return [tmp / "notes"]


def _truncated(tmp: Path) -> list:
    good = scan(tmp / "good.nii.gz")
    cut = tmp / "cut_t2.nii.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return [cut]


def _random_bytes(tmp: Path) -> list:
    path = tmp / "noise_t2.nii.gz"
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    return [path]


def _huge(tmp: Path) -> list:
    return [huge_header(tmp / "huge_t2.nii")]


def _nifti_of_shape(shape: tuple[int, ...]) -> Callable[[Path], list]:
    def make(tmp: Path) -> list:
        path = tmp / f"{len(shape)}d_t2.nii.gz"
        nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)).to_filename(str(path))
        return [path]

    return make


def _all_zero(tmp: Path) -> list:
    return [scan(tmp / "zero_t2.nii.gz", data=np.zeros((30, 28, 24), np.float32))]


def _dicom_missing_slice(tmp: Path) -> list:
    return [dicom_series(tmp / "series", "1.2.826.0.1.3680043.2.1125.1.77", skip=(4,))]


def _dicom_mixed_series(tmp: Path) -> list:
    dicom_series(tmp / "mixed", "1.2.826.0.1.3680043.2.1125.1.11")
    dicom_series(tmp / "mixed", "1.2.826.0.1.3680043.2.1125.1.22", z0=1.0)
    return [tmp / "mixed"]


def _dicom_two_acquisitions_one_uid(tmp: Path) -> list:
    dicom_series(tmp / "twice", "1.2.826.0.1.3680043.2.1125.1.33")
    dicom_series(tmp / "twice", "1.2.826.0.1.3680043.2.1125.1.33", z0=-0.0, depth=10)  # e.g. a second echo
    return [tmp / "twice"]


def _mask_not_overlapping(tmp: Path) -> list:
    a = scan(tmp / "a_t2.nii.gz")
    far = make_affine("LPS", spacing=(3.0, 3.5, 4.0), origin=(400.0, 400.0, 400.0))
    m = write_nifti(tmp / "far_mask.nii.gz", np.ones((30, 28, 24), np.uint8), far)
    return [a, "--mask", m]


def _region_other_grid(tmp: Path) -> list:
    a = scan(tmp / "a_t2.nii.gz")
    r = write_nifti(tmp / "region.nii.gz", np.ones((10, 10, 10), np.uint8), make_affine("LPS"))
    return ["reconstruct", a, "--region", r]


INPUT_REFUSALS = {
    # id: (make arguments, exit code, hints in the error line)
    "missing-path": (_missing, 2, ["no such file", "missing_t2.nii.gz"]),
    "empty-folder": (_empty_folder, 2, ["contains no images"]),
    "folder-without-images": (_folder_without_images, 2, ["contains no images"]),
    "truncated-nii-gz": (_truncated, 2, ["cut_t2.nii.gz", "truncated or corrupt"]),
    "random-bytes-nii-gz": (_random_bytes, 2, ["cannot read", "noise_t2.nii.gz"]),
    "header-10000-cubed": (_huge, 2, ["(10000, 10000, 10000)", "4000.0 GB", "--max-memory"]),
    "2d-image": (_nifti_of_shape((16, 16)), 2, ["2D image"]),
    "5d-image": (_nifti_of_shape((8, 8, 8, 2, 2)), 2, ["5D image"]),
    "4d-several-volumes": (_nifti_of_shape((8, 8, 8, 3)), 2, ["4D with 3 volumes"]),
    "all-zero-image": (_all_zero, 2, ["all zeros"]),
    "dicom-missing-slice": (_dicom_missing_slice, 2, ["1.2.826.0.1.3680043.2.1125.1.77", "a slice is missing"]),
    "dicom-mixed-series": (_dicom_mixed_series, 2, ["1.2.826.0.1.3680043.2.1125.1.11",
                                                   "1.2.826.0.1.3680043.2.1125.1.22"]),
    "dicom-one-uid-two-acquisitions": (_dicom_two_acquisitions_one_uid, 2,
                                       ["1.2.826.0.1.3680043.2.1125.1.33", "share one position"]),
    "mask-not-overlapping": (_mask_not_overlapping, 2, ["does not overlap"]),
    "region-on-another-grid": (_region_other_grid, 2, ["--mask", "shape"]),
}


@pytest.mark.parametrize("case", list(INPUT_REFUSALS))
def test_bad_input_is_refused(case, medhdiff, model_dir, tmp_path):
    make, code, hints = INPUT_REFUSALS[case]
    args = make(tmp_path)
    command = [] if args and args[0] in ("reconstruct", "detect") else ["denoise"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    run = medhdiff(*command, *args, "-w", model_dir, "--device", "cpu")
    assert_refused(run, code, *hints)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, not even a run record


def test_huge_header_is_refused_before_any_allocation_and_max_memory_lifts_the_limit(medhdiff, tmp_path):
    path = huge_header(tmp_path / "big.nii", shape=(2000, 2000, 2000))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="32.0 GB"):
            load_volume(path, max_memory_gb=16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"{peak / 1e6:.0f} MB allocated before refusing"
    assert_refused(medhdiff("info", path, "--max-memory", "8"), 2, "32.0 GB", "above the 8 GB limit", "--max-memory")
    # a higher limit gets past the check, to the next problem: the file is far too short for its header
    # (found from the file's size, before reading, so this does not allocate the 32 GB either)
    started = time.monotonic()
    assert_refused(medhdiff("info", path, "--max-memory", "64"), 2, "1352 bytes", "truncated")
    assert time.monotonic() - started < 10


# ---------------------------------------------------------------------------- 1. inputs: processed
def asymmetric_brain(seed: int = 0) -> np.ndarray:
    """A brain with a bright blob in one corner: a flipped output would move it."""
    data, _ = small_scan(seed=seed)
    data[6:10, 6:10, 5:9] = 2500.0
    return data


def blob_kept(out: Path, data: np.ndarray) -> bool:
    den = np.asanyarray(nib.load(str(out)).dataobj)
    return float(den[6:10, 6:10, 5:9].mean()) > 2.0 * float(den[data > 0].mean())



@pytest.mark.parametrize("orientation", ["LPS", "LIA", "RAS"])
def test_oblique_orientations_are_processed_on_their_own_grid(orientation, medhdiff, model_dir, tmp_path):
    data = asymmetric_brain()
    a = scan(tmp_path / "a_t2.nii.gz", data=data, orientation=orientation)
    run = medhdiff("denoise", a, "-w", model_dir, "--device", "cpu")
    assert_processed(run)
    out = tmp_path / "a_t2_denoised.nii.gz"
    ref, img = nib.load(str(a)), nib.load(str(out))
    assert "".join(nib.aff2axcodes(ref.affine)) != "RAS" or orientation == "RAS"
    assert img.shape == ref.shape
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    assert blob_kept(out, data)


def _with_nan_inf(tmp: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    data = asymmetric_brain()
    brain = data > 0
    data[15, 14, 12], data[16, 14, 12], data[0, 0, 0] = np.nan, np.inf, -np.inf
    return scan(tmp / "a_t2.nii.gz", data=data), data, brain


def _negative(tmp: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    data = asymmetric_brain()
    brain = data > 0
    data = data - 3000.0  # every voxel negative, background included
    return scan(tmp / "a_t2.nii.gz", data=data), data, brain


def _int16_scaled(tmp: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    data = asymmetric_brain()
    stored = np.round((data + 100.0) / 0.25).astype(np.int16)
    path = scan(tmp / "a_t2.nii.gz", data=stored, dtype=np.int16, slope=0.25, inter=-100.0)
    return path, stored * 0.25 - 100.0, data > 0


def _anisotropic(tmp: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    data = smooth_brain((200, 200, 16), seed=2)
    aff = make_affine("RAS", spacing=(0.4, 0.4, 6.0), oblique=False)
    return write_nifti(tmp / "a_t2.nii.gz", data, aff), data, data > 0


def _mask_other_grid(tmp: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    data = asymmetric_brain()
    grid = make_affine("RAS", spacing=(2.0, 2.0, 2.0), oblique=False, origin=(-60.0, -60.0, -60.0))
    mask = np.zeros((60, 60, 60), np.uint8)
    mask[5:55, 5:55, 5:55] = 1
    write_nifti(tmp / "brain_mask.nii.gz", mask, grid)
    return scan(tmp / "a_t2.nii.gz", data=data), data, data > 0


PROCESSED = {
    # id: (make scan, extra arguments, warning hints)
    "nan-inf-voxels": (_with_nan_inf, [], ["3 NaN/Inf voxel(s) set to 0"]),
    "negative-intensities": (_negative, [], []),
    "int16-scl-slope-inter": (_int16_scaled, [], []),
    "anisotropic-0.4x0.4x6mm": (_anisotropic, [], ["very anisotropic", "0.4 x 0.4 x 6 mm"]),
    "mask-on-another-grid": (_mask_other_grid, ["--mask", "brain_mask.nii.gz"], ["different grid", "resampling"]),
}


@pytest.mark.parametrize("case", list(PROCESSED))
def test_unusual_input_is_processed(case, medhdiff, model_dir, tmp_path):
    make, extra, warnings = PROCESSED[case]
    path, data, brain = make(tmp_path)
    extra = [tmp_path / e if e.endswith(".nii.gz") else e for e in extra]
    run = medhdiff("denoise", path, *extra, "-w", model_dir, "--device", "cpu")
    assert_processed(run, *warnings)
    out_path = tmp_path / "a_t2_denoised.nii.gz"
    out = np.asanyarray(nib.load(str(out_path)).dataobj)
    assert out.shape == data.shape and np.isfinite(out).all()
    # the output stays on the input's intensity scale (negative, scaled, ...) and on its grid
    inside = brain & np.isfinite(data)
    lo, hi = np.percentile(data[inside], [1, 99])
    assert lo - 0.2 * (hi - lo) <= np.median(out[inside]) <= hi + 0.2 * (hi - lo)
    if case != "anisotropic-0.4x0.4x6mm":
        den = out - np.median(out[inside])
        assert den[6:10, 6:10, 5:9].mean() > 3 * np.abs(den[inside]).mean()  # the bright blob stayed put
    assert not leftovers(tmp_path)


def test_model_for_another_contrast_warns(medhdiff, model_dir, tmp_path):
    t1_model = tmp_path / "t1_model"
    shutil.copytree(model_dir, t1_model)
    doc = json.loads((t1_model / "model.json").read_text())
    doc["model"]["contrasts"] = doc["contrasts"] = ["t1"]
    (t1_model / "model.json").write_text(json.dumps(doc))
    a = scan(tmp_path / "patient_T2w.nii.gz")
    run = medhdiff("denoise", a, "-w", t1_model, "--device", "cpu")
    assert_processed(run, "trained for t1, not t2")


# ---------------------------------------------------------------------------- 2. outputs
def test_output_in_a_missing_folder(medhdiff, model_dir, tmp_path):
    a = scan(tmp_path / "a_t2.nii.gz")
    run = medhdiff("denoise", a, "-o", tmp_path / "nope" / "out.nii.gz", "-w", model_dir, "--device", "cpu")
    assert_refused(run, 2, "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_t2.nii.gz"]


def test_output_equal_to_the_input_is_refused_even_with_overwrite(medhdiff, model_dir, tmp_path):
    a = scan(tmp_path / "a_t2.nii.gz")
    before = a.read_bytes()
    run = medhdiff("denoise", a, "-o", a, "--overwrite", "-w", model_dir, "--device", "cpu")
    assert_refused(run, 2, "refusing to overwrite the input")
    assert a.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a_t2.nii.gz"]


def test_existing_output_without_overwrite_is_refused(medhdiff, model_dir, tmp_path):
    a = scan(tmp_path / "a_t2.nii.gz")
    old = tmp_path / "a_t2_denoised.nii.gz"
    old.write_bytes(b"an earlier result")
    run = medhdiff("denoise", a, "-w", model_dir, "--device", "cpu")
    assert_refused(run, 2, "a_t2_denoised.nii.gz exists", "--overwrite")
    assert old.read_bytes() == b"an earlier result"


def test_full_disk_leaves_no_partial_file(medhdiff, model_dir, tmp_path, monkeypatch):
    a = scan(tmp_path / "a_t2.nii.gz")
    write = nib.Nifti1Image.to_filename
    calls = []

    def fill_disk_on_second_file(self, filename):  # the denoised image fits; the residual fills the disk
        calls.append(filename)
        if len(calls) == 1:
            return write(self, filename)
        with open(filename, "wb") as fh:
            fh.write(b"\x1f\x8b half a volume")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", fill_disk_on_second_file)
    run = medhdiff("denoise", a, "--residual", "-w", model_dir, "--device", "cpu")
    assert_refused(run, 1, "cannot write", "a_t2_residual.nii.gz", "No space left on device")
    assert len(calls) == 2
    # no partial file, and the case's complete first output went too: a case leaves all of its outputs or none
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_t2.nii.gz"]


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG


def test_file_size_limit_in_a_real_process_leaves_no_partial_file(model_dir, tmp_path):
    a = scan(tmp_path / "a_t2.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    run = finish(popen("denoise", a, "-o", out, "-w", model_dir, "--device", "cpu", preexec_fn=_limit_file_size))
    record("file-size-limit-real-process", run)
    assert_refused(run, 1, "cannot write", "File too large")
    assert list(out.iterdir()) == []


def make_read_only(folder: Path) -> Callable[[], None]:
    """Make ``folder`` read-only for this user (root ignores modes: then the folder is made immutable)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("running as root, and this filesystem cannot make a folder immutable")
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_output_folder(medhdiff, model_dir, tmp_path):
    a = scan(tmp_path / "a_t2.nii.gz")
    ro = tmp_path / "ro"
    ro.mkdir()
    undo = make_read_only(ro)
    try:
        run = medhdiff("denoise", a, "-o", ro / "a_denoised.nii.gz", "-w", model_dir, "--device", "cpu")
        assert_refused(run, 2, "is not writable")
        assert list(ro.iterdir()) == []
    finally:
        undo()


def test_single_failed_case_and_runtime_error_are_one_line(medhdiff, model_dir, tmp_path, monkeypatch):
    from medhdiff.tasks import Predictor

    a = scan(tmp_path / "a_t2.nii.gz")

    def crash(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore details")

    monkeypatch.setattr(Predictor, "denoise", crash)
    assert_refused(medhdiff("denoise", a, "-w", model_dir, "--device", "cpu"), 1, "RuntimeError: CUDA error")
    # outside the per-case loop (loading the model), too
    monkeypatch.setattr("medhdiff.tasks.Predictor", crash)
    assert_refused(medhdiff("denoise", a, "-w", model_dir), 1, "RuntimeError: CUDA error", "--debug")

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr("medhdiff.tasks.Predictor", no_memory)
    assert_refused(medhdiff("denoise", a, "-w", model_dir), 1, "out of memory")
    # --debug shows the traceback, and still ends with the error line
    monkeypatch.setattr("medhdiff.tasks.Predictor", crash)
    run = medhdiff("--debug", "denoise", a, "-w", model_dir)
    assert run.code == 1 and "Traceback" in run.stderr and run.errors and "CUDA error" in run.errors[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_t2.nii.gz"]


@pytest.mark.parametrize("args", [["denoise", "--no-such-flag", "x"], ["denoise"], ["denoise", "a", "--steps", "x"],
                                  ["no-such-command"]], ids=["unknown-option", "missing-argument", "bad-value",
                                                             "unknown-command"])
def test_usage_errors_are_one_line_exit_2(args, medhdiff):
    assert_refused(medhdiff(*args), 2)


# ---------------------------------------------------------------------------- 2. interrupted runs
def _as_from_a_terminal() -> None:
    # A job started in the background (`pytest ... &`, nohup) inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: Ctrl-C must be tested as a terminal user gets it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(args: list, watch: Path, pattern: str, sig: int, seed: int) -> Run:
    """Start medhdiff, wait for its first output, then send ``sig`` at a random moment of a later case."""
    proc = popen(*args, preexec_fn=_as_from_a_terminal)
    end = time.monotonic() + 180
    while not list(watch.glob(pattern)):
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            pytest.fail(f"no output appeared:\n{finish(proc).stderr}")
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 0.5))
    assert proc.poll() is None, "the run ended before it could be interrupted; give it more cases"
    proc.send_signal(sig)
    return finish(proc, timeout=60)


@pytest.mark.parametrize("command", ["denoise", "detect"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_job_leaves_no_partial_output(command, sig, model_dir, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    n = 12 if command == "denoise" else 6
    for i in range(n):
        scan(src / f"s{i:02d}_t2.nii.gz", seed=i)
    extra = ["--steps", "3"] if command == "denoise" else ["--ensemble", "2"]
    args = [command, src, "-o", out, "-w", model_dir, "--device", "cpu", "--threads", "1", *extra]
    first = "*_denoised.nii.gz" if command == "denoise" else "*_report.json"
    run = interrupt(args, out, first, sig, seed=int(sig) * 10 + len(command))
    record(f"{command}-{signal.Signals(sig).name}", run)
    assert_refused(run, 130 if sig == signal.SIGINT else 143, "no partial output")
    assert not leftovers(out), leftovers(out)
    suffixes = ["denoised.nii.gz"] if command == "denoise" else ["mask.nii.gz", "anomaly.nii.gz", "report.json"]
    done = 0
    for i in range(n):
        present = [(out / f"s{i:02d}_t2_{s}").exists() for s in suffixes]
        assert all(present) or not any(present), (i, present)  # every case: all of its outputs or none
        if all(present):
            done += 1
            for s in suffixes:
                p = out / f"s{i:02d}_t2_{s}"
                json.loads(p.read_text()) if s.endswith(".json") else load_volume(p)  # complete files
    assert 1 <= done < n


# ---------------------------------------------------------------------------- 3. weights
def _model_copy(model_dir: Path, tmp: Path, edit: Callable[[dict, Path], None]) -> Path:
    folder = tmp / "edited_model"
    shutil.copytree(model_dir, folder)
    doc = json.loads((folder / "model.json").read_text())
    edit(doc, folder)
    (folder / "model.json").write_text(json.dumps(doc))
    return folder


class _Payload:
    """Unpickling this creates ``marker``: what a malicious weights file would do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _missing_weights(model_dir: Path, tmp: Path) -> Path:
    return tmp / "no_such_model" / "model.safetensors"


def _sha_mismatch(model_dir: Path, tmp: Path) -> Path:
    return _model_copy(model_dir, tmp, lambda doc, _: doc.update(sha256="0" * 64))


def _shapes_differ(model_dir: Path, tmp: Path) -> Path:
    return _model_copy(model_dir, tmp, lambda doc, _: doc["model"]["patch_net"].update(channels=[8, 24]))


def _pickle_pt(model_dir: Path, tmp: Path) -> Path:
    path = tmp / "model.pt"
    path.write_bytes(pickle.dumps({"state_dict": _Payload(tmp / "pwned")}))
    return path


def _pickle_named_safetensors(model_dir: Path, tmp: Path) -> Path:
    from medhdiff.diffusion.bundle import sha256_of

    def disguise(doc: dict, folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(pickle.dumps(_Payload(tmp / "pwned")))
        doc["sha256"] = sha256_of(folder / "model.safetensors")  # the attacker edits model.json too

    return _model_copy(model_dir, tmp, disguise)


WEIGHTS = {
    "weights-missing": (_missing_weights, ["does not exist"]),
    "weights-sha256-mismatch": (_sha_mismatch, ["sha256 mismatch"]),
    "weights-shapes-differ": (_shapes_differ, ["do not match the patch network"]),
    "weights-pickle-pt": (_pickle_pt, ["pickle", "weights_only=True"]),
    "weights-pickle-named-safetensors": (_pickle_named_safetensors, ["cannot read weights"]),
}


@pytest.mark.parametrize("case", list(WEIGHTS))
def test_bad_weights_are_refused_and_never_unpickled(case, medhdiff, model_dir, tmp_path):
    make, hints = WEIGHTS[case]
    weights = make(model_dir, tmp_path)
    a = scan(tmp_path / "a_t2.nii.gz")
    assert_refused(medhdiff("denoise", a, "-w", weights, "--device", "cpu"), 2, *hints)
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "a_t2_denoised.nii.gz").exists()


def test_no_code_path_unpickles():
    """Only safetensors and JSON are ever read: no torch.load, pickle.load or numpy allow_pickle."""
    import re

    offenders = []
    for path in [*(ROOT / "medhdiff").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]:
        text = path.read_text()
        calls = [m for m in re.findall(r"torch\.load\([^)]*\)", text) if "weights_only=True" not in m]
        calls += [n for n in ("pickle.load", "allow_pickle=True", "import dill", "joblib.load") if n in text]
        offenders += [f"{path.relative_to(ROOT)}: {c}" for c in calls]
    assert not offenders, offenders
