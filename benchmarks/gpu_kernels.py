"""GPU kernels (issue 4): fused encode vs torch, one training step per backend, and a 500-step streamed run.

    python -m benchmarks.gpu_kernels                      # d=768, h=4096, k=32 (4k=128), batch 100,000, 500 steps
    python -m benchmarks.gpu_kernels --batch-size 50000 --steps 100 --name quick
    TRITON_INTERPRET=1 python -m benchmarks.gpu_kernels --tiny --out /tmp/bench   # CPU smoke run, tiny shapes

Data are synthetic unit Gaussian rows (d columns); the encoder runs in bf16 (the inputs are cast, or autocast
does it during training). Times are medians of triton.testing.do_bench on CUDA, of a few perf_counter runs on CPU.
The issue's targets are checked in the markdown: fused encode >= 3x torch, training step >= 5x torch and
>= 5M samples/s, and a lower training peak memory than the torch path.
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import csae_engine as ce
from csae_engine import kernels
from csae_engine.training import train_step

from . import common

TARGET_ENCODE_SPEEDUP = 3.0
TARGET_TRAIN_SPEEDUP = 5.0
TARGET_TRAIN_SAMPLES_PER_S = 5e6


def bench_encode(a, device, cuda):
    """items/s of the fused Triton encode and of torch's addmm + topk (the reference), bf16 (fp32 on CPU)."""
    dt = torch.bfloat16 if cuda else torch.float32
    x = common.unit_rows_on(a.batch_size, a.d, device, 1, dt)
    model = ce.CompresSAE(a.d, a.h, a.k, seed=0)
    W, b = model.W_enc.detach().to(device, dt), (torch.randn(a.h) * 0.01).to(device, dt)
    rows = []
    for k in sorted({a.k, min(4 * a.k, a.h)}):
        res = {}
        with torch.no_grad():
            for backend in ("torch", "triton"):
                fn = lambda: kernels.topk_encode(x, W, b, k, backend=backend)  # noqa: E731
                ms = common.bench_ms(fn, cuda, a.reps)
                res[backend] = {"ms": ms, "items_per_s": a.batch_size / ms * 1e3,
                        "peak_mib": common.peak_mib(fn, cuda)}
            ti, tv = kernels.topk_encode(x, W, b, k, backend="torch")
            fi, fv = kernels.topk_encode(x, W, b, k, backend="triton")
            same = (ti.sort(1).values == fi.sort(1).values).all(1).float().mean().item()
            err = (tv.float().abs() - fv.float().abs()).abs().max().item()
        speedup = res["torch"]["ms"] / res["triton"]["ms"]
        met = speedup >= TARGET_ENCODE_SPEEDUP if cuda else None
        rows.append({"measure": f"encode k={k}", "unit": "items/s", "torch": res["torch"]["items_per_s"],
                     "triton": res["triton"]["items_per_s"], "ratio": speedup,
                     "torch_peak_mib": res["torch"]["peak_mib"], "triton_peak_mib": res["triton"]["peak_mib"],
                     "rows_same_selection": same, "max_abs_value_diff": err,
                     "target": f">= {TARGET_ENCODE_SPEEDUP:g}x", "met": met})
    return rows


def bench_train_step(a, device, cuda):
    """samples/s and peak memory of one full training step (csae_engine.training.train_step: forward under the
    device's autocast, backward, radial-gradient removal, Adam, renormalise; AuxK and pairs off) per backend."""
    x = common.unit_rows_on(a.batch_size, a.d, device, 2)
    res = {}
    for backend in ("torch", "triton"):
        model = ce.CompresSAE(a.d, a.h, a.k, seed=0).to(device)
        model.backend, model.step_path = backend, "sparse"  # the kernels' path (gpu_train.py times the dense one)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        fn = lambda: train_step(model, opt, x)  # noqa: E731
        ms = common.bench_ms(fn, cuda, a.reps)
        res[backend] = {"ms": ms, "samples_per_s": a.batch_size / ms * 1e3, "peak_mib": common.peak_mib(fn, cuda)}
        del model, opt
        if cuda:
            torch.cuda.empty_cache()
    speedup = res["torch"]["ms"] / res["triton"]["ms"]
    sps = res["triton"]["samples_per_s"]
    rows = [{"measure": "training step", "unit": "samples/s", "torch": res["torch"]["samples_per_s"], "triton": sps,
             "ratio": speedup, "target": f">= {TARGET_TRAIN_SPEEDUP:g}x and >= {TARGET_TRAIN_SAMPLES_PER_S:.0e}/s",
             "met": (speedup >= TARGET_TRAIN_SPEEDUP and sps >= TARGET_TRAIN_SAMPLES_PER_S) if cuda else None}]
    tp, rp = res["torch"]["peak_mib"], res["triton"]["peak_mib"]
    rows.append({"measure": "training step peak memory", "unit": "MiB", "torch": tp, "triton": rp,
                 "ratio": (tp / rp) if tp and rp else None, "target": "lower than torch",
                 "met": (rp < tp) if tp and rp else None})
    return rows


def _host_items(a, cuda):
    """(items, d) float16 unit rows in host memory, pinned on CUDA machines."""
    X = torch.empty(a.items, a.d, dtype=torch.float16, pin_memory=cuda)
    chunk = 1 << 16
    for s in range(0, a.items, chunk):
        n = min(chunk, a.items - s)
        X[s:s + n] = common.unit_rows_on(n, a.d, "cuda" if cuda else "cpu", 100 + s).to(torch.float16).cpu()
    return X


