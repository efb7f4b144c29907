"""How fast does the raw reader turn bytes into document pieces? (MB/s per boundary mode)

Builds one ~50 MB text file (the Shakespeare corpus repeated, when
../shared/corpus/shakespeare is present; generated prose otherwise), plus a
.jsonl and a .txt.gz of the same text, and times ``iter_batches`` (the bulk
API) and ``iter_pieces`` (one object a piece) for every boundary mode. The
baselines, measured in the same run, are the least any reader must do: read
the file in 1 MiB blocks and decode it as UTF-8 (for ``file``), and also split
it at newlines with ``str.split`` (for ``line``/``blank_line``). Figures are MB
of input per second, best of N runs.

Usage: python benchmarks/bench_raw_reader.py [--mb 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _machine import machine_description
from allllm.data.raw import RawSource, iter_batches, iter_pieces, source_sha256

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "shakespeare"


def corpus_text(mb: int) -> tuple[str, str]:
    if CORPUS.is_dir():
        text = "\n".join(p.read_text("utf-8") for p in sorted(CORPUS.glob("*.txt")))
        origin = "Shakespeare corpus"
    else:
        rng = random.Random(0)
        words = ["the", "of", "and", "to", "in", "is", "was", "that", "for", "it", "with", "as"]
        words += ["café", "naïve", "東京", "😀"]
        paras = (
            "\n".join(" ".join(rng.choices(words, k=rng.randint(4, 14))) for _ in range(4))
            for _ in range(20000)
        )
        text = "\n\n".join(paras) + "\n"
        origin = "generated prose"
    reps = max(1, (mb << 20) // len(text.encode()))
    return text * reps, origin


def best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def drain_batches(src: RawSource, boundary: str) -> int:
    return sum(len(b.texts) for b in iter_batches(src, boundary=boundary))


def drain_pieces(src: RawSource, boundary: str) -> int:
    return sum(1 for _ in iter_pieces(src, boundary=boundary))


def baseline(path: Path) -> None:
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            block.decode("utf-8")


def baseline_lines(path: Path) -> None:
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            block.decode("utf-8").split("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    text, origin = corpus_text(args.mb)
    with tempfile.TemporaryDirectory() as tmp:
        txt = Path(tmp) / "corpus.txt"
        txt.write_text(text, "utf-8")
        gz = Path(tmp) / "corpus.txt.gz"
        gz.write_bytes(gzip.compress(txt.read_bytes(), compresslevel=6))
        jl = Path(tmp) / "corpus.jsonl"
        with open(jl, "w", encoding="utf-8") as fh:
            for para in text.split("\n\n"):
                fh.write(json.dumps({"text": para}) + "\n")
        size = txt.stat().st_size
        sources = {
            "txt": RawSource(txt, size, "txt", False),
            "txt.gz": RawSource(gz, gz.stat().st_size, "txt", True),
            "jsonl": RawSource(jl, jl.stat().st_size, "jsonl", False),
        }
        print(f"# raw reader throughput — {machine_description()}")
        print(
            f"input: {size / 1e6:.1f} MB of {origin}; MB/s of decompressed input, best of {args.runs}"
        )
        t = best_of(args.runs, lambda: baseline(txt))
        base = size / t / 1e6
        print(f"{'baseline: read 1 MiB blocks + utf-8 decode':48s} {base:8.0f} MB/s")
        t = best_of(args.runs, lambda: baseline_lines(txt))
        base_lines = size / t / 1e6
        print(f"{'baseline for lines: ... + str.split(newline)':48s} {base_lines:8.0f} MB/s")
        t = best_of(args.runs, lambda: source_sha256(sources["txt"]))
        print(f"{'source_sha256':48s} {size / t / 1e6:8.0f} MB/s")
        rows = [
            ("txt", "file"),
            ("txt", "blank_line"),
            ("txt", "line"),
            ("txt.gz", "file"),
            ("txt.gz", "line"),
            ("jsonl", "file"),
        ]
        for kind, boundary in rows:
            src = sources[kind]
            nbytes = src.size if kind != "txt.gz" else size
            count = drain_batches(src, boundary)
            tb = best_of(args.runs, lambda src=src, boundary=boundary: drain_batches(src, boundary))
            tp = best_of(args.runs, lambda src=src, boundary=boundary: drain_pieces(src, boundary))
            mbb, mbp = nbytes / tb / 1e6, nbytes / tp / 1e6
            ref = base if boundary == "file" else base_lines
            ratio = f"({mbb / ref:4.0%} of its baseline)" if kind == "txt" else " " * 23
            label = f"{kind:6s} {boundary:10s} ({count:,} pieces)"
            print(f"{label:48s} {mbb:8.0f} MB/s iter_batches {ratio}  {mbp:6.0f} MB/s iter_pieces")


if __name__ == "__main__":
    main()
