"""Throughput and memory of the two medhdiff denoisers on the current device.

    python benchmarks/bench_model.py            # ~1-2 min on a laptop CPU
    python benchmarks/bench_model.py --quick    # fewer iterations
    python benchmarks/bench_model.py --sampler-step 192 224 192   # also time one stage-2 step

For each stage: inference voxels/s (no grad), training steps/s (AdamW + MSE,
batch 4) and peak memory (``torch.cuda.max_memory_allocated`` per stage on
CUDA; the process's peak RSS, ``ru_maxrss``, on CPU - cumulative).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

from medhdiff.diffusion import (
    GlobalDenoiser,
    HierarchicalSampler,
    ModelConfig,
    NetworkConfig,
    NoiseSchedule,
    PatchDenoiser,
    patch_coordinates,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fn: Callable[[], None], device: torch.device, warmup: int, min_iters: int, min_time: float, max_iters: int):
    for _ in range(warmup):
        fn()
    _sync(device)
    n, start = 0, time.perf_counter()
    while n < min_iters or (time.perf_counter() - start < min_time and n < max_iters):
        fn()
        n += 1
        if device.type == "cuda" and n % 5 == 0:
            _sync(device)
    _sync(device)
    return n, time.perf_counter() - start


def _peak_mem(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # bytes there
        kib //= 1024
    return f"{kib / 1024:,.0f} MiB (RSS)"


def bench_stage(name, model, make_inputs, batch, shape, device, args, amp_dtype):
    """Returns a row: stage, input shape, params, inference vox/s, train steps/s, peak memory."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    vox = batch * math.prod(shape)
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else torch.autocast("cpu", enabled=False)
    )

    model.eval()
    inputs = make_inputs(batch)

    def infer():
        with torch.no_grad(), autocast:
            model(*inputs[0], **inputs[1])

    n, dt = _timeit(infer, device, args.warmup, args.iters, args.min_time, 1000)
    infer_vps = vox * n / dt

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randn(batch, 1, *shape, device=device)

    def train():
        opt.zero_grad(set_to_none=True)
        with autocast:
            out = model(*inputs[0], **inputs[1])
        loss = F.mse_loss(out.float(), target)
        loss.backward()
        opt.step()

    n, dt = _timeit(train, device, args.warmup, args.iters, args.min_time, 1000)
    train_sps = n / dt
    row = (
        name,
        f"{batch}x{'x'.join(map(str, shape))}",
        f"{n_params / 1e6:.2f} M",
        f"{infer_vps / 1e6:,.2f} M",
        f"{train_sps:,.2f}",
        _peak_mem(device),
    )
    model.to("cpu")
    del opt
    return row


def bench_sampler_step(cfg, patch_model, shape, device, batch, amp_dtype, args):
    """Seconds for one stage-2 step (all windows + blending + DDIM) on a full volume kept on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    patch_model = patch_model.to(device).eval()
    sch = NoiseSchedule(cfg.schedule)
    sampler = HierarchicalSampler(sch, cfg, device=device, batch_size=batch, amp_dtype=amp_dtype)
    x = torch.randn(1, 1, *shape)
    cond = torch.randn(1, 1, *shape)
    plan = sampler.make_plan(shape, None, "cpu")
    sampler.model_output(patch_model, x, 500, cond, plan)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    out = sampler.model_output(patch_model, x, 500, cond, plan)
    sch.ddim_step(out, 500, 480, x)
    _sync(device)
    dt = time.perf_counter() - t0
    return (
        f"patch step b{batch}",
        f"1x{'x'.join(map(str, shape))}",
        f"{plan.num_windows} win",
        f"{math.prod(shape) / dt / 1e6:,.2f} M",
        f"{dt:.2f} s/step",
        _peak_mem(device),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--global-size", type=int, nargs=3, default=(48, 56, 48), metavar=("X", "Y", "Z"))
    ap.add_argument("--patch-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--sampler-batch", type=int, nargs="+", default=None, help="windows per call for --sampler-step")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype for the networks")
    ap.add_argument(
        "--sampler-step", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"),
        help="also time one full-volume stage-2 step at this model-space size",
    )
    args = ap.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        args.warmup, args.iters, args.min_time = (2, 5, 1.0) if args.quick else (3, 10, 3.0)
    else:
        args.warmup, args.iters, args.min_time = (1, 1, 0.0) if args.quick else (1, 3, 8.0)

    cfg = ModelConfig(
        global_net=NetworkConfig(num_class_embeds=3),
        patch_size=(args.patch_size,) * 3,
    )
    torch.manual_seed(0)
    gnet = GlobalDenoiser(cfg.global_net)
    pnet = PatchDenoiser(cfg.patch_net)
    gshape = tuple(args.global_size)
    pshape = (args.patch_size,) * 3

    def global_inputs(b):
        x = torch.randn(b, 1, *gshape, device=device)
        t = torch.randint(0, 1000, (b,), device=device)
        return (x, t), {"class_labels": torch.zeros(b, dtype=torch.long, device=device)}

    def patch_inputs(b):
        x = torch.randn(b, 1, *pshape, device=device)
        t = torch.randint(0, 1000, (b,), device=device)
        co = patch_coordinates((192, 224, 192), (64, 64, 64), pshape, device=device)[None].expand(b, -1, -1, -1, -1)
        return (x, t), {"cond": torch.randn_like(x), "coords": co}

    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"CPU ({torch.get_num_threads()} threads)"
    rows = [
        bench_stage("global", gnet, global_inputs, 1, gshape, device, args, amp_dtype),
        bench_stage("global", gnet, global_inputs, args.batch, gshape, device, args, amp_dtype),
        bench_stage("patch", pnet, patch_inputs, args.batch, pshape, device, args, amp_dtype),
    ]
    if args.sampler_step:
        for sb in args.sampler_batch or [args.batch]:
            rows.append(bench_sampler_step(cfg, pnet, tuple(args.sampler_step), device, sb, amp_dtype, args))

    title = f"medhdiff model benchmark - {dev_name}, torch {torch.__version__}, amp={args.amp}"
    headers = ("stage", "input", "params", "infer vox/s", "train steps/s", "peak memory")
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in headers:
            table.add_column(h, justify="left" if h in ("stage", "input") else "right")
        for r in rows:
            table.add_row(*r)
        Console().print(table)
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print(title)
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
