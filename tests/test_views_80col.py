"""The CLI's rich output at 80 columns: no value cut with "…", no number broken, bar speeds."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from allllm.cli.views.config import render_config_list
from allllm.cli.views.eval import render_eval
from allllm.cli.views.status import render_status
from allllm.cli.views.tokenize import RichTokenizeProgress, render_summary
from allllm.cli.views.train import RichTrainReporter, render_dry_run
from allllm.data.tokenize.summary import ShardSummary, TokenizeSummary
from allllm.use.evaluate import EvalResult
from train_helpers import cli, make_workspace

BIG = 254_012_345_678  # a 12-digit token count
STEM = "shakespeare-complete-works.cached.2048.20261201_101512"
SOURCE = "data/raw/corpora/english/shakespeare/shakespeare-complete-works.txt"


def console(*, terminal: bool = False) -> Console:
    return Console(width=80, record=True, file=io.StringIO(), force_terminal=terminal)


def check(text: str, *numbers: str) -> None:
    """Nothing cut with "…", every line within 80 columns, each number whole on one line."""
    assert "…" not in text, text
    assert all(len(line) <= 80 for line in text.splitlines()), text
    for number in numbers:
        assert number in text, f"{number} broken or missing in:\n{text}"


def column(text: str, index: int) -> str:
    """The text of table column ``index`` (0 = the first column), folded lines joined."""
    cells = (re.split(r"[│┃]", line) for line in text.splitlines() if re.search(r"[│┃]", line))
    return "".join(c[index].strip() for c in cells if len(c) > index)


def shard(name: str, state: str = "new", **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "formats": ["jsonl", "bin"], "rows": 1_984_471_451, "tokens": BIG,
        "state": state, "reason": None, "step": 123_456, **extra,
    }  # fmt: skip


def status_report() -> dict[str, Any]:
    shards = [
        shard(STEM),
        shard(STEM.replace("2026", "2027"), "seen"),
        shard("packed-part0-12.cached.2048.20261201_101512", "duplicate", duplicate_of=STEM),
    ]
    totals = {
        "new_tokens": BIG, "new_rows": 1_984_471_451, "seen_tokens": BIG, "seen_rows": 12_345,
        "val_tokens": 0, "val_rows": 0, "eval_tokens": 0, "eval_rows": 0, "shards": 3,
        "states": {"new": 1, "seen": 1, "duplicate": 1},
    }  # fmt: skip
    return {
        "config": "smollm2-135m", "data_dir": "/srv/datasets/pretraining/english/cached-shards",
        "seq_len": 2048, "tokenizer": {"backend": "hf", "path": "HuggingFaceTB/SmolLM2-135M",
                                      "verified": True},
        "shards": shards, "totals": totals, "checkpoint": None, "notes": [],
    }  # fmt: skip


def test_status_table_keeps_numbers_whole() -> None:
    out = console()
    render_status(status_report(), out)
    text = out.export_text()
    check(text, "254,012,345,678", "1,984,471,451", "seen @ step 123456")
    assert STEM in column(text, 0)  # folded, not cut


def tokenize_summary() -> TokenizeSummary:
    shards = [
        ShardSummary(stem=STEM, shard_id="a" * 16, sources=[SOURCE], why=["new"],
                     documents=12_345_678, tokens=BIG, rows=124_029_466, files=[]),
        ShardSummary(stem="packed-part0-12.cached.2048.20261201_101512", shard_id="b" * 16,
                     sources=[f"data/raw/part{k}.txt" for k in range(12)], why=["changed"],
                     documents=4_321, tokens=9_876_543_210, rows=4_822_531, files=[]),
    ]  # fmt: skip
    return TokenizeSummary(
        sources=13,
        up_to_date=["x"] * 1_234,
        shards=shards,
        superseded=["y"],
        bytes=10**12,
        seconds=12_345.6,
    )


def test_tokenize_summary_fits() -> None:
    out = console()
    render_summary(tokenize_summary(), out)
    text = out.export_text()
    check(text, "254,012,345,678", "12,345,678", "124,029,466", "9,876,543,210", "12345.6 s")
    assert "[new]" in text and "12 sources (packed) [changed]" in text
    names = column(text, 1)  # the shard name and source path fold, whole
    assert STEM in names and SOURCE in names


def test_tokenize_summary_keeps_its_wide_layout_when_there_is_room() -> None:
    out = Console(width=240, record=True, file=io.StringIO())
    render_summary(tokenize_summary(), out)
    text = out.export_text()
    assert STEM in text and SOURCE in text and "shards written" in text and "MB/s" in text
    assert f"{SOURCE} [new]" in text  # the reason is text, not rich markup to swallow


def run_info(n_shards: int = 5) -> dict[str, Any]:
    return {
        "run_id": "0123456789abcdef", "resumed": False, "steps_done": 0, "step": 0,
        "shards": [f"{STEM.replace('shakespeare', f'part{k}')}.bin" for k in range(n_shards)],
        "replay_rows": 12_345_678, "rows": 124_029_466, "epochs": 2,
        "total_steps": 7_751_841, "total_tokens": BIG,
    }  # fmt: skip


@pytest.mark.parametrize("terminal", [True, False])
def test_train_start_and_end_summaries(terminal: bool) -> None:
    out = console(terminal=terminal)
    reporter = RichTrainReporter(out, out)
    reporter.run_started(run_info())
    reporter.close()
    reporter.run_finished(
        {"run_id": "0123456789abcdef", "shards": ["a"] * 5, "tokens": BIG,
         "start_step": 1_234_567, "end_step": 8_986_408, "seconds": 98_765.4,
         "final_loss": 2.3456, "final_val_loss": 2.4567}
    )  # fmt: skip
    text = "\n".join(line for line in out.export_text().splitlines() if "━" not in line)
    numbers = ("124,029,466", "12,345,678", "7,751,841", "254.01B", "1234567→8986408", "2.3456")
    if terminal:  # wrapped at spaces by rich, never by the terminal inside a number
        check(text, *numbers)
    assert all(n in text for n in numbers)
    assert f"  {STEM.replace('shakespeare', 'part0')}.bin\n" in text and "(+2 more)" in text


def test_eval_table_and_total() -> None:
    result = EvalResult(
        loss=2.3456, perplexity=10.439, tokens=BIG, rows=1_984_471_451, step=123_456,
        checkpoint="checkpoints/smollm2-135m/step_00123456-20261201_101512",
        shards=[
            {"name": STEM, "role": "validation", "rows": 1_984_471_451, "tokens": BIG,
             "loss": 2.3456},
            {"name": "eval-set.cached.2048.20261201_101512", "role": "eval_shard", "rows": 12,
             "tokens": 24_576, "loss": None},
        ],
    )  # fmt: skip
    out = console(terminal=True)
    render_eval(result, out)
    text = out.export_text()
    check(text, "254,012,345,678", "1,984,471,451", "2.3456", "10.439", result.checkpoint)


def test_config_list_rows() -> None:
    rows = [
        {"name": "tinyllama-1.1b-with-a-long-name", "source": "preset", "arch": "llama",
         "parameters": 1_100_048_384, "seq_len": 2048,
         "tokenizer": "hf:TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"},
        {"name": "broken", "source": "configs/broken.json", "error": "model.vocab_size: required"},
    ]  # fmt: skip
    out = console()
    render_config_list(rows, out)
    text = out.export_text()
    check(text, "1.10B", "2048", "llama")
    assert "invalid broken: model.vocab_size: required" in text


@pytest.mark.parametrize("world", [1, 8])
def test_dry_run_memory_plan_fits(world: int) -> None:
    from allllm.config import load_config
    from allllm.train.memory_plan import plan_memory

    cfg = load_config("phi-2")
    train = cfg.train.model_copy(update={"micro_batch_size": 16, "fsdp": world > 1})
    plan = plan_memory(cfg.model, train, seq_len=2048, world_size=world, device_memory=2**34)
    out = console(terminal=True)
    render_dry_run({"pending": None, "new": None, "step": 0, "memory_plan": plan.to_dict()}, out)
    text = out.export_text()
    check(text, f"{plan.total / 2**30:.2f} GiB", "16.00 GiB", "does NOT fit")
    assert "to fit: " in text and "← this run" in text


def test_tokenize_bar_shows_a_speed_after_one_update() -> None:
    """One update per encoded chunk is all a bar may get: it must show MB/s, not "?"."""
    out = console()  # not a terminal: the bar's last frame only, printed when it stops
    bar = RichTokenizeProgress(out)
    bar.begin(total_bytes=8_000_000, n_shards=1)
    bar.begin_shard(STEM, 8_000_000)
    bar.begin_file(SOURCE, 8_000_000)
    time.sleep(0.05)
    bar.advance(4_000_000, 1_000_000)
    bar.end_shard()
    bar.end()
    (final,) = out.export_text().splitlines()
    assert re.search(r"\b\d+\.\d MB/s\b", final) and "M tok/s" in final, final
    assert "?" not in final and "…" not in final and len(final) <= 80, final


# the real CLI, piped at COLUMNS=80 ----------------------------------------------------------


def test_cli_config_list_at_80_columns(tmp_path: Path) -> None:
    make_workspace(tmp_path, n_files=0)
    proc = cli(tmp_path, "config", "list", env={"COLUMNS": "80"})
    check(proc.stdout, "134.52M", "2048")
    assert "hf:TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T" in column(proc.stdout, 6)


def test_cli_tokenize_and_status_at_80_columns(tmp_path: Path) -> None:
    make_workspace(tmp_path, n_files=0)
    raw = tmp_path / "data" / "raw"
    long_name = "shakespeare-complete-works-of-the-bard-in-one-volume"
    (raw / f"{long_name}.txt").write_text("To be, or not to be, that is the question.\n" * 400)
    env = {"COLUMNS": "80"}
    tokenized = cli(tmp_path, "tokenize", "--model", "micro", env=env).stdout
    proc = cli(tmp_path, "status", "--model", "micro", env=env)
    (shard,) = json.loads(cli(tmp_path, "status", "--model", "micro", "--json").stdout)["shards"]
    figures = (f"{shard['rows']:,}", f"{shard['tokens']:,}")
    check(tokenized, *figures)
    assert f"data/raw/{long_name}.txt [new]" in column(tokenized, 1)
    check(proc.stdout, *figures)
    assert long_name in column(proc.stdout, 0)  # folded, not cut
