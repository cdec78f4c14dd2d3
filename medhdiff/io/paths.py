"""Turning the paths a user typed into a list of cases, and naming outputs."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from medhdiff.errors import InputError
from medhdiff.io.atomic import full_suffix, stem
from medhdiff.io.readers import IMAGE_SUFFIXES, dicom_series


def is_image_file(path: Path) -> bool:
    return path.is_file() and full_suffix(path) in IMAGE_SUFFIXES and not path.name.startswith(".")


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into the list of volumes they hold.

    A file is taken as it is (its format is checked when it is read). A folder
    contributes its image files (sorted, not recursive); a folder with no image
    files but a DICOM series is itself one volume. A missing path or a folder
    with nothing readable is an :class:`InputError`.
    """
    cases: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"no such file or folder: {p}")
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if is_image_file(f))
            if files:
                cases.extend(files)
            elif dicom_series(p):
                cases.append(p)
            else:
                raise InputError(f"{p} contains no images ({', '.join(IMAGE_SUFFIXES)}) and no DICOM series")
        else:
            cases.append(p)
    if not cases:
        raise InputError("no input given")
    seen: set[Path] = set()
    unique = []
    for c in cases:
        key = c.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def output_path(case: str | os.PathLike, suffix: str, out_dir: str | os.PathLike | None = None,
                ext: str = ".nii.gz") -> Path:
    """``<out_dir>/<stem>_<suffix><ext>``; ``out_dir`` defaults to the input's folder."""
    case = Path(case)
    folder = Path(out_dir) if out_dir is not None else (case.parent if case.is_file() or not case.exists() else case.parent)
    return folder / f"{stem(case)}_{suffix}{ext}"


#: File-name fragments that name a contrast (BraTS, BIDS and common scanner exports); FLAIR first,
#: since names like "t2f" contain "t2".
CONTRAST_KEYS = (("flair", ("flair", "_fla", "fla.", "t2f")), ("t2", ("t2",)), ("t1", ("t1",)))


def guess_contrast(name: str | os.PathLike, known: tuple[str, ...] | None = None) -> str | None:
    """The contrast a file name suggests (``flair``, ``t2`` or ``t1``), or ``None``.

    With ``known``, only those contrasts are returned.
    """
    low = Path(name).name.lower()
    for contrast, keys in CONTRAST_KEYS:
        if (known is None or contrast in known) and any(k in low for k in keys):
            return contrast
    return None


def select_shard(cases: list[Path], shard: str | None) -> list[Path]:
    """Keep every n-th case for ``shard`` = ``"i/n"`` (0-based i), so n jobs split a cohort."""
    if not shard:
        return cases
    try:
        i_str, n_str = shard.split("/")
        i, n = int(i_str), int(n_str)
    except ValueError:
        raise InputError(f"--shard must look like i/n (e.g. 0/4), got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {shard}: need 0 <= i < n")
    return cases[i::n]
