"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a folder ``ckpt/`` holding ``model.safetensors``,
``ema.safetensors``, ``optimizer.safetensors`` (AdamW moments, flattened) and
``state.json`` (step, optimiser hyper-parameters, RNG states, data position).
It is written to ``ckpt.tmp-*/`` and renamed into place, so a kill at any
moment leaves either the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return _contiguous(tensors), {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> dict[str, Any]:
    return {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": _np_state_to_json(np.random.get_state()),
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def _np_state_to_json(st) -> list:
    return [st[0], st[1].tolist(), int(st[2]), int(st[3]), float(st[4])]


def set_rng_state(st: dict[str, Any]) -> None:
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(st["torch"], dtype=torch.uint8))
    if st.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in st["cuda"]])


def save_checkpoint(folder: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    """Write a complete checkpoint atomically into ``folder`` (replacing an older one)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # left by a save that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        save_file(_contiguous(model.state_dict()), str(tmp / "model.safetensors"))
        save_file(_contiguous(ema.state_dict()), str(tmp / "ema.safetensors"))
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        full_state = dict(state)
        full_state["optimizer"] = opt_meta
        full_state["rng"] = rng_state()
        with open(tmp / STATE_FILE, "w") as fh:
            json.dump(full_state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        old = folder.with_name(f".{folder.name}.old")
        if old.exists():
            if folder.exists():
                shutil.rmtree(old)
            else:  # an earlier save died between its two renames: .old is the only complete copy
                os.replace(old, folder)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def find_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint in ``folder`` (or its ``.old`` copy if a rename was interrupted)."""
    folder = Path(folder)
    for cand in (folder, folder.with_name(f".{folder.name}.old")):
        if (cand / STATE_FILE).is_file() and (cand / "model.safetensors").is_file():
            return cand
    return None


def load_checkpoint(folder: str | Path, *, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device | str = "cpu",
                    restore_rng: bool = True) -> dict[str, Any]:
    folder = Path(folder)
    state = json.loads((folder / STATE_FILE).read_text())
    model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
    ema.load_state_dict(load_file(str(folder / "ema.safetensors"), device=str(device)))
    optimizer_from_flat(optimizer, load_file(str(folder / "optimizer.safetensors"), device=str(device)),
                        state["optimizer"])
    if restore_rng:
        set_rng_state(state["rng"])
    return state
