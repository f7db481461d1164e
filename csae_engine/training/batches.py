"""Training batches: the items held on the device when they fit, streamed from host memory or a file otherwise.

- resident_items + resident_batches: the items are read, checked and normalised once, a chunk at a time, into one
  device tensor (bfloat16 on CUDA, where the step runs in bf16 anyway; float32 on the CPU); each batch is an
  index_select by a seeded permutation made on the device. No host work and no copy per step.
- streamed_batches: rows are read in contiguous runs (the order shuffles chunks of rows, not rows), checked and
  normalised by a few threads into persistent (pinned, on CUDA) host buffers, and copied to the device on a side
  stream, so reading, copying and training overlap.

Both draw without replacement within an epoch, epoch after epoch; the orders differ (resident: a permutation of
rows; streamed: of chunks of CHUNK_ROWS rows).
"""
import collections
import concurrent.futures
import os

import numpy as np
import torch

from ..data import unit_rows

__all__ = ["CHUNK_ROWS", "resident_dtype", "fits_resident", "resident_items", "resident_batches", "streamed_batches"]

CHUNK_ROWS = 256  # streamed order: chunks of this many consecutive rows (fewer for small data, see _chunk_rows)
_CPU_RESIDENT_MAX = 4 << 30  # bytes: a CPU copy above this streams (a file may be much larger than memory)


def _available_ram() -> int:
    """Bytes of RAM available to this process (MemAvailable), or free pages where /proc is missing."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def resident_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA (the step's autocast precision), float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def fits_resident(n: int, d: int, device: torch.device) -> bool:
    """Whether n x d normalised items fit the device: a quarter of its free memory (CPU: of the available RAM,
    and at most 4 GiB)."""
    nbytes = n * d * resident_dtype(device).itemsize
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= free // 4
    return nbytes <= min(_available_ram() // 4, _CPU_RESIDENT_MAX)


def resident_items(X, device: torch.device, name: str = "X", chunk: int = 65536) -> torch.Tensor:
    """X's rows checked (NaN, Inf, zero rows are ValueErrors naming the row) and L2-normalised once, on the
    device, in resident_dtype(device)."""
    n, d = X.shape
    out = torch.empty(n, d, dtype=resident_dtype(device), device=device)
    for start in range(0, n, chunk):
        rows = torch.from_numpy(np.require(X[start:start + chunk], requirements=["C", "W"])).to(device).float()
        norms = rows.norm(dim=1)
        good = torch.isfinite(rows).all(dim=1) & (norms > 0)
        if not bool(good.all()):  # one sync per chunk, before training starts
            unit_rows(np.asarray(X[start:start + chunk]), start, name)  # raises, naming the row
        out[start:start + len(rows)] = rows / norms[:, None]
    return out


def resident_batches(items: torch.Tensor, batch_size: int, steps: int, seed: int):
    """steps batches of rows of items (on its device), without replacement within an epoch; no host sync."""
    gen = torch.Generator(device=items.device).manual_seed(seed)
    n = items.shape[0]
    perm = torch.empty(0, dtype=torch.int64, device=items.device)
    for _ in range(steps):
        if len(perm) < batch_size:
            perm = torch.cat([perm, torch.randperm(n, generator=gen, device=items.device)])
        take, perm = perm[:batch_size], perm[batch_size:]
        yield items.index_select(0, take)


def _chunk_rows(n: int) -> int:
    """Rows per shuffled chunk: CHUNK_ROWS, fewer for small data so an epoch still has 1,024 chunks or more."""
    return max(1, min(CHUNK_ROWS, n // 1024))


def _step_runs(n: int, batch_size: int, steps: int, seed: int):
    """For each step, the (start, stop) runs of consecutive rows making its batch: the chunks in a seeded order."""
    rng = np.random.default_rng(seed)
    chunk = _chunk_rows(n)
    pending = collections.deque()
    for _ in range(steps):
        runs, need = [], batch_size
        while need:
            if not pending:
                pending.extend((int(s), min(int(s) + chunk, n)) for s in rng.permutation(-(-n // chunk)) * chunk)
            start, stop = pending.popleft()
            take = min(need, stop - start)
            runs.append((start, start + take))
            need -= take
            if start + take < stop:
                pending.appendleft((start + take, stop))
        yield runs


def streamed_batches(X, batch_size: int, steps: int, seed: int, device: torch.device, workers: int | None = None,
                     name: str = "X"):
    """steps float32 batches of X's rows on device, read and normalised by ``workers`` threads (default half the
    cores, 1..8) into persistent host buffers; on CUDA the buffers are pinned and copied on a side stream.

    A yielded CPU batch is a buffer that is refilled once the caller asks for the batch after next: use it
    within its step.
    """
    n, d = X.shape
    cuda = device.type == "cuda"
    workers = workers or max(1, min(8, (os.cpu_count() or 2) // 2))
    slots = workers + 2
    buffers = [torch.empty(batch_size, d, dtype=torch.float32, pin_memory=cuda) for _ in range(slots)]
    copied = [None] * slots  # CUDA: the event after the copy out of each buffer
    copy_stream = torch.cuda.Stream(device) if cuda else None

    def fill(slot, runs):
        rows = np.concatenate([X[start:stop] for start, stop in runs])
        if copied[slot] is not None:
            copied[slot].synchronize()  # the previous batch in this buffer has reached the device
        out = buffers[slot].numpy()
        out[:] = rows  # a few whole-batch numpy passes, which release the GIL, rather than one per run
        norms = np.linalg.norm(out, axis=1)
        if not (np.isfinite(norms).all() and (norms > 0).all()):
            for start, stop in runs:
                unit_rows(X[start:stop], start, name)  # raises, naming the row
        out /= norms[:, None]
        return slot

    runs = _step_runs(n, batch_size, steps, seed)
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="csae-batches")
    ahead = collections.deque()
    try:
        for step in range(steps):
            while len(ahead) < slots - 1 and step + len(ahead) < steps:
                ahead.append(pool.submit(fill, (step + len(ahead)) % slots, next(runs)))
            slot = ahead.popleft().result()
            if not cuda:
                yield buffers[slot]
                continue
            with torch.cuda.stream(copy_stream):
                x = buffers[slot].to(device, non_blocking=True)
                copied[slot] = torch.cuda.Event()
                copied[slot].record(copy_stream)
            torch.cuda.current_stream(device).wait_stream(copy_stream)
            x.record_stream(torch.cuda.current_stream(device))
            yield x
    finally:
        for future in ahead:
            future.cancel()
        pool.shutdown(wait=True)

