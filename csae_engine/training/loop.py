"""The training loop: Adam on the multi-k reconstruction loss, batches sampled from data that may not fit in memory;
optionally AuxK for dead latents and an InfoNCE term on query/document pairs."""
import math
import numbers
import queue
import threading
import time

import numpy as np
import torch

from .data import as_matrix, unit_rows
from .model import CompresSAE, _autocast, new_model

# Defaults measured on 117,659 MiniLM items (d=384) with h=4096, k=32 on a 2-core CPU; see README.
DEFAULT_STEPS = 5000
DEFAULT_BATCH = 1024
DEFAULT_LR = 3e-3
DEFAULT_AUX_WEIGHT = 1 / 32   # Gao et al. 2024 and CSR
DEFAULT_TAU = 0.2             # CSR's temperature for retrieval pairs
DEFAULT_PAIRS_WEIGHT = 0.1    # CSR's contrastive coefficient for text retrieval


def train(X, h: int = 4096, k: int = 32, *, variant: str | None = None, steps: int = DEFAULT_STEPS,
          batch_size: int = DEFAULT_BATCH, lr: float = DEFAULT_LR, warmup: float = 0.02, decay: float = 0.2,
          seed: int = 0, device: str | torch.device | None = None, dead_window: int | None = None,
          progress: bool | None = None, model: CompresSAE | None = None, init: str = "transpose",
          tied: bool | None = None, aux_k: int | None = None, aux_weight: float = DEFAULT_AUX_WEIGHT,
          pairs=None, pairs_weight: float = DEFAULT_PAIRS_WEIGHT, tau: float = DEFAULT_TAU,
          pairs_batch: int | None = None) -> CompresSAE:
    """Train a CompresSAE or CSR model on the rows of X (array, np.memmap or path to a .npy; never loaded whole).

    variant: "compressae" (signed codes, the default) or "csr" (non-negative codes, pre-bias, tied decoder unless
    tied=False). init: "transpose" (encoder = decoder transpose) or "random". A fresh CSR starts its pre-bias at the
    mean of up to 16,384 sampled items.

    Batches are drawn without replacement, epoch after epoch, in a seeded order. The learning rate warms up
    linearly over the first ``warmup`` share of steps and decays linearly to zero over the last ``decay`` share.
    A latent is dead when it has fired (non-zero value in an item's top k) for no item over the last
    ``dead_window`` samples (default: one pass over the data, at most 1M samples).

    AuxK (Gao et al. 2024): each step, the ``aux_k`` strongest dead latents of each item reconstruct the detached
    residual, weighted by ``aux_weight``. aux_k=None: ``model.default_aux_k`` (max(2k, d/2), at most h) for CSR,
    0 (off) for CompresSAE; 0 turns it off.

    pairs=(queries, docs), two (m, d) arrays whose row i go together: each step also draws ``pairs_batch`` pairs
    (default min(batch_size, m)) and adds ``pairs_weight`` times InfoNCE over in-batch negatives on the normalised
    codes at temperature ``tau``. The pairs are read into memory.

    Pass ``model`` to continue training it. Returns the model; ``model.history`` holds rows of step, loss,
    cos_k, dead share, seconds (and aux, ncl when on).
    """
    X = as_matrix(X)
    n, d = X.shape
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not (isinstance(tau, numbers.Real) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    for name, v in (("aux_weight", aux_weight), ("pairs_weight", pairs_weight)):
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    if model is None:
        model = new_model("compressae" if variant is None else variant, d, h, k, seed=seed, init=init, tied=tied)
        if model.variant == "csr":
            with torch.no_grad():
                model.b_pre.copy_(torch.from_numpy(_sample_mean(X, seed)))
    else:
        if variant is not None and variant != model.variant:
            raise ValueError(f"variant={variant!r} but the given model is {model.variant!r}")
        if model.d != d:
            raise ValueError(f"X has d={d} columns, the model expects d={model.d}")
    if aux_k is None:
        aux_k = model.default_aux_k if model.variant == "csr" else 0
    if not isinstance(aux_k, (int, np.integer)) or isinstance(aux_k, bool) or not 0 <= aux_k <= model.h:
        raise ValueError(f"aux_k must be an int in 0..h={model.h} (0 turns AuxK off), got {aux_k!r}")
    if pairs is not None:
        pairs = check_pairs(pairs, model.d)
        pairs_batch = batch_size if pairs_batch is None else pairs_batch
        if not isinstance(pairs_batch, (int, np.integer)) or isinstance(pairs_batch, bool) or pairs_batch < 2:
            raise ValueError(f"pairs_batch must be an int >= 2 (in-batch negatives), got {pairs_batch!r}")
        pairs_batch = min(pairs_batch, len(pairs[0]))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).train()
    batch_size = min(batch_size, n)
    dead_window = dead_window or min(n, 1_000_000)

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, warmup, decay))
    last_fired = torch.zeros(model.h, dtype=torch.int64, device=device)
    pair_iter = None
    if pairs is not None:
        pair_iter = _pair_batches(*(torch.from_numpy(p).to(device) for p in pairs), pairs_batch, seed)
    seen = 0
    model.history = []
    from tqdm.auto import tqdm
    bar = tqdm(total=steps, desc="train", unit="step", disable=None if progress is None else not progress)
    t0 = time.perf_counter()
    for step, x in enumerate(_batches(X, batch_size, steps, seed)):
        x = x.to(device, non_blocking=True)
        dead = (seen - last_fired) >= dead_window if seen >= dead_window else None
        with _autocast(device):
            loss, cos_k, top, top_values, x_hat = model._forward(x)
            terms = {}
            if aux_k and dead is not None and dead.any():
                terms["aux"] = model.aux_loss(x, x_hat, dead, aux_k)
                loss = loss + aux_weight * terms["aux"]
            if pair_iter is not None:
                terms["ncl"] = model.contrastive_loss(*next(pair_iter), tau)
                loss = loss + pairs_weight * terms["ncl"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.remove_radial_grad_()
        opt.step()
        schedule.step()
        model.normalize_decoder_()

        seen += len(x)
        last_fired[top[top_values.detach() != 0]] = seen
        if step % 10 == 0 or step == steps - 1:
            dead_share = dead.float().mean().item() if dead is not None else 0.0
            row = {"step": step + 1, "loss": loss.item(), "cos_k": cos_k.mean().item(), "dead": dead_share,
                   "seconds": time.perf_counter() - t0}
            row.update({name: t.item() for name, t in terms.items()})
            model.history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", cos=f"{row['cos_k']:.3f}", dead=f"{dead_share:.1%}")
        bar.update(1)
    bar.close()
    model.eval()
    return model


def check_pairs(pairs, d: int):
    """(queries, docs) as unit-row float32 arrays of one shape (m, d), m >= 2; anything else is a ValueError."""
    if not isinstance(pairs, (tuple, list)) or len(pairs) != 2:
        raise ValueError("pairs must be a (queries, docs) pair of (m, d) arrays")
    Q, D = (as_matrix(p, name) for p, name in zip(pairs, ("pairs queries", "pairs docs")))
    if Q.shape != D.shape:
        raise ValueError(f"pairs queries and docs must have the same shape, got {Q.shape} and {D.shape}")
    if Q.shape[1] != d:
        raise ValueError(f"pairs have d={Q.shape[1]} columns, the model expects d={d}")
    if Q.shape[0] < 2:
        raise ValueError("pairs need at least 2 rows (the other pairs of a batch are the negatives)")
    return unit_rows(Q[:], 0, "pairs queries"), unit_rows(D[:], 0, "pairs docs")


def _pair_batches(Q: torch.Tensor, D: torch.Tensor, size: int, seed: int):
    """Endless seeded batches of pair rows, without replacement within an epoch."""
    gen = torch.Generator().manual_seed(seed + 1)
    perm = torch.empty(0, dtype=torch.int64)
    while True:
        if len(perm) < size:
            perm = torch.cat([perm, torch.randperm(len(Q), generator=gen)])
        take, perm = perm[:size].to(Q.device), perm[size:]
        yield Q[take], D[take]


def _sample_mean(X, seed: int, rows: int = 16384) -> np.ndarray:
    """Mean of up to `rows` seeded random unit-normalised rows of X."""
    take = np.sort(np.random.default_rng([seed, 2]).choice(X.shape[0], min(rows, X.shape[0]), replace=False))
    try:
        return unit_rows(X[take], 0, "X").mean(axis=0)
    except ValueError:  # name the row in X, not in the sample
        for r in take:
            unit_rows(X[r:r + 1], int(r), "X")
        raise


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
