"""The training loop: Adam on the multi-k reconstruction loss, batches sampled from data that may not fit in memory;
optionally AuxK for dead latents and an InfoNCE term on query/document pairs."""
import dataclasses
import queue
import threading
import time

import numpy as np
import torch

from ..data import as_matrix, unit_rows, unit_rows_at
from ..models import TopKSAE, new_model
from ..utils import progress_bar
from .config import TrainConfig
from .step import lr_factor, train_step

__all__ = ["train", "check_pairs"]


def train(X, h: int | None = None, k: int | None = None, *, model: TopKSAE | None = None, pairs=None,
          progress: bool | None = None, config: TrainConfig | None = None, **options) -> TopKSAE:
    """Train a CompresSAE or CSR model on the rows of X (array, np.memmap or path to a .npy; never loaded whole).

    The options are TrainConfig's fields (h, k, variant, steps, batch_size, lr, warmup, decay, seed, device,
    dead_window, init, tied, aux_k, aux_weight, pairs_weight, tau, pairs_batch): pass a ``config``, keywords, or
    both (keywords override the config's fields).

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

    Parameters
    ----------
    X : array_like, np.memmap or path
        (n, d) embeddings; rows are L2-normalised as they are read.
    h, k : int, optional
        Latents and non-zeros per code of a fresh model (default: the config's, 4096 and 32).
    model : TopKSAE, optional
        A model to continue training (h, k, init and tied are then unused).
    pairs : tuple of array_like, optional
        (queries, docs), two (m, d) arrays whose row i go together: each step also draws ``pairs_batch`` pairs
        (default min(batch_size, m)) and adds ``pairs_weight`` times InfoNCE over in-batch negatives on the
        normalised codes at temperature ``tau``. The pairs are read into memory.
    progress : bool, optional
        A progress bar with loss, cosine and dead share; None shows it for 200,000 samples (steps x batch) or more.
    config : TrainConfig, optional
        The options; default TrainConfig().
    **options
        TrainConfig fields, overriding config's.

    Returns
    -------
    TopKSAE
        The model, in eval mode; ``model.history`` holds rows of step, loss, cos_k, dead share, seconds (and aux,
        ncl when on).

    Raises
    ------
    TypeError
        An unknown option, or an option of the wrong type (see TrainConfig).
    ValueError
        An option out of range, a given model of another variant or d, bad pairs, or a bad row in X (by number).
    FileNotFoundError
        X or a pairs array is a path that does not exist.
    """
    cfg = _config(config, h, k, options)
    X = as_matrix(X)
    n, d = X.shape
    if model is None:
        variant = "compressae" if cfg.variant is None else cfg.variant
        model = new_model(variant, d, cfg.h, cfg.k, seed=cfg.seed, init=cfg.init, tied=cfg.tied)
        if model.variant == "csr":
            with torch.no_grad():
                model.b_pre.copy_(torch.from_numpy(_sample_mean(X, cfg.seed)))
    else:
        if not isinstance(model, TopKSAE):
            raise TypeError(f"model must be a TopKSAE (CompresSAE or CSRAutoencoder), got {type(model).__name__}")
        if cfg.variant is not None and cfg.variant != model.variant:
            raise ValueError(f"variant={cfg.variant!r} but the given model is {model.variant!r}")
        if model.d != d:
            raise ValueError(f"X has d={d} columns, the model expects d={model.d}")
    aux_k = cfg.aux_k
    if aux_k is None:
        aux_k = model.default_aux_k if model.variant == "csr" else 0
    if not 0 <= aux_k <= model.h:
        raise ValueError(f"aux_k must be an int in 0..h={model.h} (0 turns AuxK off), got {aux_k!r}")
    pair_iter = None
    if pairs is not None:
        pairs = check_pairs(pairs, model.d)
        pairs_batch = min(cfg.batch_size if cfg.pairs_batch is None else cfg.pairs_batch, len(pairs[0]))
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).train()
    steps = cfg.steps
    batch_size = min(cfg.batch_size, n)
    dead_window = cfg.dead_window or min(n, 1_000_000)

    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, cfg.warmup, cfg.decay))
    last_fired = torch.zeros(model.h, dtype=torch.int64, device=device)
    if pairs is not None:
        pair_iter = _pair_batches(*(torch.from_numpy(p).to(device) for p in pairs), pairs_batch, cfg.seed)
    seen = 0
    model.history = []
    bar = progress_bar(total=steps, desc="train", unit="step", progress=progress, items=steps * batch_size)
    t0 = time.perf_counter()
    for step, x in enumerate(_batches(X, batch_size, steps, cfg.seed)):
        x = x.to(device, non_blocking=True)
        dead = (seen - last_fired) >= dead_window if seen >= dead_window else None
        out = train_step(model, opt, x, dead=dead, aux_k=aux_k, aux_weight=cfg.aux_weight,
                         pairs=None if pair_iter is None else next(pair_iter), pairs_weight=cfg.pairs_weight,
                         tau=cfg.tau)
        schedule.step()

        seen += len(x)
        last_fired[out.indices[out.values != 0]] = seen
        if step % 10 == 0 or step == steps - 1:
            dead_share = dead.float().mean().item() if dead is not None else 0.0
            row = {"step": step + 1, "loss": out.loss.item(), "cos_k": out.cos_k.mean().item(), "dead": dead_share,
                   "seconds": time.perf_counter() - t0}
            row.update({name: t.item() for name, t in out.terms.items()})
            model.history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", cos=f"{row['cos_k']:.3f}", dead=f"{dead_share:.1%}")
        bar.update(1)
    bar.close()
    model.eval()
    return model


def _config(config: TrainConfig | None, h: int | None, k: int | None, options: dict) -> TrainConfig:
    """config (default TrainConfig()) with h, k and the options that were given put in; checks them all."""
    if config is None:
        config = TrainConfig()
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in options:
        if name not in known:
            raise TypeError(f"train() got an unknown option {name!r} (the options are TrainConfig's fields)")
    given = {**options, **({"h": h} if h is not None else {}), **({"k": k} if k is not None else {})}
    return dataclasses.replace(config, **given) if given else config


def check_pairs(pairs, d: int) -> tuple[np.ndarray, np.ndarray]:
    """The training pairs, read into memory and checked.

    Parameters
    ----------
    pairs : tuple
        (queries, docs): two (m, d) arrays (or .npy paths) whose row i go together.
    d : int
        The model's embedding dimension.

    Returns
    -------
    tuple of np.ndarray
        queries and docs as float32 (m, d) with unit-norm rows.

    Raises
    ------
    ValueError
        Not a pair, shapes that differ, another d, fewer than 2 rows, or a NaN, Inf or zero row (by number).
    """
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
    return unit_rows_at(X, take, "X").mean(axis=0)


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

    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce():
        try:
            for take in rows():
                if stop.is_set():
                    return
                q.put(torch.from_numpy(unit_rows_at(X, take, "X")))
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
