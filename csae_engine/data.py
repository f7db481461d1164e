"""Reading embeddings: arrays, memmaps or .npy paths, streamed in batches, checked and L2-normalised."""
import mmap
import os

import numpy as np

__all__ = ["FileMatrix", "as_matrix", "unit_rows", "unit_rows_at", "iter_batches"]


class FileMatrix:
    """A read-only (n, d) matrix in a file, read row by row with pread.

    Unlike a memmap, reading it maps nothing, so a pass over data larger than memory keeps the process small.
    """

    ndim = 2

    def __init__(self, filename: str, offset: int, shape: tuple, dtype):
        self.filename, self.offset = filename, int(offset)
        self.shape, self.dtype = (int(shape[0]), int(shape[1])), np.dtype(dtype)
        self._row_bytes = self.shape[1] * self.dtype.itemsize
        self._fd = os.open(filename, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        if size < self.offset + self.shape[0] * self._row_bytes:
            os.close(self._fd)
            raise ValueError(f"{filename!r} is truncated: {size} bytes, the header promises "
                             f"{self.offset + self.shape[0] * self._row_bytes}")

    @classmethod
    def from_npy(cls, path: str) -> "FileMatrix":
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{path!r} must hold a C-ordered 2-D array, got shape {shape}")
        return cls(path, offset, shape, dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def _read(self, start: int, stop: int) -> np.ndarray:
        nbytes = (stop - start) * self._row_bytes
        buf = os.pread(self._fd, nbytes, self.offset + start * self._row_bytes)
        if len(buf) != nbytes:
            raise ValueError(f"{self.filename!r}: short read, the file changed or is truncated")
        return np.frombuffer(buf, self.dtype).reshape(stop - start, self.shape[1])

    def __getitem__(self, key) -> np.ndarray:
        n = self.shape[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise IndexError("FileMatrix slices take no step")
            return self._read(start, max(start, stop))
        rows = np.asarray(key, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        out = np.empty((rows.size, self.shape[1]), self.dtype)
        if rows.size:  # one read per run of consecutive rows
            breaks = np.flatnonzero(np.diff(rows) != 1) + 1
            for a, b in zip(np.r_[0, breaks], np.r_[breaks, rows.size]):
                out[a:b] = self._read(rows[a], rows[a] + b - a)
        return out


def as_matrix(X, name: str = "X") -> np.ndarray:
    """A 2-D floating array view of X (an array, np.memmap or path to a .npy, opened memory-mapped)."""
    if isinstance(X, (str, os.PathLike)):
        path = os.fspath(X)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{name}: no such file {path!r}")
        try:
            X = FileMatrix.from_npy(path)
        except Exception as e:
            raise ValueError(f"{name}: {path!r} is not a readable .npy file ({e})") from e
    elif isinstance(X, np.memmap) and isinstance(X.base, mmap.mmap) and X.flags.c_contiguous and X.ndim == 2:
        X = FileMatrix(X.filename, X.offset, X.shape, X.dtype)  # the whole mapped file: read it without mapping
    elif hasattr(X, "detach") and hasattr(X, "cpu"):  # a torch tensor
        X = X.detach().cpu().numpy()
    elif not isinstance(X, (np.ndarray, FileMatrix)):
        X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has 0 rows")
    if X.shape[1] == 0:
        raise ValueError(f"{name} has 0 columns")
    if not np.issubdtype(X.dtype, np.floating):
        raise ValueError(f"{name} must hold floats (float16/32/64), got dtype {X.dtype}")
    return X


def unit_rows(batch: np.ndarray, first_row: int = 0, name: str = "X") -> np.ndarray:
    """float32 copy of batch with unit-norm rows; a NaN, Inf or zero row is an error naming its row in the whole array."""
    out = np.array(batch, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1)
    if not (np.isfinite(norms).all() and (norms > 0).all()):  # only then look for the row: NaN/Inf make the norm so
        finite = np.isfinite(out).all(axis=1)
        if not finite.all():
            raise ValueError(f"{name} row {first_row + int(np.argmin(finite))} holds NaN or Inf")
        if not (norms > 0).all():
            raise ValueError(f"{name} row {first_row + int(np.argmin(norms > 0))} is all zeros and has no direction")
    out /= norms[:, None]
    return out


def unit_rows_at(X, rows: np.ndarray, name: str = "X") -> np.ndarray:
    """float32 unit-norm copies of the rows ``rows`` of X, read in one go.

    Parameters
    ----------
    X : np.ndarray or FileMatrix
        (n, d) matrix, as from as_matrix.
    rows : np.ndarray
        Row numbers into X (sorted reads fastest from files).
    name : str
        What errors call X.

    Returns
    -------
    np.ndarray
        (len(rows), d) float32 with unit-norm rows.

    Raises
    ------
    ValueError
        A row holds NaN or Inf or is all zeros; the message gives its row number in X, not in ``rows``.
    """
    try:
        return unit_rows(X[rows], 0, name)
    except ValueError:  # name the row in X, not in the selection
        for r in rows:
            unit_rows(X[r:r + 1], int(r), name)
        raise


def iter_batches(X: np.ndarray, batch_size: int, name: str = "X"):
    """(start, unit-row float32 batch) over X in order; reads one batch at a time from a memmap."""
    for start in range(0, X.shape[0], batch_size):
        yield start, unit_rows(X[start:start + batch_size], start, name)
