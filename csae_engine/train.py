"""The training loop: Adam on the multi-k cosine loss, batches sampled from data that may not fit in memory."""
import queue
import threading
import time

import numpy as np
import torch

from .data import as_matrix, unit_rows
from .model import CompresSAE, _autocast

# Defaults measured on 117,659 MiniLM items (d=384) with h=4096, k=32 on a 2-core CPU; see README.
DEFAULT_STEPS = 5000
DEFAULT_BATCH = 1024
DEFAULT_LR = 3e-3


def train(X, h: int = 4096, k: int = 32, *, steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH,
          lr: float = DEFAULT_LR, warmup: float = 0.02, decay: float = 0.2, seed: int = 0,
          device: str | torch.device | None = None, dead_window: int | None = None,
          progress: bool | None = None, model: CompresSAE | None = None) -> CompresSAE:
    """Train a CompresSAE on the rows of X (array, np.memmap or path to a .npy; never loaded whole).

    Batches are drawn without replacement, epoch after epoch, in a seeded order. The learning rate warms up
    linearly over the first ``warmup`` share of steps and decays linearly to zero over the last ``decay`` share.
    A latent is dead when it has been in no item's top k over the last ``dead_window`` samples
    (default: one pass over the data, at most 1M samples). Pass ``model`` to continue training it.
    Returns the model; ``model.history`` holds (step, loss, cos_k, dead share) rows.
    """
    X = as_matrix(X)
    n, d = X.shape
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if model is None:
        model = CompresSAE(d, h, k, seed=seed)
    elif model.d != d:
        raise ValueError(f"X has d={d} columns, the model expects d={model.d}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).train()
    batch_size = min(batch_size, n)
    dead_window = dead_window or min(n, 1_000_000)

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, warmup, decay))
    last_fired = torch.zeros(model.h, dtype=torch.int64, device=device)
    seen = 0
    model.history = []
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, desc="train", unit="step", disable=None if progress is None else not progress)
    t0 = time.perf_counter()
    for step, x in enumerate(_batches(X, batch_size, steps, seed)):
        x = x.to(device, non_blocking=True)
        with _autocast(device):
            loss, cos_k, top = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.remove_radial_grad_()
        opt.step()
        schedule.step()
        model.normalize_decoder_()

        seen += len(x)
        last_fired[top.reshape(-1)] = seen
        if step % 10 == 0 or step == steps - 1:
            dead = ((seen - last_fired) >= dead_window).float().mean().item() if seen >= dead_window else 0.0
            row = {"step": step + 1, "loss": loss.item(), "cos_k": cos_k.mean().item(), "dead": dead,
                   "seconds": time.perf_counter() - t0}
            model.history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", cos=f"{row['cos_k']:.3f}", dead=f"{dead:.1%}")
        bar.update(1)
    bar.close()
    model.eval()
    return model


def _lr_factor(step: int, steps: int, warmup: float, decay: float) -> float:
    warm = max(1, int(warmup * steps))
    if step < warm:
        return (step + 1) / warm
    tail = int(decay * steps)
    if tail and step >= steps - tail:
        return max(0.0, (steps - step) / tail)
    return 1.0


def _batches(X: np.ndarray, batch_size: int, steps: int, seed: int):
    """Unit-norm float32 batches, each read (sorted by row, for memmaps) in a background thread."""
    rng = np.random.default_rng(seed)
    n = X.shape[0]

    def rows():
        perm = np.empty(0, np.int64)
        for _ in range(steps):
            if len(perm) < batch_size:
                perm = np.concatenate([perm, rng.permutation(n)])
            take, perm = np.sort(perm[:batch_size]), perm[batch_size:]
            yield take

    def load(take):
        try:
            return unit_rows(X[take], 0, "X")
        except ValueError:  # name the row in X, not in the batch
            for r in take:
                unit_rows(X[r:r + 1], int(r), "X")
            raise

    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce():
        try:
            for take in rows():
                if stop.is_set():
                    return
                q.put(torch.from_numpy(load(take)))
        except BaseException as e:  # handed to the consumer
            q.put(e)
        q.put(None)

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(0.05)
