"""Shared fixtures: tiny synthetic volumes with oblique, anisotropic affines."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


#: Axis flips/permutations giving the named orientation before the oblique tilt.
ORIENTATIONS = {
    "RAS": np.eye(3),
    "LPS": np.diag([-1.0, -1.0, 1.0]),
    # L, I, A: i -> left, j -> inferior, k -> anterior
    "LIA": np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]),
}


def make_affine(orientation: str = "LPS", spacing=(0.9, 1.3, 2.5), oblique: bool = True,
                origin=(-31.0, 22.5, -9.0)) -> np.ndarray:
    aff = np.eye(4)
    rot = rotation(0.12, -0.08, 0.21) if oblique else np.eye(3)
    aff[:3, :3] = rot @ ORIENTATIONS[orientation] @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def smooth_brain(shape=(36, 30, 16), seed: int = 0, background: float = 0.0) -> np.ndarray:
    """A smooth ellipsoidal 'brain' with texture; zero (or ``background``) outside."""
    rng = np.random.default_rng(seed)
    tex = gaussian_filter(rng.normal(size=shape), 2.0)
    tex = (tex - tex.min()) / (np.ptp(tex) + 1e-9)
    idx = np.indices(shape).astype(float)
    centre = (np.asarray(shape) - 1) / 2
    radii = np.asarray(shape) * 0.38
    r = np.sqrt((((idx - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0))
    brain = np.where(r < 1.0, 300.0 + 700.0 * tex, background)
    return brain.astype(np.float32)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype=None, slope=None, inter=None,
                qform_code: int = 1, sform_code: int = 2) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    if dtype is not None:
        img.set_data_dtype(dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, inter or 0.0)
    img.to_filename(str(path))
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


# ---------------------------------------------------------------------------- DICOM
def write_dicom_series(folder: Path, data: np.ndarray, uid: str, spacing=(0.8, 0.9, 2.0),
                       origin=(0.0, 0.0, 0.0), skip: tuple[int, ...] = ()) -> Path:
    """Axial slices of ``data`` (x, y, z) as one DICOM series ``uid`` written by SimpleITK, minus ``skip``.

    File names carry the UID's last part and the origin, so several series can share ``folder``.
    """
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.asarray(data).transpose(2, 1, 0))
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetOrigin(tuple(float(v) for v in origin))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        if k in skip:
            continue
        sl = image[:, :, k]
        sl.SetMetaData("0020|000e", uid)
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0008|0060", "MR")
        writer.SetFileName(str(folder / f"{uid.rsplit('.', 1)[-1]}_{k:03d}_{origin[2]:g}.dcm"))
        writer.Execute(sl)
    return folder


# ---------------------------------------------------------------------------- the tiny trained model
@pytest.fixture(scope="session")
def torch_one_thread():
    """Torch on one thread for a module's tests (opt in with ``pytestmark``)."""
    from test_tasks import one_thread

    with one_thread():
        yield


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The tiny model, trained once per session and shared by the task, CLI and robustness tests."""
    from test_tasks import build_tiny_model

    return build_tiny_model(tmp_path_factory.getbasetemp() / "medhdiff_tiny_model")
