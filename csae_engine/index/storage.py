"""The on-disk index: a directory holding manifest.json, the model file and one folder of .npy arrays per segment.

    index/manifest.json         format, version, config, the model's hashes, per segment: folder, n, files + sha256
    index/model.csae            the model (safetensors)
    index/seg-00000/*.npy       the arrays of segment.ARRAYS, and live.npy when the segment has deletes
    index/residual.npy          the residual quantizer's codebook, when the forward rows hold residual codes

Writes go to a temporary directory beside the target, renamed into place at the end (atomic); files of unchanged
segments mapped from disk are hard-linked, not copied.
"""
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..residual import ResidualQuantizer
from .segment import ARRAYS, CLUSTER_ARRAYS, FORWARD_ARRAYS, Segment

__all__ = ["INDEX_FORMAT_VERSION", "CONFIG_KEYS", "IndexWriter", "read_manifest", "load_segments", "load_residual",
           "sha256"]

INDEX_FORMAT_VERSION = 7  # 3: latent-major posting lists; 4: packed forward codes; 5: index_coding;
# 6: residual codes, encoder postings; 7: clustered segments
READS_VERSIONS = (3, 4, 5, 6, 7)
FORMAT_NAME = "csae-engine index"
MODEL_FILE = "model.csae"
RESIDUAL_FILE = "residual.npy"
CONFIG_KEYS = ("h", "k", "window_bits", "prune", "value_dtype", "shard_size", "forward", "index_terms", "value_bits",
               "forward_bias", "index_coding", "residual_m", "postings", "support", "cluster_size")


