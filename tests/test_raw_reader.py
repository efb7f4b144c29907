"""The raw reader: finding sources, formats, document boundaries, bounded pieces, exact offsets."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

from allllm.config import DataConfig
from allllm.data.raw import find as raw_find
from allllm.data.raw import split as raw_split
from allllm.data.raw.find import RawSource, resolve_sources
from allllm.data.raw.read import (
    iter_batches,
    iter_documents,
    iter_pieces,
    iter_texts,
    source_identity,
    source_sha256,
)
from allllm.errors import DataError

# -- helpers ------------------------------------------------------------------------------------


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def source(path: Path) -> RawSource:
    kind = raw_find.source_kind(path.name)
    assert kind is not None
    return RawSource(path, path.stat().st_size, kind[0], kind[1])


def docs(path: Path, boundary: str = "file", **kw: object) -> list[str]:
    return list(iter_documents(source(path), boundary=boundary, **kw))


def reference_documents(data: bytes, boundary: str, errors: str = "strict") -> list[str]:
    """The documents, computed the obvious way (whole text in memory)."""
    text = data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors)
    if boundary == "file":
        found = [text]
    else:
        parts = text.split("\n")
        lines = [p.removesuffix("\r") for p in parts[:-1]] + parts[-1:]
        if boundary == "line":
            found = lines
        else:
            found, para = [], []
            for line in [*lines, ""]:
                if line.strip():
                    para.append(line)
                elif para:
                    found.append("\n".join(para))
                    para = []
    return [d for d in found if d.strip()]


def check_pieces(
    pieces: list, size: int, chunk: int, range_start: int = 0, replaced: bool = False
) -> list[str]:
    """Pieces tile [range_start, size), are bounded, and nest in documents; the documents.

    The bound is on bytes of text, or on characters where bad bytes became U+FFFD.
    """
    out: list[str] = []
    pos, current = range_start, None
    for p in pieces:
        assert p.start == pos and p.end >= p.start
        pos = p.end
        assert (len(p.text) if replaced else len(p.text.encode("utf-8"))) <= chunk + 5
        if p.doc_start:
            assert current is None
            current = []
        assert current is not None
        current.append(p.text)
        if p.doc_end:
            out.append("".join(current))
            current = None
    assert current is None
    if pieces:
        assert pos == size
    return out


# Multi-byte characters, CRLF, unicode spaces, a lone "\r", whitespace-only lines and runs,
# a line longer than the small chunk sizes.
MIXED = (
    "\ufeffTitle é\r\n\r\n  \nfirst para 😀 line\nsecond\u3000line  \n \t\n\n\n"
    + "long " * 30
    + "ĳ€😀\r\nnext\rsame line\n\u00a0\n"
    + " " * 150
    + "\n"
    + "\t" * 40
    + "indented\n\n"
    + "日本語テキスト" * 8
    + "\n   \n  end without newline"
)


# -- resolve_sources ----------------------------------------------------------------------------


def test_resolve_folder_recursive_sorted_and_skips(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    for name in ("b.txt", "a.jsonl", "sub/c.txt.gz", "sub/deeper/d.jsonl.gz", "A.TXT"):
        write(root / name, "x\n")
    write(root / ".hidden.txt", "x")
    write(root / ".git/e.txt", "x")
    write(root / "notes.md", "x")
    write(root / "table.csv", "x")
    write(root / "noext", "x")
    write(root / "old.cached.64.20240101_000000.jsonl", "[1, 2]\n")
    write(root / "empty.txt", "")
    warnings: list[str] = []
    found = resolve_sources([str(root)], warn=warnings.append)
    rel = [str(s.path.relative_to(root)) for s in found]
    assert rel == ["A.TXT", "a.jsonl", "b.txt", "sub/c.txt.gz", "sub/deeper/d.jsonl.gz"]
    assert [(s.format, s.compressed) for s in found][3:] == [("txt", True), ("jsonl", True)]
    assert found[0].size == 2 and found[2].display == str(root / "b.txt")
    assert any("empty.txt: empty file, skipped" in w for w in warnings)
    summary = next(w for w in warnings if w.startswith("skipped"))
    assert "3 file(s) of other types (1 (no suffix), 1 .csv, 1 .md)" in summary
    assert "1 allllm shard file(s)" in summary
    assert not any("hidden" in w or ".git" in w for w in warnings)


def test_resolve_file_glob_list_order_and_duplicates(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("d/x2.txt", "d/x1.txt", "d/y.jsonl", "z.txt"):
        write(tmp_path / name, "t")
    found = resolve_sources(["z.txt", "d/x*.txt", "d", str(tmp_path / "z.txt")])
    assert [str(s.path) for s in found] == ["z.txt", "d/x1.txt", "d/x2.txt", "d/y.jsonl"]
    assert source_identity(found[0]) == str((tmp_path / "z.txt").resolve())
    assert [str(s.path) for s in resolve_sources(["**/*.txt"])] == [
        "d/x1.txt",
        "d/x2.txt",
        "z.txt",
    ]


def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'.*nope': no such file or folder — create it or fix"):
        resolve_sources([str(tmp_path / "nope")])
    with pytest.raises(DataError, match="the pattern matches nothing"):
        resolve_sources([str(tmp_path / "*.txt")])
    write(tmp_path / "book.md", "x")
    with pytest.raises(DataError, match=r"book.md': not a raw text file — raw input is \.txt"):
        resolve_sources([str(tmp_path / "book.md")])
    warnings: list[str] = []
    with pytest.raises(DataError, match=r"no raw text in data.raw_path .*1 file\(s\) of other"):
        resolve_sources([str(tmp_path)], warn=warnings.append)
    assert warnings


def test_resolve_symlink_loop_is_reported_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    write(root / "sub/a.txt", "a")
    (root / "sub/loop").symlink_to(root)
    (root / "self").symlink_to(root / "self")
    (root / "alias").symlink_to(root / "sub")  # another way into an already listed folder
    warnings: list[str] = []
    found = resolve_sources([str(root)], warn=warnings.append)
    assert [s.path for s in found] == [root / "alias/a.txt"]
    assert any("alias/loop: symlink loop (leads back to" in w for w in warnings)
    assert any("self: broken symlink or symlink loop" in w for w in warnings)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_resolve_unreadable_file_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "ok.txt", "a")
    locked = write(tmp_path / "locked.txt", "b")
    locked.chmod(0)
    warnings: list[str] = []
    assert [s.path.name for s in resolve_sources([str(tmp_path)], warn=warnings.append)] == [
        "ok.txt"
    ]
    assert any("locked.txt: cannot read (Permission denied), skipped" in w for w in warnings)


def test_resolve_unreadable_entries_reported_even_as_root(tmp_path: Path, monkeypatch) -> None:
    """The same paths as above, with the refusal simulated so it also runs as root (CI)."""
    write(tmp_path / "ok.txt", "a")
    write(tmp_path / "locked.txt", "b")
    write(tmp_path / "closed/c.txt", "c")
    real_open, real_scandir = open, os.scandir

    def fake_open(path, *args, **kwargs):
        if str(path).endswith("locked.txt"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    def fake_scandir(path):
        if str(path).endswith("closed"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(raw_find, "open", fake_open, raising=False)
    monkeypatch.setattr(raw_find.os, "scandir", fake_scandir)
    warnings: list[str] = []
    assert [s.path.name for s in resolve_sources([str(tmp_path)], warn=warnings.append)] == [
        "ok.txt"
    ]
    assert any("locked.txt: cannot read (Permission denied)" in w for w in warnings)
    assert any("closed: cannot list this folder (Permission denied)" in w for w in warnings)


# -- formats ------------------------------------------------------------------------------------


def test_formats_txt_gz_jsonl_jsonl_gz(tmp_path: Path) -> None:
    text = "one\n\ntwo é\n"
    records = "".join(
        json.dumps(r) + "\n" for r in [{"body": "rec 1", "id": 1}, {"body": "  "}, {"body": "r2"}]
    )
    write(tmp_path / "a.txt", text)
    write(tmp_path / "b.txt.gz", gzip.compress(text.encode()))
    write(tmp_path / "c.jsonl", records + "\n")
    write(tmp_path / "d.jsonl.gz", gzip.compress(records.encode()))
    for name in ("a.txt", "b.txt.gz"):
        assert docs(tmp_path / name, "blank_line") == ["one", "two é"]
        assert docs(tmp_path / name, "file") == [text]
    for name in ("c.jsonl", "d.jsonl.gz"):
        for boundary in ("file", "line", "blank_line"):  # one record a document, always
            assert docs(tmp_path / name, boundary, text_field="body") == ["rec 1", "r2"]
    pieces = list(iter_pieces(source(tmp_path / "c.jsonl"), boundary="file", text_field="body"))
    assert [(p.start, p.end) for p in pieces] == [(0, 27), (27, len(records) + 1)]


def test_bom_dropped_only_at_the_start(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.txt", "\ufeffhi\n\ufeffthere")
    assert docs(path, "line") == ["hi", "\ufeffthere"]
    pieces = list(iter_pieces(source(path), boundary="file"))
    assert pieces[0].text == "hi\n\ufeffthere" and (pieces[0].start, pieces[0].end) == (0, 14)
    gz = write(tmp_path / "bom.jsonl.gz", gzip.compress('\ufeff{"text": "x"}\n'.encode()))
    assert docs(gz) == ["x"]


# -- boundaries ---------------------------------------------------------------------------------


def test_boundary_modes_exact_output(tmp_path: Path) -> None:
    text = "Title\r\n\r\nfirst\nsecond  \n \t\n\n\nthird\r\nfour\rfive\n\u3000\nlast"
    path = write(tmp_path / "t.txt", "\ufeff" + text)
    assert docs(path, "file") == [text]  # as-is, CRLF kept
    assert docs(path, "line") == ["Title", "first", "second  ", "third", "four\rfive", "last"]
    assert docs(path, "blank_line") == ["Title", "first\nsecond  ", "third\nfour\rfive", "last"]


def test_whitespace_only_documents_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "ws.txt", " \n\t\r\n\u2003\n")
    for boundary in ("file", "line", "blank_line"):
        assert list(iter_pieces(source(path), boundary=boundary)) == []
    assert docs(write(tmp_path / "x.txt", "a\n \nb\n"), "line") == ["a", "b"]


@pytest.mark.parametrize("boundary", ["file", "line", "blank_line"])
def test_pieces_reassemble_for_every_small_chunk_size(tmp_path: Path, boundary: str) -> None:
    data = MIXED.encode("utf-8")
    path = write(tmp_path / "m.txt", data)
    expected = reference_documents(data, boundary)
    assert len(expected) >= (1 if boundary == "file" else 6)
    for chunk in range(1, 98):
        pieces = list(iter_pieces(source(path), boundary=boundary, chunk_bytes=chunk))
        assert check_pieces(pieces, len(data), chunk) == expected, chunk
        if chunk == 16:
            assert len(pieces) > 2 * len(expected)  # long documents really were split


def test_replacement_characters_do_not_depend_on_chunk_size(tmp_path: Path) -> None:
    """Bad bytes give the same U+FFFDs wherever the blocks are cut (cuts avoid characters)."""
    data = MIXED.encode("utf-8").replace(b"long", b"l\xffo\xe2\x82ng\x80\x80\x80\x80", 3)
    path = write(tmp_path / "r.txt", data + b"\xf0\x9f")
    for boundary in ("file", "line", "blank_line"):
        expected = reference_documents(data + b"\xf0\x9f", boundary, "replace")
        for chunk in range(1, 41):
            pieces = list(
                iter_pieces(
                    source(path), boundary=boundary, chunk_bytes=chunk, on_decode_error="replace"
                )
            )
            found = check_pieces(pieces, len(data) + 2, chunk, replaced=True)
            assert found == expected, (boundary, chunk)
    with pytest.raises(ValueError, match="boundary must be one of"):
        list(iter_pieces(source(path), boundary="paragraph"))


def test_long_jsonl_record_comes_in_bounded_pieces(tmp_path: Path) -> None:
    value = "ab😀 é" * 40 + "東京"
    path = write(tmp_path / "r.jsonl", json.dumps({"text": value}) + "\n" + '{"text": "z"}')
    size = path.stat().st_size
    for chunk in (1, 3, 7, 64):
        pieces = list(iter_pieces(source(path), boundary="line", chunk_bytes=chunk))
        assert check_pieces(pieces, size, chunk) == [value, "z"]


def test_huge_line_without_newline_stays_bounded(tmp_path: Path, monkeypatch) -> None:
    """Stand-ins for multi-GB inputs: tiny chunks, a line 60x the chunk, whitespace 80x."""
    body = "word " * 800 + "é"
    path = write(tmp_path / "h.txt", " " * 5000 + body + "\n" + " " * 5000 + "\n" + body)
    rereads: list[tuple[int, int]] = []
    real = raw_split.SourceSplitter._reread

    def counting(self, a: int, b: int):
        rereads.append((a, b))
        return real(self, a, b)

    monkeypatch.setattr(raw_split.SourceSplitter, "_reread", counting)
    for boundary in ("file", "line", "blank_line"):
        pieces = list(iter_pieces(source(path), boundary=boundary, chunk_bytes=64))
        found = check_pieces(pieces, path.stat().st_size, 64)
        assert found == reference_documents(path.read_bytes(), boundary)
    # the 5000 leading spaces outgrew the in-memory cap (4 chunks) and were read again once a
    # mode; the blank line of 5000 spaces was dropped without reading it again
    assert len(rereads) == 3
    assert all(a == 0 and 4 * 64 < b <= 5000 for a, b in rereads)


def test_piece_offsets_match_the_bytes(tmp_path: Path) -> None:
    data = "α line\r\n\n  \nβ two\nγ\n\n\nlast".encode()
    path = write(tmp_path / "o.txt", data)
    pieces = list(iter_pieces(source(path), boundary="line", chunk_bytes=8))
    assert check_pieces(pieces, len(data), 8)
    assert [(p.start, p.end) for p in iter_pieces(source(path), boundary="line")] == [
        (0, 9),
        (9, 20),  # blank lines before a document count to it
        (20, 23),
        (23, 29),
    ]
    paragraphs = list(iter_pieces(source(path), boundary="blank_line"))
    assert [(p.text, p.start, p.end) for p in paragraphs] == [
        ("α line", 0, 9),
        ("β two\nγ", 9, 23),
        ("last", 23, 29),
    ]


def test_batches_are_the_same_stream(tmp_path: Path) -> None:
    path = write(tmp_path / "b.txt", MIXED)
    for boundary in ("line", "blank_line"):
        batches = list(iter_batches(source(path), boundary=boundary, chunk_bytes=24))
        assert [t for b in batches for t in b.texts] == [
            p.text for p in iter_pieces(source(path), boundary=boundary, chunk_bytes=24)
        ]
        assert batches[-1].end == path.stat().st_size and not batches[-1].open


def test_crlf_handling(tmp_path: Path) -> None:
    path = write(tmp_path / "crlf.txt", "a\r\nb\r\r\n\r\n c \r\n")
    assert docs(path, "file") == ["a\r\nb\r\r\n\r\n c \r\n"]
    assert docs(path, "line") == ["a", "b\r", " c "]
    assert docs(path, "blank_line") == ["a\nb\r", " c "]


# -- byte ranges (appended text) ----------------------------------------------------------------


def test_byte_range_reads_appended_text_only(tmp_path: Path) -> None:
    path = write(tmp_path / "grow.txt", "first\nsecond\n")
    old = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write("third é\n\nfourth".encode())
    new = path.stat().st_size
    src = source(path)
    assert list(iter_documents(src, boundary="line", start=old)) == ["third é", "fourth"]
    assert list(iter_documents(src, boundary="line", end=old)) == ["first", "second"]
    pieces = list(iter_pieces(src, boundary="blank_line", start=old, chunk_bytes=4))
    assert check_pieces(pieces, new, 4, range_start=old) == ["third é", "fourth"]
    assert list(iter_documents(src, boundary="file", start=old, end=old + 5)) == ["third"]
    with pytest.raises(DataError, match=r"ends at byte \d+, before byte 999"):
        list(iter_pieces(src, boundary="line", start=old, end=999))
    gz = write(tmp_path / "g.txt.gz", gzip.compress(b"x\n"))
    with pytest.raises(DataError, match="byte range of a compressed file cannot be read"):
        list(iter_pieces(source(gz), boundary="line", start=1))


def test_range_start_inside_a_character_is_a_decode_error(tmp_path: Path) -> None:
    path = write(tmp_path / "mid.txt", "aé\n")
    with pytest.raises(DataError, match="invalid UTF-8 at byte offset 2 "):
        list(iter_pieces(source(path), boundary="line", start=2))


# -- decode errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("boundary", ["file", "line", "blank_line"])
def test_decode_error_names_the_exact_byte(tmp_path: Path, boundary: str) -> None:
    data = ("é" * 50 + "\n").encode() + b"ok \xff bad\n"
    path = write(tmp_path / "bad.txt", data)
    for chunk in (7, 1 << 20):
        with pytest.raises(DataError) as err:
            list(iter_pieces(source(path), boundary=boundary, chunk_bytes=chunk))
        assert str(err.value) == (
            f"{path}: invalid UTF-8 at byte offset 104 (0xff) — "
            'set data.on_decode_error to "replace" or fix the file'
        )
    found = docs(path, boundary, on_decode_error="replace", chunk_bytes=7)
    assert found[-1].endswith("ok \ufffd bad" + ("\n" if boundary == "file" else ""))


def test_decode_error_in_gz_and_truncated_char(tmp_path: Path) -> None:
    gz = write(tmp_path / "bad.txt.gz", gzip.compress(b"abc\xe2\x82"))
    with pytest.raises(DataError, match=r"byte offset 3 of the decompressed text \(0xe2\)"):
        docs(gz)
    assert docs(gz, on_decode_error="replace") == ["abc\ufffd"]
    broken = write(
        tmp_path / "broken.txt.gz", gzip.compress(os.urandom(4000).hex().encode())[:1000]
    )
    with pytest.raises(DataError, match="broken gzip data"):
        docs(broken)


# -- jsonl errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "not valid JSON (Expecting value, column 1)"),
        ("3.5", "a number, not a JSON object"),
        ('["a"]', "an array, not a JSON object"),
        ('{"txt": "a", "n": 1}', "no field 'text' (the record has 'txt', 'n')"),
        ('{"text": null}', "field 'text' is null, not a string"),
        ('{"text": 7}', "field 'text' is a number, not a string"),
        ('{"text": "\\ud800"}', "field 'text' holds an unpaired UTF-16 surrogate"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    before = '{"text": "fine"}\n\n  \r\n'  # blank lines count as lines
    path = write(tmp_path / "e.jsonl", before + line + "\n")
    with pytest.raises(DataError) as err:
        docs(path)
    assert str(err.value).startswith(f"{path}: line 4 (byte {len(before)}): {message}")
    with pytest.raises(DataError, match=r"line 1 counting from byte 22 \(byte 22\)"):
        list(iter_pieces(source(path), boundary="file", start=len(before)))


def test_jsonl_record_too_long_and_replace_surrogate(tmp_path: Path) -> None:
    path = write(tmp_path / "big.jsonl", '{"text": "a"}\n{"text": "' + "x" * 500 + '"}\n')
    with pytest.raises(DataError, match=r"line 2 \(byte 14\) is longer than .*\(100 bytes\)"):
        docs(path, chunk_bytes=16, max_record_bytes=100)
    with pytest.raises(DataError, match=r"line 2 \(byte 14\) is longer than .*\(100 bytes\)"):
        docs(path, chunk_bytes=1 << 20, max_record_bytes=100)
    sur = write(tmp_path / "s.jsonl", '{"text": "a\\udc00b \\ud83d\\ude00"}\n')
    assert docs(sur, on_decode_error="replace") == ["a\ufffdb 😀"]


# -- helpers: sha256, empty files, iter_texts ---------------------------------------------------


def test_source_sha256(tmp_path: Path) -> None:
    data = os.urandom(3000)
    path = write(tmp_path / "h.txt.gz", data)
    src = source(path)
    assert source_sha256(src) == hashlib.sha256(data).hexdigest()
    assert source_sha256(src, end=1234) == hashlib.sha256(data[:1234]).hexdigest()
    assert source_sha256(src, end=0) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(DataError, match="has 3000 bytes, fewer than the 4000 expected"):
        source_sha256(src, end=4000)


def test_iter_texts_streams_every_source(tmp_path: Path) -> None:
    write(tmp_path / "raw/a.txt", "p1 l1\np1 l2\n\np2\n")
    write(tmp_path / "raw/b.jsonl", '{"content": "rec"}\n')
    cfg = DataConfig(raw_path=str(tmp_path / "raw"), document_boundary="blank_line")
    with pytest.raises(DataError, match="no field 'text'"):
        list(iter_texts(cfg))
    cfg = DataConfig(
        raw_path=str(tmp_path / "raw"), document_boundary="blank_line", text_field="content"
    )
    assert list(iter_texts(cfg)) == ["p1 l1\np1 l2", "p2", "rec"]
    small = list(iter_texts(cfg, chunk_bytes=2))
    assert "".join(small) == "p1 l1\np1 l2p2rec" and max(map(len, small)) <= 4


def test_whitespace_bytes_match_str_isspace() -> None:
    """raw_split.WS_BYTES (the byte-level "blank") is exactly str.isspace minus "\\n"."""
    pattern = re.compile(raw_split.WS_BYTES)
    # WS_BYTES can only match code points below U+3040; every isspace() one is below U+3001
    for cp in range(0x3100):
        ch = chr(cp)
        if ch == "\n" or 0xD800 <= cp < 0xE000:
            continue
        assert bool(pattern.fullmatch(ch.encode())) == ch.isspace(), hex(cp)
    assert max(cp for cp in range(sys.maxunicode + 1) if chr(cp).isspace()) == 0x3000
