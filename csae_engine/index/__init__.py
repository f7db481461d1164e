"""The index behind Engine, one concern per module (FAISS keeps storage apart from search):

segment.py   Segment: one immutable part of the index (posting lists, forward codes, ids, live mask)
build.py     forward codes, posting lists and pruning: codes -> Segment
query.py     a query's sparse code and its projection W_dec q
search.py    SearchParams and the search over segments (sparse scorer, dense rerank, merging)
storage.py   the index directory: manifest, writer, loader, checksums, links
"""
from .build import WINDOW_BITS
from .search import MODES, SearchParams
from .segment import Segment
from .storage import INDEX_FORMAT_VERSION

__all__ = ["INDEX_FORMAT_VERSION", "MODES", "SearchParams", "Segment", "WINDOW_BITS"]
