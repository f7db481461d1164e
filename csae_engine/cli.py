"""The `csae` command: train, encode, build, search, export, bench, demo.

Errors: a ValueError, FileNotFoundError or FileExistsError (bad input, missing or existing files) is printed as
``csae <command>: error: ...`` with exit status 2; anything else is a bug and raises.
"""
import argparse
import dataclasses
import os
import sys
import time
import types
import typing

import numpy as np

__all__ = ["main", "build_parser", "add_config_options", "REPORTED_ERRORS"]

# the errors printed as `csae <command>: error: ...` (exit 2); anything else raises
REPORTED_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def _train(a) -> None:
    from .training import TrainConfig, train
    pairs = _load_pairs(a.pairs) if a.pairs else None
    config = TrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)})
    t = time.perf_counter()
    model = train(a.items, pairs=pairs, config=config)
    model.save(a.output)
    last = model.history[-1]
    print(f"trained {model} in {time.perf_counter() - t:.0f} s: loss {last['loss']:.4f}, "
          f"cos@k {last['cos_k']:.4f}, dead latents {last['dead']:.1%}; saved {a.output}")


def _load_pairs(path):
    """(queries, docs) from an .npz holding two same-shape arrays of those names."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such pairs file {path!r}")
    try:
        f = np.load(path, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"pairs file {path!r} is not a readable .npz ({e})") from e
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"pairs file {path!r} holds one array; it needs an .npz with 'queries' and 'docs'")
    with f:
        missing = {"queries", "docs"} - set(f.files)
        if missing:
            raise ValueError(f"pairs file {path!r} lacks arrays {sorted(missing)} (it needs 'queries' and 'docs')")
        return f["queries"], f["docs"]


def _encode(a) -> None:
    from .models import load_model
    model = load_model(a.model, device=a.device or "cpu")
    if a.bytes_per_item is not None:
        codes = model.encode(a.items, k=a.k, bytes_per_item=a.bytes_per_item, value_bits=a.value_bits,
                             index_coding=a.index_coding, support=a.support, progress=True)
    else:
        codes = model.encode(a.items, k=a.k, value_dtype=a.values, progress=True)
    codes.save(a.output)
    print(f"encoded {codes.n} items: k={codes.k}, {codes.bytes_per_item} bytes/item; saved {a.output}")


def _build(a) -> None:
    from .engine import Engine
    from .models import load_model
    model = load_model(a.model, device=a.device or "cpu")
    ids = np.load(a.ids, allow_pickle=False) if a.ids else None
    t = time.perf_counter()
    engine = Engine(model, num_threads=a.threads).build(a.items, ids=ids, bytes_per_item=a.bytes_per_item,
                                                        residual_bytes=a.residual_bytes,
                                                        value_bits=a.value_bits, index_coding=a.index_coding,
                                                        support=a.support,
                                                        index_terms=a.index_terms, cluster_size=a.cluster_size,
                                                        prune=a.prune, shard_size=a.shard_size, directory=a.output,
                                                        progress=True)
    cfg = engine.config
    residual = f" + {cfg['residual_m']} B residual" if cfg["residual_m"] else ""
    forward = f"forward codes: {cfg['k']} entries{residual}, posting lists: {cfg['index_terms']} terms"
    print(f"indexed {len(engine)} items in {time.perf_counter() - t:.1f} s ({forward}), "
          f"{engine.bytes_per_item():.1f} bytes/item; saved {a.output}")


def _search(a) -> None:
    from .engine import Engine
    if a.milvus_uri or a.collection:
        return _search_milvus(a)
    engine = Engine.load(a.index, num_threads=a.threads, verify=not a.no_verify)
    candidates = a.candidates if a.candidates in (None, "all") else int(a.candidates)
    t = time.perf_counter()
    ids, scores = engine.search(a.queries, top_k=a.top_k, mode=a.mode, candidates=candidates,
                                query_terms=a.query_terms, probe=a.probe)
    seconds = time.perf_counter() - t
    np.savez(a.output, ids=ids, scores=scores)
    print(f"searched {len(ids)} queries ({a.mode}) in {seconds:.3f} s, {len(ids) / seconds:.0f} queries/s; "
          f"saved ids and scores to {a.output}")


def _search_milvus(a) -> None:
    """`csae search INDEX Q --milvus-uri URI --collection NAME`: the index directory (or a model file) gives the
    model that encodes the queries; Milvus does the search."""
    from .milvus import search_milvus
    if not (a.milvus_uri and a.collection):
        raise ValueError("searching Milvus needs both --milvus-uri and --collection")
    if a.mode != "sparse" or a.candidates is not None or a.query_terms is not None:
        raise ValueError("a Milvus collection is searched in sparse mode only (no --mode dense, --candidates, "
                         "--query-terms)")
    model = _model_of(a.index, verify=not a.no_verify)
    t = time.perf_counter()
    ids, scores = search_milvus(a.milvus_uri, a.collection, model, a.queries, top_k=a.top_k)
    seconds = time.perf_counter() - t
    np.savez(a.output, ids=ids, scores=scores)
    print(f"searched {len(ids)} queries in Milvus collection {a.collection!r} in {seconds:.3f} s; "
          f"saved ids and scores to {a.output}")


def _model_of(path, verify: bool = True):
    """The model of an index directory, or a model file itself."""
    from .engine import Engine
    from .models import load_model
    if os.path.isdir(path):
        return Engine.load(path, verify=verify).model
    return load_model(path)


def _export_milvus(a) -> None:
    from .milvus import export_milvus
    t = time.perf_counter()
    n = export_milvus(a.index, a.uri, a.collection, batch_size=a.batch_size, overwrite=a.overwrite, progress=True,
                      verify=not a.no_verify)
    print(f"exported {n} codes to Milvus collection {a.collection!r} at {a.uri} "
          f"in {time.perf_counter() - t:.1f} s")


def _demo(a) -> None:
    from .demo import run
    run(a.data, steps=a.steps, h=a.h, k=a.k, bytes_per_item=a.bytes_per_item or None)


def add_compact_options(parser: argparse.ArgumentParser, default_help: str) -> None:
    """--bytes-per-item, --value-bits and --index-coding: compact codes (csae_engine/compact.py)."""
    from .compact import DEFAULT_INDEX_CODING, INDEX_CODINGS
    from .models.encoding import DEFAULT_VALUE_BITS, SUPPORTS
    parser.add_argument("--bytes-per-item", type=int, default=None,
                        help="compact codes of this many bytes per item: as many refitted entries as fit "
                             f"(default: {default_help})")
    parser.add_argument("--value-bits", type=int, default=None,
                        help=f"bits per compact value (default {DEFAULT_VALUE_BITS})")
    parser.add_argument("--support", choices=SUPPORTS, default=None,
                        help="how compact codes choose their latents: encoder (its top k, the default) or pursuit "
                             "(orthogonal matching pursuit: better codes, slower encoding)")
    parser.add_argument("--index-coding", choices=INDEX_CODINGS, default=None,
                        help=f"compact latent indices: packed (fixed width, fastest) or ef (Elias-Fano: more entries "
                             f"per byte, slower to score); default {DEFAULT_INDEX_CODING}")


def add_config_options(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per field of the dataclass config_cls: name ``batch_size`` -> ``--batch-size``, its type, default,
    choices (metadata["choices"]) and help (metadata["help"]); a bool field becomes ``--name/--no-name``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        Gets the flags; each parses into an attribute named as the field.
    config_cls : type
        A dataclass whose fields all have defaults and a metadata["help"] (e.g. TrainConfig).
    """
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        kind = _flag_type(hints[f.name])
        text = f.metadata["help"] + ("" if f.default is None else " (default: %(default)s)")
        if kind is bool:
            parser.add_argument(f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction,
                                default=f.default, help=f.metadata["help"])
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default, help=text,
                                choices=f.metadata.get("choices"))