def _stream_loop(model, X, a, device, cuda):
    """a.steps training steps on random contiguous slices of host X; the next batch is copied on a side stream."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, X.shape[0] - a.batch_size + 1, a.steps)
    copy = torch.cuda.Stream() if cuda else None

    def fetch(s):
        with torch.cuda.stream(copy) if cuda else contextlib.nullcontext():
            return X[s:s + a.batch_size].to(device, non_blocking=True)

    nxt = fetch(starts[0])
    for step in range(a.steps):
        if cuda:
            torch.cuda.current_stream().wait_stream(copy)
        x = nxt
        if cuda:
            x.record_stream(torch.cuda.current_stream())
        if step + 1 < a.steps:
            nxt = fetch(starts[step + 1])
        loss = train_step(model, opt, x.float()).loss
    return loss.item()


def bench_stream(a, device, cuda):
    """Wall time of a.steps Triton-backend steps streaming batches from host memory: a pinned-memory loop with
    copies on a side stream, and csae_engine.train (numpy gather + normalise on a host thread)."""
    X = _host_items(a, cuda)
    rows = []
    for how in ("pinned loop", "csae_engine.train"):
        model = ce.CompresSAE(a.d, a.h, a.k, seed=0).to(device)
        model.backend, model.step_path = "triton", "sparse"
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        if how == "pinned loop":
            loss = _stream_loop(model, X, a, device, cuda)
        else:
            ce.train(X.numpy(), model=model, steps=a.steps, batch_size=a.batch_size, lr=1e-3, device=device,
                     progress=False)
            loss = model.history[-1]["loss"]
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        rows.append({"measure": f"{a.steps} streamed steps, {how}", "unit": "s", "triton": seconds,
                     "samples_per_s": a.steps * a.batch_size / seconds, "final_loss": loss})
    return rows


def _markdown(rows, a, device) -> str:
    cols = ["measure", "unit", "torch", "triton", "ratio", "target", "met"]
    main = [r for r in rows if "target" in r]
    extra = [r for r in rows if "target" not in r]
    md = [f"device: {device}; d={a.d}, h={a.h}, k={a.k} (4k={min(4 * a.k, a.h)}), batch {a.batch_size}", "",
          "ratio: triton's speedup over torch (for memory: torch's peak / triton's peak).", "",
          common.md_table(main, cols)]
    enc = [r for r in rows if r["measure"].startswith("encode")]
    if enc:
        md += ["", "Encode agreement and memory:", "",
               common.md_table(enc, ["measure", "rows_same_selection", "max_abs_value_diff", "torch_peak_mib",
                                     "triton_peak_mib"])]
    if extra:
        md += ["", "Streaming from host memory (Triton backend):", "",
               common.md_table(extra, ["measure", "triton", "samples_per_s", "final_loss"])]
    met = [r["met"] for r in main if r["met"] is not None]
    md += ["", f"Targets met: {sum(met)} of {len(met)}." if met else
           "Targets: not judged (no CUDA; interpreter timings say nothing about GPU speed)."]
    return "\n".join(md)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--h", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=100_000)
    p.add_argument("--steps", type=int, default=500, help="steps of the streamed run")
    p.add_argument("--items", type=int, default=1_000_000, help="rows held in host memory for the streamed run")
    p.add_argument("--reps", type=int, default=10, help="timed runs per measurement on CPU (CUDA: do_bench, 1 s)")
    p.add_argument("--skip", choices=["encode", "train", "stream"], action="append", default=[],
                   help="leave a part out (repeatable)")
    p.add_argument("--tiny", action="store_true",
                   help="B=32, d=16, h=64, k=2, 2 steps, 64 items, 1 rep: a smoke run, e.g. under TRITON_INTERPRET=1")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default=None, help="result file name (default from the settings)")
    a = p.parse_args(argv)
    if a.tiny:
        a.batch_size, a.d, a.h, a.k, a.steps, a.items, a.reps = 32, 16, 64, 2, 2, 64, 1
    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("needs a CUDA device, or TRITON_INTERPRET=1 to run the kernels on the CPU (slow: use --tiny)")
    a.items = max(a.items, a.batch_size)
    device = torch.device("cuda" if cuda else "cpu")
    command = "python -m benchmarks.gpu_kernels " + " ".join(argv if argv is not None else sys.argv[1:])
    cfg = {k: v for k, v in vars(a).items() if k not in ("out", "name")}

    rows = []
    if "encode" not in a.skip:
        rows += bench_encode(a, device, cuda)
    if "train" not in a.skip:
        rows += bench_train_step(a, device, cuda)
    if "stream" not in a.skip:
        rows += bench_stream(a, device, cuda)
    md = _markdown(rows, a, torch.cuda.get_device_name() if cuda else "cpu (Triton interpreter)")
    print(md)
    name = a.name or f"gpu_kernels_d{a.d}_h{a.h}_k{a.k}_b{a.batch_size}"
    path = common.write_result(name, cfg, rows, command, md, results_dir=a.out or common.RESULTS)
    print("wrote", path)
    return path


if __name__ == "__main__":
    main()
