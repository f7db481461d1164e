"""Shared by the benchmark scripts: data paths, a seeded synthetic set from real vectors, and result files."""
import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import numpy as np

from csae_engine import datasets

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_WORDNET = datasets.shared_dataset()


def perturbed(base: np.ndarray, n: int, out: Path, noise: float = 0.05, seed: int = 0, chunk: int = 65536) -> Path:
    """Write an (n, d) float16 .npy of real rows plus Gaussian noise (of norm about `noise`), renormalised; chunked,
    so n may exceed RAM. The row of base each item copies goes to out's name with .bases.npy for .npy."""
    rng = np.random.default_rng(seed)
    d = base.shape[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    X = np.lib.format.open_memmap(out, mode="w+", dtype=np.float16, shape=(n, d))
    bases = np.empty(n, np.int64)
    for start in range(0, n, chunk):
        rows = np.sort(rng.integers(0, len(base), min(chunk, n - start)))
        x = np.asarray(base[rows], np.float32) + rng.standard_normal((len(rows), d), np.float32) * noise / np.sqrt(d)
        X[start:start + len(rows)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        bases[start:start + len(rows)] = rows
    X.flush()
    del X
    np.save(out.with_name(out.name.removesuffix(".npy") + ".bases.npy"), bases)
    return out


def interpolated(base: np.ndarray, n: int, out: Path, partners: int = 10, noise: float = 0.1, seed: int = 0,
                 chunk: int = 65536) -> Path:
    """Write an (n, d) float16 .npy of points on the segments between real rows and their near neighbours: item =
    unit(b + t (b' - b) + noise), b a random real row, b' one of its `partners` nearest real rows (HNSW), t uniform
    in [0, 1]. Unlike perturbed copies, the true neighbours of a query mostly lie on distinct segments. The segment
    of each item, (n, 2) int32 (b, b'), goes to out's name with .bases.npy for .npy."""
    import faiss
    rng = np.random.default_rng(seed)
    d = base.shape[1]
    B = np.ascontiguousarray(base, np.float32)
    B /= np.linalg.norm(B, axis=1, keepdims=True)
    graph = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    graph.add(B)
    near = graph.search(B, partners + 1)[1][:, 1:]  # the row itself first
    near = np.where(near < 0, np.arange(len(B))[:, None], near)
    out.parent.mkdir(parents=True, exist_ok=True)
    X = np.lib.format.open_memmap(out, mode="w+", dtype=np.float16, shape=(n, d))
    segments = np.empty((n, 2), np.int32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        rows = np.sort(rng.integers(0, len(B), m))
        other = near[rows, rng.integers(0, partners, m)]
        t = rng.random((m, 1), np.float32)
        x = B[rows] + t * (B[other] - B[rows]) + rng.standard_normal((m, d), np.float32) * noise / np.sqrt(d)
        X[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        segments[start:start + m] = np.stack([rows, other], axis=1)
    X.flush()
    del X
    np.save(out.with_name(out.name.removesuffix(".npy") + ".bases.npy"), segments)
    return out


def exact_top(X: np.ndarray, Q: np.ndarray, k: int, chunk: int | None = None) -> np.ndarray:
    """(len(Q), k) rows of X with the largest inner products with the rows of Q (unit rows), read chunk by chunk, so
    X may be a memmap larger than memory; ties to the smaller row. Default chunk: 2^26 scores at a time."""
    Q = np.ascontiguousarray(Q, np.float32)
    chunk = chunk or max(k + 1, (1 << 26) // max(1, len(Q)))
    best_s = np.full((len(Q), k), -np.inf, np.float32)
    best_i = np.zeros((len(Q), k), np.int64)
    for start in range(0, len(X), chunk):
        x = np.asarray(X[start:start + chunk], np.float32)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        s = Q @ x.T
        part = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k] if s.shape[1] > k else \
            np.broadcast_to(np.arange(s.shape[1]), (len(Q), s.shape[1]))
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        order = np.lexsort((cand_i, -cand_s), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def peak_rss_mib() -> float:
    """This process's peak RSS since exec (Linux VmHWM; getrusage would also count the parent's pages at fork)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sparse_scorer(engine):
    """The C++ scorer alone on the engine's first segment: fn(q_idx, q_val, top_k, threads) -> (rows, scores)."""
    index = engine.segments[0].index

    def score(q_idx, q_val, top_k, threads):
        return index.search(np.ascontiguousarray(q_idx), np.ascontiguousarray(q_val), top_k, threads)
    return score


def machine() -> dict:
    import torch
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line for line in f if line.startswith("model name"))
        info["cpu"] = model.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    return info


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_result(name: str, config: dict, rows: list, command: str, markdown: str, results_dir: Path = RESULTS) -> Path:
    """<results_dir>/<name>.json and .md (default benchmarks/results/), stamped with commit, machine and date."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
              "machine": machine(), "command": command, "config": config, "results": rows}
    (results_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    header = (f"# {name}\n\n`{command}`\n\ncommit {record['commit']}, {record['date']}, "
              f"{record['machine']['cpu']} ({record['machine']['cores']} cores), torch {record['machine']['torch']}"
              + (f", triton {record['machine']['triton']}" if "triton" in record["machine"] else "") + "\n\n")
    (results_dir / f"{name}.md").write_text(header + markdown + "\n")
    return results_dir / f"{name}.json"


def md_table(rows: list, columns: list) -> str:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def bench_ms(fn, cuda: bool, reps: int) -> float:
    """Median milliseconds per call of fn (after one untimed call, which also compiles): triton's do_bench on CUDA,
    ``reps`` perf_counter runs elsewhere."""
    import statistics

    import torch
    fn()
    if cuda:
        import triton.testing
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, warmup=100, rep=1000, return_mode="median"))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def peak_mib(fn, cuda: bool):
    """Peak CUDA memory allocated during one call of fn, in MiB (None on CPU, without calling fn)."""
    if not cuda:
        return None
    import torch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def unit_rows_on(n: int, d: int, device, seed: int, dtype=None):
    """(n, d) seeded Gaussian rows of unit norm, made on device (float32 unless dtype)."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator(device=device).manual_seed(seed)
    x = F.normalize(torch.randn(n, d, device=device, generator=g), dim=1)
    return x if dtype is None else x.to(dtype)
