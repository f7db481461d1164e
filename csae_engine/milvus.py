"""Serving codes from Milvus: export an index's codes to a collection, and search it with queries our model encodes.

    export_milvus("index/", "codes.db", "items")             # milvus-lite: a local .db, no server
    export_milvus(engine, "http://host:19530", "items")      # a Milvus server or cluster: the same calls
    ids, scores = search_milvus("codes.db", "items", model, Q, top_k=10)

The collection holds one row per item: the user id (INT64 primary key) and the code as a SPARSE_FLOAT_VECTOR,
exactly the unit-norm values sparse mode scores, under a SPARSE_INVERTED_INDEX with metric IP, so Milvus's
scores are our sparse mode's cosines. Milvus takes only non-negative sparse weights: signed (CompresSAE) codes are
refused, train the non-negative CSR variant for Milvus. Needs ``pip install pymilvus milvus-lite``.
"""
import contextlib
import os

import numpy as np

from .index.query import query_codes, query_rows
from .models import model_hash
from .utils import positive_int, progress_bar

__all__ = ["MilvusError", "export_milvus", "search_milvus"]

ID_FIELD = "id"
CODE_FIELD = "code"
INDEX_TYPE = "SPARSE_INVERTED_INDEX"
METRIC = "IP"
MAX_TOP_K = 16384  # Milvus's limit on a search's limit
# collection properties recording what was exported: search refuses a model that did not make the codes
PROP_MODEL = "csae.model_sha256"
PROP_H = "csae.h"
PROP_K = "csae.k"
_PARTIAL = "_csae_partial"  # suffix of the collection an export writes before renaming it into place

SIGNED_MESSAGE = ("this model's codes are signed (CompresSAE), and Milvus sparse vectors take only non-negative "
                  "weights: train the non-negative CSR variant instead (ce.train(X, variant=\"csr\") or "
                  "`csae train --variant csr`) and build the index with it")


class MilvusError(ValueError):
    """Milvus refused a call (bad uri, missing collection, server error); the message is Milvus's."""


def _pymilvus():
    try:
        import pymilvus
    except ImportError as e:
        raise ImportError("Milvus support needs pymilvus (and milvus-lite for a local .db file): "
                          "pip install pymilvus milvus-lite  (or pip install 'csae-engine[milvus]')") from e
    return pymilvus


def _connect(uri, **kwargs):
    """A MilvusClient for uri: a local path ending in .db (milvus-lite) or http(s)://host:port of a server."""
    pymilvus = _pymilvus()
    uri = os.fspath(uri)
    try:
        return pymilvus.MilvusClient(uri=uri, **kwargs)
    except pymilvus.exceptions.MilvusException as e:
        raise MilvusError(f"cannot open Milvus at {uri!r}: {e.message}") from e
    except ModuleNotFoundError as e:  # a local .db without milvus-lite
        raise ImportError(f"a local Milvus file ({uri!r}) needs milvus-lite: pip install milvus-lite") from e


@contextlib.contextmanager
def _milvus_errors(what: str):
    """Turns pymilvus's exceptions raised inside into a MilvusError naming what was being done."""
    try:
        yield
    except _pymilvus().exceptions.MilvusException as e:
        raise MilvusError(f"Milvus failed to {what}: {e.message}") from e


def _check_unsigned(model) -> None:
    if model.signed:
        raise ValueError(SIGNED_MESSAGE)


def export_milvus(engine_or_index_path, uri, collection: str, *, batch_size: int = 5000,
                  progress: bool | None = None, overwrite: bool = False, verify: bool = True, **client_kwargs) -> int:
    """Write an index's codes to the Milvus collection ``collection`` at ``uri``; returns the rows written.

    engine_or_index_path: an Engine, or an index directory from ``Engine.save`` / ``csae build``.
    uri: a local file ending in .db (milvus-lite, embedded) or a server's http://host:19530; client_kwargs
    (token=..., db_name=...) go to pymilvus.MilvusClient.
    The rows are the user ids (INT64 primary key) and the codes as sparse mode scores them (unit-norm, float32).
    Rows go in batches of batch_size into a staging collection that is renamed into place once complete, so a
    failed export leaves any existing collection as it was. An existing collection is refused unless overwrite.
    progress: a progress bar (default: for 200,000 items or more). verify: checksum an index directory on load.
    """
    from .engine import Engine
    if isinstance(engine_or_index_path, Engine):
        engine = engine_or_index_path
    else:
        engine = Engine.load(engine_or_index_path, verify=verify)
    positive_int(batch_size, "batch_size")
    _check_unsigned(engine.model)
    n, h = len(engine), engine.config["h"]
    if n == 0:
        raise ValueError("the engine is empty: nothing to export")
    client = _connect(uri, **client_kwargs)
    try:
        with _milvus_errors(f"check for collection {collection!r}"):
            exists = client.has_collection(collection)
        if exists and not overwrite:
            raise FileExistsError(f"Milvus collection {collection!r} already exists at {os.fspath(uri)!r}; "
                                  "pass overwrite=True (--overwrite) to replace it")
        staging = collection + _PARTIAL
        with _milvus_errors(f"create collection {staging!r}"):
            if client.has_collection(staging):  # left by an export that died
                client.drop_collection(staging)
            pymilvus = _pymilvus()
            schema = client.create_schema(auto_id=False, enable_dynamic_field=False,
                                          description=f"csae-engine codes, h={h}, k={engine.config['k']}")
            schema.add_field(ID_FIELD, pymilvus.DataType.INT64, is_primary=True, description="user ids")
            schema.add_field(CODE_FIELD, pymilvus.DataType.SPARSE_FLOAT_VECTOR, description="unit-norm codes")
            index = client.prepare_index_params()
            index.add_index(field_name=CODE_FIELD, index_type=INDEX_TYPE, metric_type=METRIC)
            client.create_collection(staging, schema=schema, index_params=index,
                                     properties={PROP_MODEL: model_hash(engine.model), PROP_H: str(h),
                                                 PROP_K: str(engine.config["k"])})
        try:
            written = _insert(client, staging, engine, n, batch_size, progress)
            with _milvus_errors(f"flush collection {staging!r}"):
                client.flush(staging)
            with _milvus_errors(f"replace collection {collection!r}"):
                if exists:
                    client.drop_collection(collection)
                client.rename_collection(staging, collection)
        except BaseException:
            with contextlib.suppress(_pymilvus().exceptions.MilvusException):  # keep the first error
                client.drop_collection(staging)
            raise
        with _milvus_errors(f"load collection {collection!r}"):
            client.load_collection(collection)
        return written
    finally:
        client.close()