class IndexWriter:
    """Writes an index directory segment by segment into a temporary directory beside ``path``; commit renames it
    into place (replacing an older index there), abort removes it.

    Raises
    ------
    FileExistsError
        path exists and is not a csae index (never replaced).
    """

    def __init__(self, path, config: dict):
        path = Path(path)
        if path.exists() and not (path / "manifest.json").exists():
            raise FileExistsError(f"{path} exists and is not a csae index; refusing to replace it")
        self.path, self.config, self.entries = path, config, []
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else "."))

    def add(self, seg: Segment) -> Segment:
        """Write seg as the next segment folder; returns it mapped from its new files."""
        name = f"seg-{len(self.entries):05d}"
        folder = self.tmp / name
        folder.mkdir()
        files = {}
        for array_name, arr in seg.arrays.items():
            target = folder / f"{array_name}.npy"
            source = seg.files.get(array_name)
            if not (source and _try_link(source, target)):
                np.save(target, arr, allow_pickle=False)
                source = (None, sha256(target), None)
            files[f"{array_name}.npy"] = source[1]
        if seg.live is not None:
            np.save(folder / "live.npy", seg.live, allow_pickle=False)
            files["live.npy"] = sha256(folder / "live.npy")
        self.entries.append({"dir": name, "n": seg.n, "first_id": seg.first_id, "files": files,
                             "dtypes": {a: str(arr.dtype) for a, arr in seg.arrays.items()}})
        return _load_segment(self.tmp, self.entries[-1], self.config, mmap=True, verify=False, final_dir=self.path)

    def commit(self, model, model_sha256: str, segments: list, has_delta: bool = False,
               residual: ResidualQuantizer | None = None) -> None:
        """Write the model, the residual codebook (if any) and the manifest, then move the directory into place."""
        model.save(self.tmp / MODEL_FILE)
        extra = {}
        if residual is not None:
            np.save(self.tmp / RESIDUAL_FILE, residual.codebook, allow_pickle=False)
            extra["residual_sha256"] = sha256(self.tmp / RESIDUAL_FILE)
        manifest = {"format": FORMAT_NAME, "format_version": INDEX_FORMAT_VERSION, **self.config,
                    "n": sum(seg.n_live for seg in segments), "model_sha256": model_sha256,
                    "model_file_sha256": sha256(self.tmp / MODEL_FILE), "has_delta": has_delta, **extra,
                    "segments": self.entries}
        (self.tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old)  # mapped files stay readable until unmapped
        else:
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def read_manifest(path, verify: bool) -> tuple[dict, Path]:
    """The manifest of the index directory at path, checked, and the path of its model file.

    Raises
    ------
    FileNotFoundError
        No directory at path.
    ValueError
        Not a csae index, a damaged manifest or model file, or another format version ("rebuild").
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no index directory at {path}")
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is not a csae index: no manifest.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}/manifest.json is damaged: {e}") from e
    if manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a csae index (manifest format {manifest.get('format')!r})")
    if manifest.get("format_version") not in READS_VERSIONS:
        raise ValueError(f"{path}: index format version {manifest.get('format_version')}, this build reads "
                         f"{READS_VERSIONS}; rebuild the index with this version")
    if manifest["format_version"] == 3:  # plain forward codes; its posting lists hold every term
        manifest = {**manifest, "forward": "plain", "index_terms": manifest["k"], "value_bits": None,
                    "forward_bias": None}
    if manifest["format_version"] <= 4:  # packed forward codes were fixed-width
        manifest = {**manifest, "index_coding": "packed" if manifest["forward"] == "packed" else None}
    if manifest["format_version"] <= 5:  # no residual codes; posting lists made from the forward codes
        manifest = {**manifest, "residual_m": 0, "postings": "forward",
                    "support": "encoder" if manifest["forward"] == "packed" else None}
    if manifest["format_version"] <= 6:
        manifest = {**manifest, "cluster_size": None}
    _check_file(path / MODEL_FILE, manifest["model_file_sha256"], verify)
    return manifest, path / MODEL_FILE


def load_segments(path, manifest: dict, forward_width: int, mmap: bool, verify: bool) -> tuple:
    """The segments listed in the manifest of the index at path; forward codes must have forward_width columns."""
    config = {key: manifest[key] for key in CONFIG_KEYS}
    segments = tuple(_load_segment(Path(path), entry, config, mmap, verify) for entry in manifest["segments"])
    for entry, seg in zip(manifest["segments"], segments):
        if seg.index.forward_width != forward_width:
            raise ValueError(f"{Path(path) / entry['dir']}: forward codes have {seg.index.forward_width} columns, "
                             f"the model and config need {forward_width}")
    if not segments:
        raise ValueError(f"{path}: the manifest lists no segments")
    return segments


def load_residual(path, manifest: dict, d: int, verify: bool) -> ResidualQuantizer | None:
    """The residual quantizer of the index at path (None when its rows hold no residual codes)."""
    if not manifest["residual_m"]:
        return None
    file = Path(path) / RESIDUAL_FILE
    codebook = _load_array(file, manifest.get("residual_sha256"), "float32", False, verify)
    if codebook.ndim != 3 or codebook.shape[0] != manifest["residual_m"]:
        raise ValueError(f"{file} has shape {codebook.shape}, the manifest says {manifest['residual_m']} subspaces")
    try:
        return ResidualQuantizer(codebook, d)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from e


def _load_segment(root: Path, entry: dict, config: dict, mmap: bool, verify: bool,
                  final_dir: Path | None = None) -> Segment:
    """A segment from its folder under root. final_dir: where root will be renamed to (for the file links)."""
    folder = root / entry["dir"]
    arrays, files = {}, {}
    for name, dtype in entry["dtypes"].items():
        if name not in ARRAYS:
            raise ValueError(f"{folder}: unknown array {name!r} in the manifest")
        arrays[name] = _load_array(folder / f"{name}.npy", entry["files"].get(f"{name}.npy"), dtype, mmap, verify)
        files[name] = ((final_dir or root) / entry["dir"] / f"{name}.npy", entry["files"][f"{name}.npy"],
                       os.stat(folder / f"{name}.npy").st_ino)
    missing = set(ARRAYS) - {"ids"} - set(FORWARD_ARRAYS) - set(CLUSTER_ARRAYS) - set(arrays)
    if set(CLUSTER_ARRAYS) & set(arrays):
        missing |= set(CLUSTER_ARRAYS) - set(arrays)
    forward = {name for name in FORWARD_ARRAYS if name in arrays}
    if forward not in ({"fwd_indices", "fwd_values"}, {"fwd_packed"}):
        missing |= {"fwd_packed"} if config["forward"] == "packed" else {"fwd_indices", "fwd_values"} - forward
    if missing:
        raise ValueError(f"{folder}: the manifest lists no {sorted(missing)}")
    live = None
    if "live.npy" in entry["files"]:
        live = np.array(_load_array(folder / "live.npy", entry["files"]["live.npy"], "uint8", False, verify))
    try:
        return Segment(arrays, config, entry["first_id"], live, files if mmap else None)
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from e


def _load_array(path: Path, digest, dtype: str, mmap: bool, verify: bool) -> np.ndarray:
    if digest is None:
        raise ValueError(f"{path}: no checksum in the manifest")
    _check_file(path, digest, verify)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path} is damaged or truncated ({e})") from e
    if str(arr.dtype) != dtype:
        raise ValueError(f"{path} has dtype {arr.dtype}, expected {dtype}")
    return arr


def _check_file(path: Path, digest: str, verify: bool) -> None:
    """ValueError if the file at path is missing or, with verify, its SHA-256 is not digest."""
    if not path.exists():
        raise ValueError(f"{path} is missing")
    if verify and sha256(path) != digest:
        raise ValueError(f"{path} is corrupted (checksum mismatch)")


def _try_link(source: tuple, target: Path) -> bool:
    """Hard-link the file a segment array is mapped from, if it is still that very file."""
    path, _, inode = source
    try:
        if os.stat(path).st_ino != inode:
            return False
        os.link(path, target)
        return True
    except OSError:
        return False


def sha256(path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
