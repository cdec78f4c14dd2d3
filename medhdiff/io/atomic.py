"""Atomic file writing: write to a temporary file next to the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medhdiff.errors import InputError, OutputExistsError, OutputWriteError


def full_suffix(path: str | os.PathLike) -> str:
    """The file extension including a trailing ``.gz`` (``.nii.gz``, ``.nii``, ``.mha``)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        return "".join(Path(name[:-3]).suffixes[-1:]) + ".gz"
    return Path(name).suffix


def stem(path: str | os.PathLike) -> str:
    """The file name without its (possibly double) extension; a folder's name for a folder."""
    p = Path(path)
    if p.is_dir():
        return p.name
    suffix = full_suffix(p)
    return p.name[: len(p.name) - len(suffix)] if suffix else p.name


def check_output_path(path: str | os.PathLike, *, overwrite: bool = False,
                      inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Validate an output path before any work is done.

    Refuses to write onto one of ``inputs``, onto an existing file unless
    ``overwrite``, or into a folder that does not exist or is not writable.
    """
    out = Path(path)
    resolved = out.resolve()
    for inp in inputs:
        if inp is not None and Path(inp).exists() and Path(inp).resolve() == resolved:
            raise InputError(f"refusing to overwrite the input file {out}")
    if out.is_dir():
        raise InputError(f"output path {out} is a folder, expected a file name")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")
    parent = resolved.parent
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder {parent} is not writable")
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    The temporary name keeps the target's extension so that writers that pick
    a format from the extension (nibabel, SimpleITK) behave the same. On any
    exception, KeyboardInterrupt included, the temporary file is removed and
    the target is left untouched. An ``OSError`` (a full disk, a folder that
    became read-only) comes out as :class:`OutputWriteError` naming the target.
    """
    target = Path(path)
    suffix = full_suffix(target)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{suffix}",
                                        dir=target.parent or ".")
    except OSError as exc:
        raise OutputWriteError(f"cannot write {target}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise OutputWriteError(f"cannot write {target}: {exc.strerror or exc}; nothing was left behind") from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
