"""Split one raw source into document pieces with exact byte offsets: the streaming core.

Bytes first, decoding second: ``\\n`` never occurs inside a UTF-8 multi-byte
character, so lines and blank-line separators are found in the raw bytes.
Every offset is therefore exact (also where ``on_decode_error="replace"`` turns
bad bytes into U+FFFD and changes the text's length), and every piece's bytes
decode on their own, so a character split across read blocks never breaks.

Memory is bounded by ``chunk_bytes`` whatever the input: a line with no end in
sight is emitted in parts, and a whitespace-only run whose fate is still open
(the start of a document, or a line that may yet turn out blank) is kept only
up to a few chunks and read again from the file if it turns out to be text.

Byte ranges: when a range holds at least one document, the pieces' ranges tile
it exactly — each piece starts where the one before it ends, the first at the
range's start (a dropped BOM included), the last at the range's end. Bytes
that give no text (skipped blank lines and whitespace-only documents) belong to
the document after them; those after the last document belong to the last.

The pieces themselves and the ``BatchBuilder`` that collects them are in ``pieces``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from itertools import accumulate, compress
from operator import add
from pathlib import Path
from typing import Any

from allllm.data.raw.byte_stream import (
    DECODE_HINT,
    SourceReader,
    blocks,
    char_blocks,
    make_decoder,
    tail_cut,
)
from allllm.data.raw.pieces import BatchBuilder, PieceBatch
from allllm.errors import DataError

BOM = b"\xef\xbb\xbf"
TENTATIVE_CHUNKS = 4  # a whitespace run of open fate is kept in memory up to this many chunks

# Every character that str.isspace() accepts except "\n", as UTF-8 bytes (a test checks the list
# against all code points), so a "blank line" is the same thing in the byte scan and in str.
WS_BYTES = (
    rb"(?:[\t\x0b\x0c\r \x1c-\x1f]|\xc2[\x85\xa0]|\xe1\x9a\x80"
    rb"|\xe2\x80[\x80-\x8a\xa8\xa9\xaf]|\xe2\x81\x9f|\xe3\x80\x80)"
)
_BLANK_LINES = re.compile(rb"(?:" + WS_BYTES + rb"*\n)+")  # blank lines, from a line start
_PARA_END = re.compile(rb"\n(?:" + WS_BYTES + rb"*\n)+")  # a line end, then blank lines
_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_type(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    names = {dict: "an object", list: "an array", str: "a string"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else "a value")


class SourceSplitter:
    """Yields the PieceBatches of one source range (see the module docstring)."""

    def __init__(
        self,
        source: Any,  # a RawSource (path, display, format, codec); arguments checked there
        *,
        boundary: str,
        text_field: str,
        on_decode_error: str,
        chunk_bytes: int,
        start: int,
        end: int | None,
        max_record_bytes: int,
    ) -> None:
        self.path, self.display = source.path, source.display
        self.fmt, self.codec, self.compressed = source.format, source.codec, source.compressed
        self.boundary, self.text_field = boundary, text_field
        self.strict = on_decode_error == "error"
        self.chunk, self.max_record = chunk_bytes, max_record_bytes
        self.start, self.end = start, end
        self.decode = make_decoder(self.display, on_decode_error, self.compressed)
        self.in_line = False  # line modes: the current line's start was already consumed
        self.line_text = False  # ... and it holds more than whitespace
        self.join = ""  # blank_line: "\n" when the current line continues an open paragraph

    def _reread(self, a: int, b: int) -> Iterator[tuple[str, int]]:
        reader = SourceReader(self.path, self.display, self.codec, a, b)
        try:
            for at, data in char_blocks(reader, self.chunk, a):
                yield self.decode(data, at), at + len(data)
        finally:
            reader.close()

    def batches(self) -> Iterator[PieceBatch]:
        self.rd = SourceReader(self.path, self.display, self.codec, self.start, self.end)
        try:
            self.b = BatchBuilder(self.start, TENTATIVE_CHUNKS * self.chunk, self._reread)
            head = self.rd.read_head(3) if self.start == 0 else b""
            self.at = self.start  # offset of the first byte after `head`'s place
            if head == BOM:  # dropped from the text; its bytes stay in the first piece's range
                head, self.at = b"", 3
            if self.fmt == "jsonl":
                yield from self._jsonl(head)
            elif self.boundary == "file":
                yield from self._file(head)
            else:
                yield from self._lines(head, paragraphs=self.boundary == "blank_line")
            self.b.close()
            last = self.b.flush(self.rd.disk_pos, final_end=self.rd.pos)
            if last is not None:
                yield last
        finally:
            self.rd.close()

    # -- file: the whole range is one document ---------------------------------------------------
    def _file(self, head: bytes) -> Iterator[PieceBatch]:
        b = self.b
        for at, data in char_blocks(self.rd, self.chunk, self.at, head):
            text = self.decode(data, at)
            if b.held is None and text.isspace():
                b.maybe(text, at, at + len(data))
            else:
                b.add(text, at + len(data))
            batch = b.flush(self.rd.disk_pos)
            if batch is not None:
                yield batch

    # -- line / blank_line ------------------------------------------------------------------------
    def _lines(self, head: bytes, paragraphs: bool) -> Iterator[PieceBatch]:
        # Reading half a chunk at a time keeps every piece within chunk_bytes: a piece comes
        # from (carry <= half a chunk) + (block <= half a chunk).
        size = max(1, self.chunk // 2)
        region = self._paragraph_region if paragraphs else self._line_region
        rd, b = self.rd, self.b
        carry, at = b"", self.at  # at: offset of carry[0]
        for block in blocks(rd, size, head):
            data = carry + block if carry else block
            last = data.rfind(b"\n")
            if last >= 0:
                pos = 0
                if self.in_line:
                    pos = data.find(b"\n") + 1
                    self._end_line(data[: pos - 1], at, at + pos, paragraphs)
                if pos <= last:
                    region(data[pos : last + 1] if pos or last + 1 < len(data) else data, at + pos)
                at += last + 1
                carry = data[last + 1 :]
            else:
                carry = data
            if len(carry) > size:
                carry, at = self._long_part(carry, at, paragraphs)
            batch = b.flush(rd.disk_pos)
            if batch is not None:
                yield batch
        if self.in_line or carry:
            self._end_line(carry, at, at + len(carry), paragraphs, terminated=False)

    def _line_region(self, region: bytes, base: int) -> None:
        """Complete lines (``region`` ends with "\\n"), no document open: one document each."""
        text = self.decode(region, base)
        lines = text.split("\n")
        lines.pop()
        lens = map(len, lines) if region.isascii() else map(len, region.split(b"\n"))
        ends = list(map(add, accumulate(lens), range(base + 1, base + len(lines) + 1)))
        if b"\r" in region:  # drop the "\r" of "\r\n" line ends (lengths above keep it)
            lines = text.replace("\r\n", "\n").split("\n")
            lines.pop()
        keep = list(map(str.strip, lines))  # "" for blank lines
        self.b.whole(list(compress(lines, keep)), list(compress(ends, keep)))

    def _paragraph_region(self, region: bytes, base: int) -> None:
        """Complete lines; a paragraph may be open from before and may stay open after."""
        b, decode = self.b, self.decode
        pos = 0
        m = _BLANK_LINES.match(region)
        if m:  # the region starts with blank lines: an open paragraph ends
            b.close()
            pos = m.end()
        join = "\n" if b.held is not None else ""
        cr = b"\r" in region
        for m in _PARA_END.finditer(region, pos):
            para = region[pos : m.start()]
            if cr and para.endswith(b"\r"):
                para = para[:-1]
            text = decode(para, base + pos)
            b.add(join + (text.replace("\r\n", "\n") if cr else text), base + m.start() + 1)
            b.close()
            join, pos = "", m.end()
        if pos < len(region):  # the last paragraph may go on in the next region
            para = region[pos:-1]
            if cr and para.endswith(b"\r"):
                para = para[:-1]
            text = decode(para, base + pos)
            b.add(join + (text.replace("\r\n", "\n") if cr else text), base + len(region))

    def _long_part(self, carry: bytes, at: int, paragraphs: bool) -> tuple[bytes, int]:
        """Consume the start of a line too long to buffer; return what is left of it."""
        cut = tail_cut(carry)
        if cut and carry[cut - 1] == 0x0D:  # a "\r" may be the start of a "\r\n" line end
            cut -= 1
        if not cut:
            return carry, at
        b, end = self.b, at + cut
        text = self.decode(carry[:cut], at)
        if not self.in_line:
            self.in_line = True
            self.join = "\n" if paragraphs and b.held is not None else ""
        if self.line_text:
            b.add(text, end)
        elif text.isspace():
            b.maybe(text, at, end, self.join)
        else:
            self.line_text = True
            b.add(text if b.tent is not None else self.join + text, end)
        return carry[cut:], end

    def _end_line(
        self, rest: bytes, at: int, end: int, paragraphs: bool, terminated: bool = True
    ) -> None:
        """The current line ends: ``rest`` is its unconsumed part, ``end`` is after its end."""
        if terminated and rest.endswith(b"\r"):
            rest = rest[:-1]
        text = self.decode(rest, at) if rest else ""
        b = self.b
        if self.line_text:  # a long line with text: its document goes on to here
            if text:
                b.add(text, end)
            else:
                b.extend(end)
            if not paragraphs:
                b.close()
        elif text and not text.isspace():
            if not self.in_line:  # a whole (last) line
                self.join = "\n" if paragraphs and b.held is not None else ""
            b.add(text if b.tent is not None else self.join + text, end)
            if not paragraphs:
                b.close()
        else:  # a blank line: skipped; in blank_line mode it ends the open paragraph
            b.close()
        self.in_line = self.line_text = False

    # -- jsonl: one record a document -------------------------------------------------------------
    def _jsonl(self, head: bytes) -> Iterator[PieceBatch]:
        rd, b = self.rd, self.b
        parts: list[bytes] = []
        plen, at, line_no = 0, self.at, 1
        for block in blocks(rd, self.chunk, head):
            last = block.rfind(b"\n")
            if last < 0:
                parts.append(block)
                plen += len(block)
                if plen > self.max_record:
                    raise self._too_long(line_no, at)
                continue
            parts.append(block[: last + 1])
            region = b"".join(parts)
            line_no = self._records(region, at, line_no)
            at += len(region)
            rest = block[last + 1 :]
            parts, plen = ([rest], len(rest)) if rest else ([], 0)
            batch = b.flush(rd.disk_pos)
            if batch is not None:
                yield batch
        if parts:
            self._records(b"".join(parts), at, line_no)

    def _records(self, region: bytes, base: int, line_no: int) -> int:
        """Parse the lines of ``region`` (the last may lack its "\\n"); the next line number."""
        lines = self.decode(region, base).split("\n")
        if region.endswith(b"\n"):
            lines.pop()
        lens = [len(s) for s in (lines if region.isascii() else region.split(b"\n"))]
        if len(region) > self.max_record and max(lens) > self.max_record:
            k = next(i for i, n in enumerate(lens) if n > self.max_record)
            raise self._too_long(line_no + k, base + sum(lens[:k]) + k)
        texts: list[str] = []
        ends: list[int] = []
        pos, limit = base, base + len(region)
        small = self.chunk // 4  # at most 4 bytes a character
        for n, line, size in zip(range(line_no, line_no + len(lines)), lines, lens):
            start, pos = pos, pos + size + 1
            if not line or line.isspace():
                continue
            value = self._record_text(line, n, start)
            if value is None:
                self.b.skipped += 1
                continue
            if len(value) <= small or len(value.encode("utf-8")) <= self.chunk:
                texts.append(value)
                ends.append(min(pos, limit))
            else:
                self.b.whole(texts, ends)
                texts, ends = [], []
                self.b.big(value, min(pos, limit), self.chunk)
        self.b.whole(texts, ends)
        return line_no + len(lines)

    def _record_text(self, line: str, n: int, offset: int) -> str | None:
        """The text field of one record; None when it is empty or only whitespace."""
        where = f"{self.display}: line {n}"
        if self.start:
            where += f" counting from byte {self.start}"
        where += f" (byte {offset})"
        field = self.text_field
        hint = f"each line must be a JSON object whose {field!r} field holds the text"
        if n == 1 and not self.start and line.lstrip().startswith("["):
            raise DataError(
                f"{self.display}: holds one JSON array, not JSON lines (one object a line)",
                f"convert it: jq -c '.[]' {self.display} > {Path(self.display).stem}.jsonl",
            )
        try:
            record = json.loads(line)
        except RecursionError:
            raise DataError(f"{where}: JSON nested too deeply", hint) from None
        except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
            detail = getattr(exc, "msg", str(exc))
            if hasattr(exc, "colno"):
                detail += f", column {exc.colno}"
            raise DataError(f"{where}: not valid JSON ({detail})", hint) from None
        if type(record) is not dict:
            raise DataError(f"{where}: {_json_type(record)}, not a JSON object", hint)
        if field not in record:
            keys = ", ".join(repr(k) for k in list(record)[:8]) or "no fields"
            raise DataError(
                f"{where}: no field {field!r} (the record has {keys})",
                "set data.text_field to the field that holds the text",
            )
        value = record[field]
        if type(value) is not str:
            raise DataError(f"{where}: field {field!r} is {_json_type(value)}, not a string", hint)
        if ("\\ud" in line or "\\uD" in line) and _SURROGATE.search(value):
            if self.strict:
                raise DataError(
                    f"{where}: field {field!r} holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)",
                    DECODE_HINT,
                )
            value = _SURROGATE.sub("\ufffd", value)
        if not value or value.isspace():
            return None
        return value

    def _too_long(self, n: int, offset: int) -> DataError:
        return DataError(
            f"{self.display}: line {n} (byte {offset}) is longer than data.max_document_bytes "
            f"({self.max_record:,} bytes)",
            "raise data.max_document_bytes, split the record, or check that the file really "
            "is JSON Lines (one object a line)",
        )
