"""The training loop: Adam on the multi-k reconstruction loss, batches sampled from data that may not fit in memory;
optionally AuxK for dead latents and an InfoNCE term on query/document pairs."""
import dataclasses
import time

import numpy as np
import torch

from ..data import as_matrix, unit_rows, unit_rows_at
from ..models import TopKSAE, new_model
from ..utils import progress_bar
from .batches import fits_resident, resident_batches, resident_items, streamed_batches
from .config import TrainConfig
from .step import lr_factor, train_step

__all__ = ["train", "check_pairs"]


def train(X, h: int | None = None, k: int | None = None, *, model: TopKSAE | None = None, pairs=None,
          progress: bool | None = None, config: TrainConfig | None = None, **options) -> TopKSAE:
    """Train a CompresSAE or CSR model on the rows of X (array, np.memmap or path to a .npy).

    The options are TrainConfig's fields (h, k, variant, steps, batch_size, lr, warmup, decay, seed, device,
    dead_window, init, tied, aux_k, aux_weight, pairs_weight, tau, pairs_batch, resident): pass a ``config``,
    keywords, or both (keywords override the config's fields).

    Items that fit (``resident``) are checked and normalised once into device memory and sampled there; larger X
    is streamed, a few threads reading and normalising runs of rows into host buffers (batches.py). On CUDA the
    step takes the dense path (TopKSAE.step_path), Adam is fused, and nothing in a step waits for the GPU: the
    dead-latent mask stays on the device and the history rows are read one logging interval late.

    variant: "compressae" (signed codes, the default) or "csr" (non-negative codes, pre-bias, tied decoder unless
    tied=False). init: "transpose" (encoder = decoder transpose) or "random". A fresh CSR starts its pre-bias at the
    mean of up to 16,384 sampled items.

    Batches are drawn without replacement, epoch after epoch, in a seeded order (resident: of rows; streamed: of
    chunks of rows). The learning rate warms up linearly over the first ``warmup`` share of steps and decays
    linearly to zero over the last ``decay`` share.
    A latent is dead when it has fired (non-zero value in an item's top k) for no item over the last
    ``dead_window`` samples (default: one pass over the data, at most 1M samples).

    AuxK (Gao et al. 2024): each step, the ``aux_k`` strongest dead latents of each item reconstruct the detached
    residual, weighted by ``aux_weight``. aux_k=None: ``model.default_aux_k`` (max(2k, d/2), at most h) for CSR,
    0 (off) for CompresSAE; 0 turns it off.

    Parameters
    ----------
    X : array_like, np.memmap or path
        (n, d) embeddings; rows are L2-normalised as they are read (once, when resident).
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
    cuda = device.type == "cuda"
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=cuda)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, cfg.warmup, cfg.decay))
    last_fired = torch.zeros(model.h, dtype=torch.int64, device=device)
    if pairs is not None:
        pair_iter = _pair_batches(*(torch.from_numpy(p).to(device) for p in pairs), pairs_batch, cfg.seed)
    resident = cfg.resident if cfg.resident is not None else fits_resident(n, d, device)
    if resident:
        batches = resident_batches(resident_items(X, device), batch_size, steps, cfg.seed)
    else:
        batches = streamed_batches(X, batch_size, steps, cfg.seed, device)
    seen = 0
    model.history = []
    bar = progress_bar(total=steps, desc="train", unit="step", progress=progress, items=steps * batch_size)
    log = _History(model.history, bar, cuda)
    for step, x in enumerate(batches):
        dead = (seen - last_fired) >= dead_window if seen >= dead_window else None
        out = train_step(model, opt, x, dead=dead, aux_k=aux_k, aux_weight=cfg.aux_weight,
                         pairs=None if pair_iter is None else next(pair_iter), pairs_weight=cfg.pairs_weight,
                         tau=cfg.tau)
        schedule.step()

        seen += len(x)
        fired = torch.where(out.values != 0, seen, 0)  # a sync-free last_fired[fired latents] = seen
        last_fired.scatter_reduce_(0, out.indices.reshape(-1), fired.reshape(-1), reduce="amax")
        if step % 10 == 0 or step == steps - 1:
            log.add(step + 1, out, dead)
        bar.update(1)
    log.flush()
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
    """Endless seeded batches of pair rows, without replacement within an epoch, drawn on their device."""
    gen = torch.Generator(device=Q.device).manual_seed(seed + 1)
    perm = torch.empty(0, dtype=torch.int64, device=Q.device)
    while True:
        if len(perm) < size:
            perm = torch.cat([perm, torch.randperm(len(Q), generator=gen, device=Q.device)])
        take, perm = perm[:size], perm[size:]
        yield Q[take], D[take]


def _sample_mean(X, seed: int, rows: int = 16384) -> np.ndarray:
    """Mean of up to `rows` seeded random unit-normalised rows of X."""
    take = np.sort(np.random.default_rng([seed, 2]).choice(X.shape[0], min(rows, X.shape[0]), replace=False))
    return unit_rows_at(X, take, "X").mean(axis=0)



class _History:
    """model.history's rows, each read from the device one logging interval after it was recorded (CUDA), so the
    loop never waits for the GPU; on the CPU at once. "seconds" is the time the row was read."""

    def __init__(self, rows: list, bar, lagged: bool):
        self.rows, self.bar, self.lagged = rows, bar, lagged
        self.pending = []
        self.t0 = time.perf_counter()

    def add(self, step: int, out, dead) -> None:
        names = ["loss", "cos_k", "dead", *out.terms]
        dead_share = dead.float().mean() if dead is not None else out.loss.new_zeros(())
        values = torch.stack([out.loss.float(), out.cos_k.mean(), dead_share, *(t.float() for t in out.terms.values())])
        if self.lagged:
            values = values.to("cpu", non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        else:
            done = None
        self.pending.append((step, names, values, done))
        while len(self.pending) > (1 if self.lagged else 0):
            self.read()

    def read(self) -> None:
        step, names, values, done = self.pending.pop(0)
        if done is not None:
            done.synchronize()
        read = dict(zip(names, values.tolist()))
        row = {"step": step, "loss": read.pop("loss"), "cos_k": read.pop("cos_k"), "dead": read.pop("dead"),
               "seconds": time.perf_counter() - self.t0, **read}
        self.rows.append(row)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", cos=f"{row['cos_k']:.3f}", dead=f"{row['dead']:.1%}")

    def flush(self) -> None:
        while self.pending:
            self.read()
