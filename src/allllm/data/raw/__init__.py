"""Raw text in: find the sources of ``data.raw_path``, read their bytes, split documents.

``find`` finds and describes sources, ``read`` streams their documents (and hashes
and identifies them), ``byte_stream`` reads (decompressed) byte ranges cut at safe
points, ``split`` cuts a source into document pieces with exact byte offsets, and
``pieces`` holds the piece types and the builder that collects them into batches;
``columnar`` reads Parquet and Arrow, ``units`` splits a source into units of work.
Code outside this package imports from here, not from the modules.
"""

from allllm.data.raw.find import SUFFIXES, RawSource, path_identity, resolve_sources, source_kind
from allllm.data.raw.pieces import PieceBatch, TextPiece
from allllm.data.raw.read import (
    iter_batches,
    iter_documents,
    iter_pieces,
    iter_texts,
    source_identity,
    source_sha256,
)
from allllm.data.raw.units import WorkUnit, iter_unit, work_units

__all__ = [
    "SUFFIXES",
    "PieceBatch",
    "RawSource",
    "TextPiece",
    "WorkUnit",
    "iter_batches",
    "iter_documents",
    "iter_pieces",
    "iter_texts",
    "iter_unit",
    "path_identity",
    "resolve_sources",
    "source_identity",
    "source_kind",
    "source_sha256",
    "work_units",
]
