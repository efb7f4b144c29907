"""Raw text in: find the sources of ``data.raw_path``, read their bytes, split documents.

``sources`` finds and describes sources and streams their documents,
``byte_stream`` reads (decompressed) byte ranges cut at safe points, and
``split`` cuts a source into document pieces with exact byte offsets.
"""

from allllm.data.raw.sources import (
    SUFFIXES,
    PieceBatch,
    RawSource,
    TextPiece,
    iter_batches,
    iter_documents,
    iter_pieces,
    iter_texts,
    resolve_sources,
    source_identity,
    source_kind,
    source_sha256,
)

__all__ = [
    "SUFFIXES",
    "PieceBatch",
    "RawSource",
    "TextPiece",
    "iter_batches",
    "iter_documents",
    "iter_pieces",
    "iter_texts",
    "resolve_sources",
    "source_identity",
    "source_kind",
    "source_sha256",
]