def _insert(client, collection: str, engine, n: int, batch_size: int, progress) -> int:
    written = 0
    with progress_bar(total=n, desc="export milvus", unit="item", progress=progress) as bar:
        for ids, block in engine.iter_codes(batch_size):
            block = block.copy()
            block.eliminate_zeros()  # a CSR code may hold ReLU zeros; they score nothing
            if block.nnz and block.data.min() < 0:
                raise ValueError(SIGNED_MESSAGE)
            ptr, cols, vals = block.indptr, block.indices.tolist(), block.data.tolist()
            rows = [{ID_FIELD: i, CODE_FIELD: dict(zip(cols[ptr[r]:ptr[r + 1]], vals[ptr[r]:ptr[r + 1]]))}
                    for r, i in enumerate(np.asarray(ids, np.int64).tolist())]
            with _milvus_errors(f"insert into {collection!r}"):
                client.insert(collection, rows)
            written += len(rows)
            bar.update(len(rows))
    if written != n:
        raise RuntimeError(f"the engine yielded {written} codes, expected {n}")
    return written


def search_milvus(uri, collection: str, model, Q, top_k: int = 10, *, batch_size: int = 256,
                  **client_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """The top_k items for each query row of Q from a collection written by export_milvus, like
    ``Engine.search(Q, top_k, mode="sparse")``: returns (ids (nq, top_k) int64, scores (nq, top_k) float32).

    model: the model that encoded the collection's codes (a TopKSAE, or an Engine whose model it is); a
    different model is refused. Milvus returns only items that share a latent with the query (score > 0): where
    fewer than top_k do, the row ends with id -1 and score -inf, as the engine pads (the engine itself fills those
    places with score-0 items).
    """
    from .engine import Engine
    if isinstance(model, Engine):
        model = model.model
    if not isinstance(top_k, (int, np.integer)) or not 0 < top_k <= MAX_TOP_K:
        raise ValueError(f"top_k must be an int in 1..{MAX_TOP_K} (Milvus's limit), got {top_k!r}")
    positive_int(batch_size, "batch_size")
    _check_unsigned(model)
    q_idx, q_val = query_codes(model, query_rows(model, Q), model.k)
    client = _connect(uri, **client_kwargs)
    try:
        with _milvus_errors(f"open collection {collection!r}"):
            if not client.has_collection(collection):
                raise MilvusError(f"no collection {collection!r} at {os.fspath(uri)!r}")
            props = client.describe_collection(collection).get("properties") or {}
        _check_model(props, model, collection)
        with _milvus_errors(f"load collection {collection!r}"):
            state = client.get_load_state(collection)["state"]
            if getattr(state, "name", str(state)) != "Loaded":  # milvus-lite loads per process
                client.load_collection(collection)
        nq = len(q_idx)
        ids = np.full((nq, top_k), -1, np.int64)
        scores = np.full((nq, top_k), -np.inf, np.float32)
        live = np.flatnonzero((q_val > 0).any(axis=1))  # an all-zero query matches nothing, and Milvus refuses it
        for s in range(0, len(live), batch_size):
            rows = live[s:s + batch_size]
            data = [{int(i): float(v) for i, v in zip(q_idx[r], q_val[r]) if v > 0} for r in rows]
            with _milvus_errors(f"search collection {collection!r}"):
                result = client.search(collection, data=data, anns_field=CODE_FIELD, limit=int(top_k),
                                       search_params={"metric_type": METRIC, "params": {"drop_ratio_search": 0.0}},
                                       output_fields=[ID_FIELD])
            for r, hits in zip(rows, result):
                for j, hit in enumerate(hits):
                    ids[r, j] = hit["id"]
                    scores[r, j] = hit["distance"]
        return ids, scores
    finally:
        client.close()


def _check_model(props: dict, model, collection: str) -> None:
    if PROP_H in props and int(props[PROP_H]) != model.h:
        raise ValueError(f"collection {collection!r} holds codes with h={props[PROP_H]}, the model has h={model.h}: "
                         "search with the model the index was built with")
    if PROP_MODEL in props and props[PROP_MODEL] != model_hash(model):
        raise ValueError(f"collection {collection!r} was exported from a different model than the one given "
                         "(model checksum mismatch): search with the model the index was built with")
