"""Reading a raw source's bytes: the (decompressed) stream of a byte range, cut only
between UTF-8 characters, and decoded with errors that name the file and byte offset.

The splitter (:mod:`allllm.data.raw.split`) finds documents in these bytes; this module only
guarantees that every block it hands on starts and ends on a character boundary,
so each decodes on its own and every offset stays exact.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from allllm.errors import DataError

DECODE_HINT = 'set data.on_decode_error to "replace" or fix the file'


#: the largest zstd window accepted: SlimPajama and DCLM use windows (window_log up to 31)
#: the default decoder limit (2^27) refuses
ZSTD_MAX_WINDOW = 1 << 31


class _ZstdStream:
    """A zstd stream read in order, frame after frame; a stream that ends inside a frame
    (a truncated file) is an EOFError, where zstandard's own stream reader ends quietly."""

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._buf = bytearray()
        self._done = False
        self.produced = 0  # decompressed bytes so far (an error names how far it got)

    def read(self, n: int) -> bytes:
        while len(self._buf) < n and not self._done:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError("the file ends inside a zstd frame (truncated)")
                self._done = True
                break
            self._feed(chunk)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _feed(self, chunk: bytes) -> None:
        while chunk:
            self._in_frame = True
            out = self._obj.decompress(chunk)
            self.produced += len(out)
            self._buf += out
            if not self._obj.eof:
                return
            chunk = self._obj.unused_data  # the next frame began in this chunk
            self._obj = self._dctx.decompressobj()
            self._in_frame = False

    def close(self) -> None:
        self._buf = bytearray()


def _decompressing(raw: BinaryIO, codec: str | None) -> BinaryIO:
    if codec == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if codec == "zstd":
        return _ZstdStream(raw)  # type: ignore[return-value]
    return raw


_CODEC_HELP = {
    "gzip": ("gzip", "re-create the .gz file (`gzip -t FILE` tests one)"),
    "zstd": ("zstd", "re-create the .zst file (`zstd -t FILE` tests one)"),
}


class SourceReader:
    """The byte stream of a source (decompressed for ``.gz`` / ``.zst``) from ``start`` up to
    ``end``; ``codec`` is None, ``"gzip"`` or ``"zstd"``."""

    def __init__(
        self, path: Path, display: str, codec: str | None, start: int, end: int | None
    ) -> None:
        self.display = display
        self.codec = codec
        self.compressed = codec is not None
        self.pos = start
        self.end = end
        try:
            self._raw: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise DataError(
                f"{display}: cannot read: {exc.strerror}", "check that it exists and is readable"
            ) from None
        self._f: BinaryIO = _decompressing(self._raw, codec)
        try:
            if start and not self.compressed:
                self._raw.seek(start)
            elif start:  # only re-reads inside this module skip into a .gz
                skipped = 0
                while skipped < start:
                    got = len(self._read(min(1 << 20, start - skipped)))
                    if not got:
                        break
                    skipped += got
        except BaseException:
            self.close()
            raise

    def _read(self, n: int) -> bytes:
        try:
            return self._f.read(n)
        except (OSError, EOFError, zlib.error, _zstd_error()) as exc:
            if self.codec is not None:
                name, hint = _CODEC_HELP[self.codec]
                done = max(self.pos, getattr(self._f, "produced", 0))
                raise DataError(
                    f"{self.display}: broken {name} data after {done} decompressed bytes ({exc})",
                    hint,
                ) from None
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise DataError(f"{self.display}: cannot read at byte {self.pos}: {reason}") from None

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end of the range."""
        if self.end is not None:
            n = min(n, self.end - self.pos)
            if n <= 0:
                return b""
        data = self._read(n)
        if not data and self.end is not None:
            raise DataError(
                f"{self.display}: ends at byte {self.pos}, before byte {self.end} — it was "
                "truncated or replaced while being read",
                "run again",
            )
        self.pos += len(data)
        return data

    def read_head(self, n: int) -> bytes:
        head = b""
        while len(head) < n:
            more = self.read(n - len(head))
            if not more:
                break
            head += more
        return head

    @property
    def disk_pos(self) -> int:
        return self._raw.tell()

    def close(self) -> None:
        if self._f is not self._raw:
            self._f.close()
        self._raw.close()


def _zstd_error() -> type[Exception]:
    """zstandard's error type (an OSError stand-in when zstandard is not imported yet)."""
    import sys

    module = sys.modules.get("zstandard")
    return module.ZstdError if module is not None else OSError


def make_decoder(
    display: str, on_decode_error: str, compressed: bool
) -> Callable[[bytes, int], str]:
    """``decode(data, at)``: UTF-8 text of ``data``, which starts at byte ``at`` of the stream."""
    if on_decode_error == "replace":
        return lambda data, at: data.decode("utf-8", "replace")
    where = " of the decompressed text" if compressed else ""

    def decode(data: bytes, at: int) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{display}: invalid UTF-8 at byte offset {at + exc.start}{where} "
                f"(0x{data[exc.start]:02x})",
                DECODE_HINT,
            ) from None

    return decode


def tail_cut(data: bytes) -> int:
    """Length of the longest prefix of ``data`` that does not end inside a character.

    A trailing lead byte whose continuation bytes have not arrived yet is held back.
    """
    n = len(data)
    for i in range(n - 1, max(n - 4, -1), -1):
        b = data[i]
        if b < 0x80:
            return n
        if b >= 0xC0:
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return i if n - i < need else n
    return n  # only continuation bytes: not a character anyway


def split_cut(data: bytes, lo: int, cut: int) -> int:
    """A cut near ``cut`` (``lo < cut < len(data)``) that splits no character.

    Moves back to the start of the character (at most 3 bytes), or forward past it
    when going back would leave nothing after ``lo``. Cutting before any byte that is
    not a continuation byte decodes exactly like the whole, also for invalid bytes.
    """
    for c in range(cut, max(cut - 4, lo), -1):
        if data[c] & 0xC0 != 0x80:
            return c
    for c in range(cut + 1, min(cut + 4, len(data)) + 1):
        if c == len(data) or data[c] & 0xC0 != 0x80:
            return c
    return cut


def blocks(reader: SourceReader, size: int, head: bytes = b"") -> Iterator[bytes]:
    """``head`` (if any), then blocks of up to ``size`` bytes to the end of the range."""
    if head:
        yield head
    while block := reader.read(size):
        yield block


def char_blocks(
    reader: SourceReader, size: int, at: int, head: bytes = b""
) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` blocks of about ``size`` bytes that never end inside a character."""
    carry = b""
    for block in blocks(reader, size, head):
        data = carry + block if carry else block
        cut = tail_cut(data)
        if cut:
            yield at, (data if cut == len(data) else data[:cut])
            at += cut
        carry = data[cut:]
    if carry:
        yield at, carry