def _flag_type(hint) -> type:
    """bool, int or float for a field annotated with one of them (or it | None); str for anything else."""
    options = [t for t in typing.get_args(hint) if t is not type(None)] if isinstance(hint, types.UnionType) else [hint]
    return options[0] if options[0] in (bool, int, float) else str


def _command(sub, name: str, summary: str, inputs: tuple, output: str, run) -> argparse.ArgumentParser:
    """A subcommand taking the positional inputs ((name, help) pairs) and a required -o/--output."""
    p = sub.add_parser(name, help=summary)
    for arg, arg_help in inputs:
        p.add_argument(arg, help=arg_help)
    p.add_argument("-o", "--output", required=True, help=output)
    p.set_defaults(run=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The `csae` argument parser; `csae train`'s options come from TrainConfig.

    Returns
    -------
    argparse.ArgumentParser
    """
    from .training import TrainConfig
    p = argparse.ArgumentParser(prog="csae", description="Compress embeddings into k-sparse codes and search them.")
    sub = p.add_subparsers(dest="command", required=True)

    t = _command(sub, "train", "train a CompresSAE or CSR model on an (n, d) .npy of embeddings",
                 (("items", "(n, d) float16/float32 .npy, read memory-mapped"),), "model file to write (safetensors)",
                 _train)
    t.add_argument("--pairs", default=None, help=".npz of (m, d) arrays 'queries' and 'docs': adds the InfoNCE term")
    add_config_options(t, TrainConfig)

    e = _command(sub, "encode", "encode embeddings into sparse codes (.npz)",
                 (("model", "model file from `csae train`"), ("items", "(n, d) .npy of embeddings")),
                 "codes file to write (.npz)", _encode)
    e.add_argument("--k", type=int, default=None, help="non-zeros per code (default: the model's k)")
    e.add_argument("--values", choices=["float16", "float32", "int8", "uint8"], default="float16",
                   help="value type (default float16); int8/uint8 (uint8: csr only) add a float16 scale per item")
    add_compact_options(e, "the model's k entries, float16 values")
    e.add_argument("--device", default=None)

    b = _command(sub, "build", "encode items and write a search index directory",
                 (("model", "model file from `csae train`"), ("items", "(n, d) .npy of embeddings")),
                 "index directory to write", _build)
    b.add_argument("--ids", default=None, help="(n,) int64 .npy of item ids (default 0..n-1)")
    add_compact_options(b, "128 for signed models, with a residual code; csr: the model's k entries, float16")
    b.add_argument("--residual-bytes", type=int, default=None,
                   help="bytes of product-quantised residual per item, within --bytes-per-item (0: none; default "
                        "the budget less max(22, budget / 4) bytes for the sparse code, at most d)")
    b.add_argument("--index-terms", type=int, default=None,
                   help="entries of each code in the posting lists (default: the model's k)")
    b.add_argument("--cluster-size", type=int, default=None,
                   help="cluster each shard into groups of about this many items, for search --probe")
    b.add_argument("--prune", type=float, default=None, help="keep this share of each posting list (approximate)")
    b.add_argument("--shard-size", type=int, default=None,
                   help="items per shard, each encoded and written on its own (default 4,194,304)")
    b.add_argument("--threads", type=int, default=-1)
    b.add_argument("--device", default=None)

    s = _command(sub, "search", "search an index with (nq, d) query embeddings",
                 (("index", "index directory from `csae build`"), ("queries", "(nq, d) .npy of query embeddings")),
                 "results .npz (ids, scores)", _search)
    s.add_argument("--top-k", type=int, default=10)
    s.add_argument("--mode", choices=["sparse", "dense"], default="sparse")
    s.add_argument("--candidates", default=None, help="dense mode: sparse candidates per query, or 'all'")
    s.add_argument("--query-terms", type=int, default=None, help="sparse mode: use only the strongest terms")
    s.add_argument("--probe", type=float, default=None,
                   help="visit only the best clusters, this share of the items (index built with --cluster-size)")
    s.add_argument("--threads", type=int, default=-1)
    s.add_argument("--no-verify", action="store_true", help="skip the checksums when opening the index")
    s.add_argument("--milvus-uri", default=None,
                   help="search this Milvus instead (a local .db or http://host:19530); INDEX (or a model file) "
                        "then only supplies the model")
    s.add_argument("--collection", default=None, help="the Milvus collection from `csae export milvus`")

    x = sub.add_parser("export", help="export an index's codes to another search system")
    xsub = x.add_subparsers(dest="target", required=True)
    xm = xsub.add_parser("milvus", help="write the codes to a Milvus collection (SPARSE_FLOAT_VECTOR, metric IP); "
                                        "CSR (non-negative) codes only")
    xm.add_argument("index", help="index directory from `csae build`")
    xm.add_argument("--uri", required=True, help="a local .db file (milvus-lite) or a server, http://host:19530")
    xm.add_argument("--collection", required=True, help="collection to create")
    xm.add_argument("--batch-size", type=int, default=5000, help="rows per insert (default 5000)")
    xm.add_argument("--overwrite", action="store_true", help="replace the collection if it exists")
    xm.add_argument("--no-verify", action="store_true", help="skip the checksums when opening the index")
    xm.set_defaults(run=_export_milvus)

    sub.add_parser("bench", add_help=False,
                   help="compression quality and speed against every peer (source checkout only; csae bench --help)")

    d = sub.add_parser("demo", help="train, encode and search real data end to end, printing the figures")
    d.add_argument("--data", default=None, help="a dataset folder (docs.npy, queries.npy, ...) or an (n, d) .npy")
    d.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's budget)")
    d.add_argument("--h", type=int, default=4096)
    d.add_argument("--k", type=int, default=32)
    d.add_argument("--bytes-per-item", type=int, default=128,
                   help="bytes of compact code per item (default 128); 0: the model's k entries in float16")
    d.set_defaults(run=_demo)
    return p


def _bench(argv) -> int:
    """`csae bench ...`: benchmarks/compare.py of the source checkout this package was installed from."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "compare.py").exists():
        print(f"csae bench: error: the benchmarks are not installed with the package; run it from a source checkout "
              f"(git clone, then pip install -e .): no benchmarks/compare.py in {root}", file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.compare import main as compare
    try:
        compare(list(argv), prog="csae bench")
    except REPORTED_ERRORS as e:
        print(f"csae bench: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    """Run `csae` with argv (default sys.argv[1:]).

    Parameters
    ----------
    argv : list of str, optional
        The arguments after `csae`.

    Returns
    -------
    int
        The exit status: 0, or 2 for a reported error (REPORTED_ERRORS) or bad arguments.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its options belong to benchmarks/compare.py
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except REPORTED_ERRORS as e:
        print(f"csae {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
