"""Digests of the documents of a token stream that arrives in chunks (the ``.docs`` records).

Tokenize's writer sees a shard's ids a chunk at a time and learns where documents
end; the sidecar (:mod:`allllm.data.documents`) needs one record per document: a
128-bit digest of its ids and where it starts. This is that streaming half, apart
from the file format so the writer's hot path reads in one place: a document
that spans chunks is hashed incrementally, never held whole, and many short
documents cost one hash object each (~1 µs), no Python work per id.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import pairwise

import numpy as np

DIGEST_ALGORITHM = "blake2b-128-u32le"
NO_SOURCE = 0xFFFFFFFF  # a document whose source is unknown (split from an old shard's stream)
DOC_DTYPE = np.dtype(
    [("hi", "<u8"), ("lo", "<u8"), ("start", "<u8"), ("source", "<u4"), ("flags", "<u4")]
)
#: record ``flags`` bits: a document cut between shards at a safe point of the encoder
#: (``units.work_units``) is one record in each, its part here starting inside the document
#: (no BOS; the part before is in another shard) and / or ending inside it (no EOS)
DOC_CONTINUED = 1
DOC_CONTINUES = 2
_DIGEST = np.dtype(">u8")  # a 16-byte digest read as two big-endian uint64: (hi, lo)


def digest_ids(ids: np.ndarray) -> tuple[int, int]:
    """(hi, lo) of one document's ids (BOS/EOS included): blake2b-128 of them as uint32 LE."""
    raw = hashlib.blake2b(np.asarray(ids).astype("<u4").tobytes(), digest_size=16).digest()
    return int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:], "big")


def _u32(ids: np.ndarray) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.dtype != np.dtype("<u4"):
        arr = arr.astype("<u4")
    return np.ascontiguousarray(arr)


#: copied for each document: a copy skips blake2b's keyword parsing, ~40% of a short document
_EMPTY = hashlib.blake2b(digest_size=16)


def _digests(view: memoryview, bounds: list[int]) -> list[bytes]:
    """The digest of each byte range ``bounds[i]:bounds[i + 1]`` of ``view``."""
    new = _EMPTY.copy
    out: list[bytes] = []
    append = out.append
    for a, b in pairwise(bounds):
        h = new()
        h.update(view[a:b])
        append(h.digest())
    return out


class DocumentDigester:
    """Digests the documents of a token stream that arrives in chunks.

    A document that spans chunks is hashed incrementally (one open blake2b state),
    never held whole; each chunk's documents cost one hash object apiece over slices of
    the chunk's bytes (~1 µs a document), no Python work per id.
    """

    def __init__(self) -> None:
        self._offset = 0  # ids seen so far
        self._open: hashlib.blake2b | None = None  # the document still open, if it has ids
        self._open_start = 0
        self._parts: list[np.ndarray] = []

    def add(self, ids: np.ndarray, doc_ends: np.ndarray, doc_sources: Sequence[int]) -> None:
        """Take the next chunk of the stream; ``doc_ends`` are offsets in it (exclusive,
        ascending) where documents end, ``doc_sources`` each such document's source index."""
        buf = _u32(ids)
        ends = np.asarray(doc_ends, dtype=np.int64).reshape(-1)
        if len(doc_sources) != ends.size:
            raise ValueError(f"{ends.size} document ends but {len(doc_sources)} sources")
        n = int(buf.size)
        if ends.size and (ends[0] < 0 or ends[-1] > n or (np.diff(ends) < 0).any()):
            raise ValueError("document ends must be ascending offsets within the chunk")
        offset = self._offset
        if ends.size:
            view = memoryview(buf).cast("B")
            bounds = (ends * 4).tolist()
            if self._open is not None:  # the document open since an earlier chunk ends here
                self._open.update(view[: bounds[0]])
                digests = [self._open.digest(), *_digests(view, bounds)]
                first_start, self._open = self._open_start, None
            else:
                digests = _digests(view, [0, *bounds])
                first_start = offset
            pair = np.frombuffer(b"".join(digests), dtype=_DIGEST).reshape(-1, 2)
            part = np.zeros(ends.size, dtype=DOC_DTYPE)
            part["hi"], part["lo"] = pair[:, 0], pair[:, 1]
            part["start"][0] = first_start
            part["start"][1:] = offset + ends[:-1]
            part["source"] = np.asarray(doc_sources, dtype=np.int64).astype("<u4")
            self._parts.append(part)
            tail = int(ends[-1])
        else:
            tail = 0
        if tail < n:  # ids after the last end: a document that goes on in the next chunk
            rest = memoryview(buf[tail:]).cast("B")
            if self._open is None:
                self._open = _EMPTY.copy()
                self._open.update(rest)
                self._open_start = offset + tail
            else:
                self._open.update(rest)
        self._offset = offset + n

    @property
    def n_tokens(self) -> int:
        """Ids taken so far."""
        return self._offset

    def finish(self, n_tokens: int) -> np.ndarray:
        """The records of every document; ids after the last end are one more document."""
        if n_tokens != self._offset:
            raise ValueError(f"the stream has {self._offset} ids, not {n_tokens}")
        if self._open is not None:
            pair = np.frombuffer(self._open.digest(), dtype=_DIGEST)
            last = np.zeros(1, dtype=DOC_DTYPE)
            last["hi"], last["lo"] = pair[0], pair[1]
            last["start"], last["source"] = self._open_start, NO_SOURCE
            self._parts.append(last)
            self._open = None
        records = np.concatenate(self._parts) if self._parts else np.zeros(0, DOC_DTYPE)
        self._parts = [records]
        return records


class BackgroundDigester(DocumentDigester):
    """A DocumentDigester that digests on a thread of its own, one chunk behind the caller.

    Tokenize's main thread renders, hashes and writes rows meanwhile (much of which releases
    the GIL): for many short documents that hides most of the ~1 µs each costs. One chunk
    in flight at most, so memory stays bounded; ``add``'s arrays must not change after it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pool: ThreadPoolExecutor | None = None
        self._job: Future[None] | None = None
        self.seconds = 0.0  # CPU seconds of the digesting thread

    def add(self, ids: np.ndarray, doc_ends: np.ndarray, doc_sources: Sequence[int]) -> None:
        self._wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="allllm-docs")
        self._job = self._pool.submit(self._add, ids, doc_ends, doc_sources)

    def _add(self, ids: np.ndarray, doc_ends: np.ndarray, doc_sources: Sequence[int]) -> None:
        t0 = time.thread_time()
        try:
            super().add(ids, doc_ends, doc_sources)
        finally:
            self.seconds += time.thread_time() - t0

    def _wait(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.result()  # raises what the digester raised

    def finish(self, n_tokens: int) -> np.ndarray:
        self._wait()
        self.close()
        return super().finish(n_tokens)

    def close(self) -> None:
        """Stop the thread (after the chunk it is digesting, if any)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
