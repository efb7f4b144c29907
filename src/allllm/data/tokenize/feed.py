"""What one shard job reads: the pieces of its items in order, and how meta records them.

Apart from ``run`` so the pipeline reads as orchestration, and so that other drivers of
shard jobs (many processes) read a job exactly as one process does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from allllm.data.tokenize.pieces import Pieces
from allllm.data.tokenize.plan import ShardJob, WorkItem, display_path

if TYPE_CHECKING:
    from allllm.config import Config


def job_pieces(
    job: ShardJob, cfg: Config, chunk_bytes: int, current: dict[str, str], skipped: list[int]
) -> Iterator[Pieces]:
    """The pieces of every item of ``job``, in order, with the bytes of input each completes.

    Progress counts bytes on disk (compressed bytes for a ``.gz``), so every item
    advances by exactly its byte range, also where its text ends early. ``skipped[0]``
    counts the empty records passed over. An item that starts / ends inside a document
    (``WorkItem.open_start`` / ``open_end``) continues it without BOS / ends it without
    EOS, and its text is the document's as read whole (see ``_cut_tail``).
    """
    from allllm.data.raw import iter_batches

    data_cfg = cfg.data
    for item in job.items:
        source = item.source
        current["name"] = name = display_path(source.path)
        done = item.start
        continues = item.open_start
        had_text = False
        for batch in iter_batches(
            source,
            boundary=data_cfg.document_boundary,
            text_field=data_cfg.text_field,
            on_decode_error=data_cfg.on_decode_error,
            chunk_bytes=chunk_bytes,
            start=item.start,
            end=None if source.compressed else item.end,  # a compressed stream: read whole
            max_record_bytes=data_cfg.max_document_bytes,
        ):
            skipped[0] += batch.skipped
            at = min(batch.read_bytes, item.end)
            is_open = batch.open or item.open_end  # the last document ends at the cut below
            yield Pieces(batch.texts, batch.doc_starts, is_open, max(0, at - done), name, continues)
            continues = continues and not batch.texts
            had_text = had_text or bool(batch.texts)
            done = max(done, at)
        if item.open_end:
            tail = _cut_tail(item, data_cfg.document_boundary) if had_text else []
            yield Pieces(tail, [False] * len(tail), False, item.end - done, name, cut=True)
        elif done < item.end:
            yield Pieces([], [], False, item.end - done, name)


def _cut_tail(item: WorkItem, boundary: str) -> list[str]:
    """Text the reader leaves out at a cut inside a document but reading it whole keeps:
    in ``blank_line`` mode a paragraph's line end ("\r\n" read as "\n") is read as the
    "\n" that joins the next line, which is across the cut when the cut follows it."""
    if boundary != "blank_line" or item.source.records:
        return []
    with open(item.source.path, "rb") as fh:
        fh.seek(item.end - 1)
        return ["\n"] if fh.read(1) == b"\n" else []


def source_record(item: WorkItem) -> dict[str, Any]:
    """A meta ``sources`` entry: the path relative to the workspace (cwd) when inside it."""
    return {
        "path": display_path(item.source.path),
        "size": item.source.size,
        "sha256": item.sha256,
        "byte_range": (item.start, item.end),
        "inside_document": (item.open_start, item.open_end),
    }


class SourceHasher:
    """Hashes the sources the plan did not need to hash, on a thread, while they are tokenized.

    hashlib releases the GIL, so this overlaps the encoding instead of delaying its start.
    A source is hashed once however many jobs hold parts of it.
    """

    def __init__(self, sha256: Callable[[Any, int | None], str]) -> None:
        self._sha256 = sha256
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="allllm-sha256")
        self._futures: dict[str, Future[str]] = {}

    def submit(self, items: list[WorkItem]) -> None:
        """Start hashing the sources of ``items`` that have no digest yet."""
        for item in items:
            key = os.path.abspath(item.source.path)
            if item.sha256 is None and key not in self._futures:
                self._futures[key] = self._pool.submit(self._sha256, item.source, item.source.size)

    def resolve(self, items: list[WorkItem]) -> None:
        """Fill in ``sha256`` of ``items`` (waiting for their hashes where needed)."""
        self.submit(items)
        for item in items:
            if item.sha256 is None:
                item.sha256 = self._futures[os.path.abspath(item.source.path)].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
