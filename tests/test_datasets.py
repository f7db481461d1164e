import numpy as np
import pytest

from csae_engine import datasets
from conftest import unit


def test_folder_layout_and_bare_npy(tmp_path):
    rng = np.random.default_rng(0)
    docs, queries = unit(rng, 50, 8, np.float16), unit(rng, 4, 8)
    np.save(tmp_path / "docs.npy", docs)
    np.save(tmp_path / "queries.npy", queries)
    (tmp_path / "docs.txt").write_text("\n".join(f"doc {i}" for i in range(50)) + "\n")
    ds = datasets.load(tmp_path)
    assert ds.docs.shape == (50, 8) and ds.queries.shape == (4, 8) and ds.gt is None
    assert ds.doc_texts[7] == "doc 7" and ds.query_texts is None
    bare = datasets.load(tmp_path / "docs.npy")
    assert bare.queries.shape == (50, 8)  # every item, when there are fewer than 1,000
    np.testing.assert_array_equal(np.sort(bare.queries, axis=0), np.sort(docs, axis=0))


def test_missing_docs_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no docs.npy"):
        datasets.load(tmp_path)


def test_shared_dataset_is_found(wordnet):
    path = datasets.wordnet_minilm(search=(wordnet["path"].parents[1],))
    assert path == wordnet["path"]
