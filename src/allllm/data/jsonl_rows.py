"""Fast serialization of token rows to ``.jsonl`` (one JSON array of ints a line).

``json.dumps`` costs ~110 ns a token, which would make writing ``.jsonl`` slower
than tiktoken encoding. Here every id is rendered through a lookup table of
right-aligned decimal strings, so a whole block of rows becomes bytes in a few
vectorized numpy operations (~15 ns a token). The result is plain JSON — the
padding is whitespace, which JSON allows between values::

    [  464, 1049,  318,50256]

Every full row of a shard therefore has the same byte length, which also makes
the files easy to index.
"""

from __future__ import annotations

import functools

import numpy as np

_MAX_TABLE_IDS = 1 << 24  # a 16M-id table is ~130 MB; beyond that render without one
_COMMA, _CLOSE, _OPEN, _NEWLINE = ord(","), ord("]"), ord("["), ord("\n")


@functools.lru_cache(maxsize=8)
def _digit_table(id_range: int) -> np.ndarray:
    """``[id_range, width]`` uint8: each id right-aligned in ``width`` ASCII digits/spaces."""
    width = len(str(max(id_range - 1, 0)))
    strings = np.array([str(i).rjust(width).encode() for i in range(id_range)], dtype=f"S{width}")
    return strings.view(np.uint8).reshape(id_range, width)


def rows_to_jsonl(rows: np.ndarray, id_range: int) -> bytes:
    """Render a ``[n, L]`` block of ids (all < ``id_range``) as ``n`` JSON lines."""
    if rows.ndim != 2:
        raise ValueError("rows must be a 2-D array")
    n, length = rows.shape
    if n == 0:
        return b""
    if length == 0:
        return b"[]\n" * n
    if id_range > _MAX_TABLE_IDS:  # absurdly large vocabularies: plain, slower rendering
        return "".join("[" + ",".join(map(str, row)) + "]\n" for row in rows.tolist()).encode()
    table = _digit_table(id_range)
    width = table.shape[1]
    out = np.empty((n, length * (width + 1) + 2), dtype=np.uint8)
    body = out[:, 1:-1].reshape(n, length, width + 1)
    body[..., :width] = table[rows]
    body[..., width] = _COMMA
    body[:, -1, width] = _CLOSE
    out[:, 0] = _OPEN
    out[:, -1] = _NEWLINE
    return out.tobytes()


def jsonl_row_width(length: int, id_range: int) -> int:
    """Bytes of one rendered row of ``length`` ids, newline included."""
    if id_range > _MAX_TABLE_IDS:
        raise ValueError("rows of very large vocabularies have no fixed width")
    width = len(str(max(id_range - 1, 0)))
    return 3 if length == 0 else length * (width + 1) + 2
