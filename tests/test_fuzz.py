"""Bounded fuzzing (hypothesis) of the volume loader and the training-config parser.

Whatever the bytes, ``load_volume`` returns a 3D float32 volume or raises
:class:`~medhdiff.errors.InputError`; whatever the YAML, ``load_config``
returns a config or raises :class:`InputError`. Any other exception (which the
CLI would report as a crash) fails. The examples are few and the whole file
runs in well under 60 s; each test has a fixed seed, so CI runs are reproducible.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from medhdiff.errors import InputError
from medhdiff.io import load_volume
from medhdiff.training import load_config
from medhdiff.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
#: Small enough that no fuzzed header can make the loader allocate much before it refuses.
MAX_MEMORY_GB = 0.05


def reference_nifti() -> bytes:
    """A valid single-file NIfTI-1 (int16, 6x5x4, scaled, oblique qform and sform)."""
    affine = np.array([[0.9, 0.1, 0.0, -10.0], [-0.1, 1.1, 0.05, 20.0], [0.0, -0.05, 2.5, 5.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(6, 5, 4), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    img.header.set_slope_inter(0.5, -3.0)
    return img.to_bytes()


REFERENCE = reference_nifti()

#: (offset, struct format, count) of the NIfTI-1 header fields a damaged or hostile file may get wrong.
FIELDS = {
    "sizeof_hdr": (0, "<i", 1), "dim": (40, "<h", 8), "intent_code": (68, "<h", 1), "datatype": (70, "<h", 1),
    "bitpix": (72, "<h", 1), "pixdim": (76, "<f", 8), "vox_offset": (108, "<f", 1), "scl_slope": (112, "<f", 1),
    "scl_inter": (116, "<f", 1), "qform_code": (252, "<h", 1), "sform_code": (254, "<h", 1),
    "quatern": (256, "<f", 6), "srow": (280, "<f", 12), "magic": (344, "<i", 1),
}

int16s = st.integers(-(2**15), 2**15 - 1)
float32s = st.floats(width=32, allow_nan=True, allow_infinity=True)
small_dims = st.integers(-2, 12)


@st.composite
def field_edits(draw) -> list[tuple[int, bytes]]:
    """Edits that set header fields to arbitrary (often absurd) values."""
    edits = []
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4)):
        offset, fmt, count = FIELDS[name]
        index = draw(st.integers(0, count - 1))
        if fmt == "<f":
            value = draw(float32s)
        elif fmt == "<i":
            value = draw(st.integers(-(2**31), 2**31 - 1))
        else:  # small dims most of the time, so that the loader gets past the size check now and then
            value = draw(small_dims if name == "dim" and index > 0 and draw(st.booleans()) else int16s)
        edits.append((offset + index * struct.calcsize(fmt), struct.pack(fmt, value)))
    return edits


@st.composite
def damaged_nifti(draw) -> tuple[bytes, str]:
    """The reference file with edited fields, flipped bytes, a cut or junk appended; plain or gzipped."""
    data = bytearray(REFERENCE)
    for offset, raw in draw(field_edits()) if draw(st.booleans()) else []:
        data[offset:offset + len(raw)] = raw
    for offset, byte in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=6)):
        data[offset] = byte
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        data = data[:cut]
    data += draw(st.binary(max_size=64))
    suffix = draw(st.sampled_from([".nii", ".nii.gz"]))
    return (gzip.compress(bytes(data)) if suffix == ".nii.gz" else bytes(data)), suffix


def load_or_refuse(raw: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(raw)
        try:
            vol = load_volume(path, max_memory_gb=MAX_MEMORY_GB)
        except InputError as exc:
            assert str(exc).strip()
            return
        assert vol.data.ndim == 3 and vol.data.dtype == np.float32 and min(vol.shape) >= 2
        assert vol.affine.shape == (4, 4) and np.isfinite(vol.affine).all()
        assert abs(np.linalg.det(vol.affine[:3, :3])) > 0  # a geometry the preprocessing can invert


def test_reference_file_loads():
    load_or_refuse(REFERENCE, ".nii")


@seed(1)
@FUZZ
@given(damaged_nifti())
def test_fuzz_load_volume_on_damaged_nifti(case):
    load_or_refuse(*case)


@seed(2)
@settings(FUZZ, max_examples=100)
@given(st.binary(max_size=600), st.sampled_from([".nii", ".nii.gz", ".nrrd", ".mha"]))
def test_fuzz_load_volume_on_random_bytes(raw, suffix):
    load_or_refuse(raw, suffix)


# ---------------------------------------------------------------------------- the config parser
REFERENCE_CONFIG = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
KEYS = sorted({k for section in REFERENCE_CONFIG.values() if isinstance(section, dict) for k in section}
              | {f for f in TrainConfig.__dataclass_fields__})

#: Values that broke parsers before: non-finite and huge numbers, empty and wrongly typed containers.
special = st.sampled_from([float("inf"), float("-inf"), float("nan"), -1, 0, 10**30, "", "abc", [], {}, None,
                           True, [float("inf")], [0, 0, 0], ["t1", "t9"], {"x": 1}])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(["linear", "epsilon", "v", "t1", "folder", "builtin"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6),
                                                                       inner, max_size=4)), max_leaves=12)


@st.composite
def edited_config(draw) -> dict:
    """The tiny config with a few values (rarely whole sections) replaced by odd or arbitrary YAML values."""
    doc = yaml.safe_load(yaml.safe_dump(REFERENCE_CONFIG))
    sections = sorted(k for k, v in doc.items() if isinstance(v, dict))
    for _ in range(draw(st.integers(1, 3))):
        value = draw(special if draw(st.booleans()) else values)
        if draw(st.integers(0, 9)) == 0:
            doc[draw(st.sampled_from(sorted(doc) + ["extra"]))] = value
            continue
        section = draw(st.sampled_from(sections))
        if not isinstance(doc.get(section), dict) or not doc[section]:
            continue
        keys = sorted(doc[section])
        doc[section][draw(st.sampled_from(keys) if draw(st.integers(0, 4)) else st.sampled_from(KEYS))] = value
        nested = [k for k in keys if isinstance(doc[section][k], dict)]  # model.schedule, model.global_net, ...
        if nested and draw(st.booleans()):
            sub = doc[section][draw(st.sampled_from(nested))]
            if isinstance(sub, dict) and sub:
                sub[draw(st.sampled_from(sorted(sub)))] = draw(special)
    return doc


def parse_or_refuse(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            cfg = load_config(path)
        except InputError as exc:
            assert str(exc).strip()
            return
        assert isinstance(cfg, TrainConfig)


@seed(3)
@FUZZ
@given(edited_config())
def test_fuzz_config_parser_on_edited_configs(doc):
    parse_or_refuse(yaml.safe_dump(doc))


@seed(4)
@settings(FUZZ, max_examples=100)
@given(st.text(max_size=200))
def test_fuzz_config_parser_on_arbitrary_text(text):
    parse_or_refuse(text)


@pytest.mark.parametrize("text", [
    "optim: {steps_local: .inf}",  # int(inf)
    "model: {patch_size: [1e400, 16, 16]}",
    "a: &a [*a]",  # a list that holds itself
    "[" * 2000,  # nesting deeper than the parser's stack
    "optim: !!python/object/apply:os.system ['echo pwned']",  # YAML that would run code if not safe-loaded
])
def test_hostile_config_texts_are_input_errors(text):
    parse_or_refuse(text)
