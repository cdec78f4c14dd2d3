"""Provenance: the ``medhdiff_run.json`` record written next to a job's outputs."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from medhdiff.io.atomic import atomic_path


def run_record(command: str, args: dict[str, Any], model_sha256: str | None, cases: list[dict[str, Any]],
               started: float) -> dict[str, Any]:
    import torch

    from medhdiff import __version__

    return {
        "tool": "medhdiff",
        "version": __version__,
        "command": command,
        "argv": sys.argv,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()},
        "model_sha256": model_sha256,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 2),
        "cases": cases,
    }


def write_run_record(folder: str | Path, name: str, record: dict[str, Any]) -> Path:
    """Write ``folder/name`` (``medhdiff_run.json``, or one file per shard) atomically."""
    path = Path(folder) / name
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str))
    return path
